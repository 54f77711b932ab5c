/*
 * core.h - the stage core: what runs inside an enclave (docs/enclave.md).
 * Internal to lib/enclave: the inprocess backend (host.c) calls it
 * directly, the isolated child (child.c) serves it over the channel.
 *
 * A core holds the data key (as an opener and a sealer), one stage's Lua
 * code in a restricted state (lsandbox.h) where ss-enclave.lua drives the
 * stage chain, and fixed buffers. Each call opens one sealed input batch
 * (checking its header, stream, lineage, authenticity and freshness), runs
 * its events through the chain and seals what the chain emitted.
 *
 * Whatever its host asks, a core seals as a worker (SS_MAKER_WORKER): no
 * field of the start-up request can make it seal as a source. Its run id and
 * stage position come from the host (nothing better exists before
 * attestation): a host that lies gets outputs bound to the wrong run or
 * position, which consumers reject.
 *
 * Invariants: a call reads its input only from the pointers it is given,
 * which the child points at its private copy, and builds the associated
 * data of what it seals in its own memory, so what it opens is what it acts
 * on and what it seals is what it produced. Everything that needs a system
 * call (the key, randomness for the sealer and the replay window, the
 * buffers at their final size, the Lua state) is made by ss_core_prepare,
 * before the child's lockdown; ss_core_start runs the stage code after it.
 */
#ifndef SS_ENCLAVE_CORE_H
#define SS_ENCLAVE_CORE_H

#include "enclave/channel.h"

#define SS_CORE_MIN_HEAP ((size_t)1 << 20)
#define SS_CORE_MAX_HEAP ((size_t)1 << 40)
#define SS_CORE_MIN_BUDGET 10u             /* CPU milliseconds per record */
#define SS_CORE_MAX_BUDGET 86400000u       /* a day */
#define SS_CORE_MAX_CODE (SS_MAX_MESSAGE / 2)  /* stage code, script file or text */
#define SS_CORE_BUF_BYTES SS_MAX_MESSAGE   /* ss_core_buffer */
/* what a core allocates besides the Lua heap (fixed buffers, replay table)
 * and room for growth of the small ones */
#define SS_CORE_FIXED ((size_t)3 * SS_MAX_MESSAGE + ((size_t)8 << 20))

typedef struct ss_core ss_core_t;

typedef struct {
    const char *code;        /* code text, or script path when !is_code */
    int is_code;
    const char *code_name, *key_file, *stage, *name;
    size_t heap;             /* SS_CORE_MIN_HEAP .. SS_CORE_MAX_HEAP */
    uint64_t budget_ms;      /* SS_CORE_MIN_BUDGET .. SS_CORE_MAX_BUDGET */
    int fail;
    int pos;                 /* stage position; 0: the first input's maker's + 1 */
    uint8_t run[SS_RUN_BYTES];
    int run_given;           /* 0: the run of the first authentic input */
    uint64_t producer;
    uint32_t stream;
} ss_core_opts;

/* Everything before the lockdown: the key, crypto, buffers at their final
 * size, the replay window, the Lua state with the driver, the stage code
 * compiled but not run, the measurement. Errors as ss_enclave_new, with
 * the message in err. The caller destroys *out with ss_core_destroy. */
ss_err ss_core_prepare(const ss_core_opts *o, ss_core_t **out, char *err, size_t errlen);

/* After the lockdown: run the stage code and the stage function.
 * SS_ERR_LUA with the message. */
ss_err ss_core_start(ss_core_t *c, char *err, size_t errlen);

/* The calls of enclave.h on a core: rep (zeroed by the caller) gets the
 * outcome and the message; an output's header and lineage are then at
 * ss_core_head, its sealed payload (or the sealed record of
 * ss_core_finish) at ss_core_buffer, both valid until the next call. The
 * returned status is the call's (ss_enclave_batch). */
ss_err ss_core_batch(ss_core_t *c, const uint8_t *hdr, const uint8_t *lineage, size_t llen,
                     const uint8_t *payload, size_t plen, uint64_t seq, int redelivered,
                     ss_channel_reply *rep);
ss_err ss_core_flush(ss_core_t *c, uint64_t seq, ss_channel_reply *rep);
/* The statistics record: {stage, name, pos, in, out, skipped, refused,
 * rejected, foreign, batches, redelivered} sealed under SS_RECORD_AD || id,
 * nonce seq, as a worker of this run and position (run zeros when no input
 * ever fixed it); its length in rep->payload_len. */
ss_err ss_core_finish(ss_core_t *c, const char *id, uint64_t seq, ss_channel_reply *rep);
/* An empty call (a real one: never inlined). Clears rep up to its
 * measurement. */
ss_err ss_core_ping(ss_core_t *c, ss_channel_reply *rep);

/* Wipes the buffers. Accepts NULL; sets *c to NULL. */
void ss_core_destroy(ss_core_t **c);

int ss_core_stateful(const ss_core_t *c);
const char *ss_core_measurement(const ss_core_t *c);
/* SS_CORE_BUF_BYTES of the core's own: the child copies a batch's input
 * here before the call; after it, the sealed output or record. */
uint8_t *ss_core_buffer(ss_core_t *c);
/* The last output's header (40 bytes) and lineage. */
const uint8_t *ss_core_head(const ss_core_t *c);

/* The measurement of `len` bytes of stage code (measure.c): as
 * ss_enclave_measure. */
ss_err ss_enclave_measure_code(const void *code, size_t len, char out[65], char *err,
                               size_t errlen);

#endif
