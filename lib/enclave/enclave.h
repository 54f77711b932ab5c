/*
 * enclave.h - where user code meets plaintext in the `enclave` mode
 * (DESIGN.md "The enclave", docs/enclave.md).
 *
 * An enclave runs one stage's Lua code on sealed batches: it opens each
 * input batch with the data key (checking authenticity and replays), runs the
 * stage chain on its events in a restricted Lua 5.4 VM, and seals its output.
 * The host only moves ciphertext: it never sees the key or a plaintext event.
 *
 * Backends behind this one interface:
 *  - "isolated" (default): a child process created before any data arrives.
 *    It reads the key and the stage code, allocates its fixed heap, then locks
 *    itself down (no_new_privs + a seccomp filter allowing only read/write on
 *    its channel and exit) before it accepts the first call. A call is one
 *    round trip: the batch in shared memory, a doorbell byte each way.
 *  - "inprocess": the same VM and code in the caller's process (no isolation;
 *    the seed's mock for machines without an enclave). Named as such in logs.
 *  - "sgx": planned (docs/enclave-sgx.md); not available here.
 *
 * Stage code runs with a CPU-time budget per record and a heap bound:
 * a record that exceeds either fails like any Lua error in user code
 * (skipped and counted, or the stage stops under on_error = fail); the
 * enclave stays usable.
 *
 * Implemented by host.c (the handle, both backends, the child's start and
 * stop), core.c (the stage core both backends run), channel.c (the isolated
 * backend's shared memory and doorbell), child.c (the isolated process) and
 * measure.c (the measurement).
 */
#ifndef SS_ENCLAVE_H
#define SS_ENCLAVE_H

#include "base/common.h"
#include "wire/frame.h"

typedef struct ss_enclave ss_enclave_t;

typedef struct {
    const char *backend;     /* "isolated" (default) or "inprocess" */
    const char *script;      /* stage script file: returns function(stream) */
    const char *code;        /* or: stage source text (sgx-rx); script must be NULL */
    const char *code_name;   /* chunk name of `code` for messages */
    const char *key_file;    /* data key file, read by the enclave itself */
    const char *stage;       /* stage name, for messages */
    size_t heap_bytes;       /* fixed heap (default 64 MiB; SS_ENCLAVE_HEAP) */
    uint64_t budget_ms;      /* CPU milliseconds per record (default 1000, at
                                least 10; SS_ENCLAVE_BUDGET) */
    int fail_on_error;       /* on_error = fail */
    uint64_t producer;       /* id written in output headers */
    uint32_t stream;         /* stream id written in output headers; input of
                                another stream is rejected (default SS_STREAM
                                or SS_DEFAULT_STREAM) */
    const char *name;        /* component name in the statistics (default: stage) */
    int pos;                 /* stage position (1..n): what its outputs are bound to, and
                                its inputs must come from pos - 1; 0 adopts the first
                                input's maker's position + 1 */
    const uint8_t *run;      /* the run id (SS_RUN_BYTES) its input and output are bound
                                to; NULL adopts the first authentic input's. An enclave
                                always seals as a worker: nothing here makes it a source */
    const char *program;     /* isolated: the executable run as the enclave; it
                                must dispatch `enclave-child` to ss_enclave_child_main
                                (default /proc/self/exe) */
} ss_enclave_opts;

/* Defaults: backend "isolated", heap_bytes 0 and budget_ms 0 (ss_enclave_new
 * then reads SS_ENCLAVE_HEAP and SS_ENCLAVE_BUDGET, else 64 MiB and 1 s),
 * stream from SS_STREAM (ss_stream_from_env), everything else 0/NULL.
 * SS_ERR_USAGE, with err naming the variable, when SS_STREAM is not a
 * pipeline id (o is then set with SS_DEFAULT_STREAM). */
ss_err ss_enclave_opts_init(ss_enclave_opts *o, char *err, size_t errlen);

/* Create and initialise: returns once the enclave said ready (its code
 * loaded, locked down), or with the error it reported (a script that does
 * not load, a key file refused, seccomp unavailable...) in err.
 * SS_ERR_USAGE for bad options (an unknown backend, a malformed
 * SS_ENCLAVE_HEAP...), SS_ERR_LUA for stage code that does not load or
 * build, key errors as ss_key_load, SS_ERR_IO when the child cannot start
 * or lock down, SS_ERR_TIMEOUT when it does not answer in 60 s. The caller
 * destroys *out with ss_enclave_destroy. */
ss_err ss_enclave_new(const ss_enclave_opts *o, ss_enclave_t **out, char *err, size_t errlen);

/* True when the stage chain keeps state across events (reduce, scan...):
 * the caller then groups batches and calls ss_enclave_flush. */
int ss_enclave_stateful(const ss_enclave_t *e);
const char *ss_enclave_backend(const ss_enclave_t *e);
/* pid of the isolated child (0 for inprocess). */
int ss_enclave_pid(const ss_enclave_t *e);
/* 1 when the host spins on the channel before it sleeps on the doorbell
 * (more than one CPU and SS_ENCLAVE_SPIN not 0). */
int ss_enclave_spinning(const ss_enclave_t *e);
/* The measurement the enclave computed over itself at start-up (as
 * ss_enclave_measure), 64 hex digits. */
const char *ss_enclave_measurement(const ss_enclave_t *e);

/* The outcome of one call. Pointers stay valid until the next call. */
typedef struct {
    int has_output;              /* an output message follows */
    const uint8_t *header;       /* 40 bytes: sealed output's stream header */
    const uint8_t *lineage;      /* its lineage frame */
    size_t lineage_len;
    const uint8_t *payload;      /* sealed payload */
    size_t payload_len;
    uint32_t in, out, skipped;   /* events of this call */
    uint32_t rejected;           /* 1 when the input batch was rejected */
    uint32_t foreign;            /* 1 when it was sealed with another key (not rejected:
                                    counted apart, never a reason to stop) */
    uint32_t refused;            /* 1 when it authenticated but is not a batch */
    char message[1024];          /* first error messages of this call ("" if none) */
} ss_ecall_result;

/* Process one input batch exactly as received (sealed). `seq` is the
 * sequence number the output message will carry (strictly increasing).
 * `redelivered`: process it as a group of its own (docs/protocol.md rule 5).
 * Stateless stages produce their output in r; stateful ones only on flush.
 * A rejected batch (authentication, replay, another stream, plaintext) sets
 * r->rejected and says why, and returns SS_OK: the caller applies its
 * policy. A batch that authenticates but is not a MessagePack array of
 * `count` events sets r->refused. SS_ERR_LUA with r->message when a record
 * failed under fail_on_error; SS_ERR_CLOSED when the enclave died;
 * SS_ERR_TOOBIG when the message exceeds SS_MAX_MESSAGE. For a stateful
 * stage a redelivered batch is a group alone: flush the open group before
 * it and flush right after it (SS_ERR_USAGE otherwise). */
ss_err ss_enclave_batch(ss_enclave_t *e, const uint8_t *header, const uint8_t *lineage,
                        size_t lineage_len, const uint8_t *payload, size_t payload_len,
                        uint64_t seq, int redelivered, ss_ecall_result *r);

/* Close the current group of a stateful stage: r gets the sealed partial
 * result covering every batch of the group (has_output 0 if none open). */
ss_err ss_enclave_flush(ss_enclave_t *e, uint64_t seq, ss_ecall_result *r);

/* End of stream: the stage's statistics for the end of stream, a MessagePack
 * map {stage, name, pos, in, out, skipped, refused, rejected, batches,
 * redelivered} (redelivered: the batches given with the redelivered flag)
 * sealed as a record (envelope.h) under context `id` with nonce `seq`. The
 * pointer stays valid until the next call. */
ss_err ss_enclave_finish(ss_enclave_t *e, const char *id, uint64_t seq,
                         const uint8_t **record, size_t *len);

/* An empty round trip, for measuring the cost of a call: a few hundred
 * nanoseconds inprocess, a few microseconds isolated (two context switches;
 * `securestreams enclave-bench` measures both against a plain Lua call and
 * a C call in one run). SS_ERR_CLOSED when the enclave died. */
ss_err ss_enclave_ping(ss_enclave_t *e);

/* Stop the enclave (an explicit message, then waitpid). Accepts NULL. */
void ss_enclave_destroy(ss_enclave_t **e);

/* The measurement: BLAKE2b-256 over the enclave program (this executable)
 * and the stage code, hex in out[65]. */
ss_err ss_enclave_measure(const char *script_or_code, int is_code, char out[65],
                          char *err, size_t errlen);

/* The isolated child's main: `securestreams enclave-child` runs it, with the
 * arguments ss_enclave_new passes (argv[0] is the command's name). Returns
 * the process's exit status; on a served channel it exits itself. */
int ss_enclave_child_main(int argc, char **argv);

#endif
