/*
 * plan.h - what to start for one pipeline: its spec (spec.h) with the
 * command line's overrides applied, resolved and checked once for every
 * command that starts it (`run` as local processes, `deploy` as containers).
 *
 * A resolved plan is consistent: the mode is known and, unless plain, has a
 * data key that loads; every enclave stage runs in an encrypted mode; every
 * script and the input can be read; a sealed input is only streamed by an
 * encrypted mode and sets the stream id. With fuse (the spec's `fuse = true`
 * or the override), the stages are one stage whose workers run every script
 * in order: no router between the stages. Nothing is started or written.
 */
#ifndef SS_PLAN_H
#define SS_PLAN_H

#include "base/common.h"
#include "crypto/crypto.h"
#include "pipeline/spec.h"

#include <stdint.h>

/* The accepted values: security modes, on_error policies and enclave
 * backends (the first is the default), NULL-terminated, for option tables. */
extern const char *const ss_plan_modes[];
extern const char *const ss_plan_on_errors[];
extern const char *const ss_plan_backends[];

/* What the command line changes; NULL or 0 leaves the spec's value. The
 * strings are copied or checked against the lists above: none needs to
 * outlive ss_plan_resolve. */
typedef struct {
    const char *input;            /* the source's file instead of source.file */
    const char *workers;          /* "N" for every stage, or "A,B,C" one count a stage */
    const char *security;         /* plain, encrypted or enclave */
    const char *key;              /* the data key file, relative to the working directory */
    const char *on_error;         /* skip or fail */
    const char *enclave_backend;  /* isolated (default), inprocess or sgx */
    int fuse;                     /* fuse the stages even if the spec does not */
    uint32_t stream;              /* the stream id unless the input is sealed (0: none) */
} ss_plan_overrides;

/* One stage of workers. */
typedef struct {
    const char *name;                   /* "mapper"; "mapper+filter+reducer" when fused */
    const char *scripts[SS_MAX_STAGES]; /* run in this order by each worker */
    const char *parts[SS_MAX_STAGES];   /* the spec's stage each script comes from */
    int nscripts;                       /* 1, or every spec stage when fused */
    int workers;
    int enclave;                        /* the stage's code runs in an enclave */
} ss_plan_stage;

typedef struct {
    ss_spec spec;              /* storage of the strings below; read the fields instead */
    const char *path;          /* the spec file */
    const char *name;          /* the pipeline's name */
    ss_plan_stage stages[SS_MAX_STAGES];
    int nstages;               /* after fusing: 1 when fused */
    int fused;
    int nenclave;              /* stages that run in enclaves */
    const char *sink_script;
    const char *mode;          /* one of ss_plan_modes */
    int encrypted;             /* the mode is not plain: every batch is sealed with key */
    const char *key;           /* the data key file; NULL in the plain mode */
    char key_id[2 * SS_KEY_ID_BYTES + 1]; /* its public id in hex; "" in the plain mode */
    const char *input;         /* the source's file */
    int header;                /* its first line is a header */
    long batch_bytes;
    const char *on_error;      /* one of ss_plan_on_errors */
    const char *backend;       /* one of ss_plan_backends: SS_ENCLAVE of enclave stages */
    int sealed_input;          /* the input is a sealed file: stream is its stream id */
    uint32_t stream;           /* the sealed input's stream id, else the override's */
    char *fused_name;          /* storage of stages[0].name when fused */
} ss_plan;

/*
 * Load the spec at spec_path, apply o (NULL: no overrides) and check the
 * result into *out. Errors, with a message in err naming what and where
 * (the spec file, the stage, the option, the file that cannot be read):
 * SS_ERR_USAGE when the spec or the options are wrong; SS_ERR_IO when the
 * spec, a script or the input cannot be read; the key's own error
 * (SS_ERR_IO, SS_ERR_FORMAT, SS_ERR_CRYPTO) when the data key does not load;
 * SS_ERR_NOMEM. On success the caller releases *out with ss_plan_cleanup; on
 * error *out holds nothing to release.
 */
ss_err ss_plan_resolve(const char *spec_path, const ss_plan_overrides *o, ss_plan *out,
                       char *err, size_t errlen);

/* Release what ss_plan_resolve allocated; the plan is zeroed. Accepts a
 * zeroed plan. */
void ss_plan_cleanup(ss_plan *p);

#endif
