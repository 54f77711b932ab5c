/*
 * channel.h - the channel between the host of an isolated enclave and its
 * child (docs/enclave.md "The channel"). Internal to lib/enclave: host.c and
 * child.c speak it, core.h fills its reply; nothing outside includes it.
 *
 * The channel is one memfd of SS_CHANNEL_BYTES mapped by both sides: a
 * control block (the request, the reply, two counters and two "waiting"
 * flags), then the in area (the host's input: a batch, or the start-up
 * request) and the out area (the child's output: a sealed batch or record).
 * Beside it, the doorbell: a socketpair on which a side writes one byte to
 * wake the other when that one sleeps.
 *
 * Invariants: one call at a time, so `posted` - `answered` is 0 or 1; the
 * host writes only the request and the in area while a call is posted, the
 * child only the reply and the out area. Neither side trusts the other's
 * writes: each copies a request or reply out of the shared memory before
 * it looks at it and checks every length against its area (host.c,
 * child.c). The layout is the same on both sides because both run the same
 * program (the child is this executable, exec'd).
 */
#ifndef SS_ENCLAVE_CHANNEL_H
#define SS_ENCLAVE_CHANNEL_H

#include "base/common.h"
#include "crypto/crypto.h"
#include "wire/frame.h"

#include <stdatomic.h>

#define SS_CHANNEL_CTL_BYTES 8192
#define SS_CHANNEL_AREA_BYTES SS_MAX_MESSAGE
#define SS_CHANNEL_BYTES (SS_CHANNEL_CTL_BYTES + 2 * (size_t)SS_CHANNEL_AREA_BYTES)
#define SS_CHANNEL_MAGIC 0x53534543u     /* "SSEC" */
#define SS_CHANNEL_DOORBELL 3            /* the child's descriptors */
#define SS_CHANNEL_MEMORY 4

typedef enum {
    SS_OP_INIT = 1,    /* start-up: ss_channel_init and its strings in the in area */
    SS_OP_BATCH,       /* header (40) | lineage | payload in the in area */
    SS_OP_FLUSH,
    SS_OP_FINISH,      /* the statistics record, context in req.id */
    SS_OP_PING,
    SS_OP_QUIT,        /* the stop message: the child answers, then exits */
} ss_channel_op;

typedef struct {
    uint32_t op;               /* ss_channel_op */
    uint32_t redelivered;
    uint64_t seq;
    uint64_t lineage_len;      /* input: header (40) | lineage | payload in the in area */
    uint64_t payload_len;
    char id[256];              /* SS_OP_FINISH: the record's context */
} ss_channel_request;

/* The outcome of a call, filled by the core (core.h) in the child's private
 * memory and published whole; the inprocess backend keeps one in the
 * handle. */
typedef struct {
    int32_t status;            /* ss_err */
    uint32_t has_output;
    uint32_t in, out, skipped, rejected, refused;
    uint32_t foreign;          /* the input was sealed with another key */
    uint32_t stateful;         /* SS_OP_INIT */
    uint64_t lineage_len;      /* output: header (40) | lineage | payload in the out area */
    uint64_t payload_len;
    char measurement[65];      /* SS_OP_INIT */
    char message[1024];
} ss_channel_reply;

/* The control block at the start of the shared memory. The counters let
 * each side spin briefly before sleeping on the doorbell: a side that is
 * about to sleep says so (`*_waiting`), then looks once more; the other side
 * rings only when it sees that flag. Both use sequentially consistent
 * atomics, so at least one of them sees the other's store (a stray byte is
 * harmless: a woken side always re-checks its counter). */
typedef struct {
    uint32_t magic;
    ss_channel_request req;
    ss_channel_reply rep;
    _Atomic uint64_t posted;            /* requests the host has posted */
    _Atomic uint64_t answered;          /* requests the enclave has answered */
    _Atomic uint32_t host_waiting;
    _Atomic uint32_t enclave_waiting;
    uint32_t spin;                      /* both sides may spin (set by the host at start) */
} ss_channel_ctl;

_Static_assert(sizeof(ss_channel_ctl) <= SS_CHANNEL_CTL_BYTES, "control block too large");

/* SS_OP_INIT: this, then the strings (each NUL-terminated), at the start of
 * the in area. */
typedef struct {
    uint64_t heap, budget_ms, producer;
    uint32_t stream, fail, pos, is_code;
    uint8_t run[SS_RUN_BYTES];          /* the run id, when run_given */
    uint32_t run_given;
    uint32_t off[5], len[5];            /* indexed by ss_init_string */
} ss_channel_init;

typedef enum { SS_INIT_CODE, SS_INIT_CODE_NAME, SS_INIT_KEY_FILE, SS_INIT_STAGE, SS_INIT_NAME,
               SS_INIT_COUNT } ss_init_string;

/* The shared memory as one side maps it. */
typedef struct {
    uint8_t *shm;                       /* SS_CHANNEL_BYTES, NULL when not mapped */
    ss_channel_ctl *ctl;
    uint8_t *in, *out;                  /* the two areas */
} ss_channel;

/* The host: a new memfd of SS_CHANNEL_BYTES (close-on-exec) in *fd, mapped
 * into ch, its magic set. SS_ERR_IO with the reason; *fd is then -1 or the
 * descriptor the caller closes. */
ss_err ss_channel_create(ss_channel *ch, int *fd, char *err, size_t errlen);

/* The child: map the memfd `fd` (at least SS_CHANNEL_BYTES) into ch and
 * close fd. -1 when it cannot be mapped. */
int ss_channel_attach(ss_channel *ch, int fd);

/* Unmap. Accepts a channel never mapped. */
void ss_channel_detach(ss_channel *ch);

/* A waiter's spinning policy: spin while spinning pays. After 4 waits in a
 * row that spun in vain (the other side takes longer than the spin, as a
 * batch of real work does), spin only on every 16th wait, to notice when
 * calls get short again. */
typedef struct {
    int enabled;      /* more than one CPU, SS_ENCLAVE_SPIN not 0 */
    unsigned misses;  /* consecutive waits where spinning did not pay */
    unsigned waits;
} ss_spinner;

/* May the two sides spin? SS_ENCLAVE_SPIN if set (anything but "0" is yes),
 * else whether this machine has more than one CPU. */
int ss_channel_spin_allowed(void);

/* Wait for *counter >= want: spin (as sp allows), then say so in *waiting
 * and sleep on fd (one byte per wake-up). 0 once reached, -1 when the other
 * side is gone (EOF or error). Makes no system call but read(fd) and the
 * vDSO's clock. */
int ss_channel_await(int fd, ss_spinner *sp, _Atomic uint64_t *counter, uint64_t want,
                     _Atomic uint32_t *waiting);

/* Ring the other side if *waiting says it sleeps: one byte on fd (send
 * without SIGPIPE for the host, write for the child, whose filter allows
 * only write). 0, or -1 when it is gone. */
int ss_channel_ring(int fd, _Atomic uint32_t *waiting, int host);

#endif
