/*
 * spec.h - the pipeline spec: a Lua file returning a table that names the
 * source, the stages in order (script, workers), the sink and the settings
 * (docs/spec.md). Paths in the spec are relative to the spec's directory.
 */
#ifndef SS_SPEC_H
#define SS_SPEC_H

#include "base/common.h"

#define SS_MAX_STAGES 16
#define SS_MAX_WORKERS 64

typedef struct {
    char *name;      /* "mapper" */
    char *script;    /* absolute or relative to the working directory */
    int workers;
    int enclave;     /* run the stage's code in an enclave */
} ss_stage_spec;

typedef struct {
    char *path;          /* the spec file */
    char *name;          /* pipeline name */
    char *input;         /* source file */
    int header;          /* skip the first line */
    ss_stage_spec stages[SS_MAX_STAGES];
    int nstages;
    char *sink_script;
    char *security;      /* "plain" or "encrypted" */
    char *key;           /* data key file, for the encrypted mode */
    char *on_error;      /* "skip" or "fail" */
    long batch_bytes;
    int fuse;            /* run all stages fused in each worker (plan.h) */
} ss_spec;

/* Parse a spec. On error returns SS_ERR_USAGE (a Lua error or a wrong
 * field) or SS_ERR_IO (the file cannot be read) with a message naming the
 * file and the field in err. Free with ss_spec_cleanup. */
ss_err ss_spec_load(const char *path, ss_spec *out, char *err, size_t errlen);
void ss_spec_cleanup(ss_spec *s);

#endif
