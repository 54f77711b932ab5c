/*
 * replay.h - the replay window: has a batch with this producer id and
 * sequence number been received before? (docs/protocol.md, docs/enclave.md)
 *
 * Per producer the window remembers the SS_REPLAY_WINDOW sequence numbers
 * below the newest one it saw, one bit each (2 KiB a producer), so memory
 * stays bounded however long the stream: a sequence number further behind
 * cannot be told from a replay and is refused as too old. The number of
 * producers may be bounded (the enclave keeps 256, allocated at creation so
 * a check never allocates) or not (workers and the sink: the table grows,
 * 2 KiB per new producer). One window serves one thread.
 */
#ifndef SS_REPLAY_H
#define SS_REPLAY_H

#include "base/common.h"
#include "wire/frame.h"   /* SS_REPLAY_WINDOW */

typedef struct ss_replay ss_replay_t;

/* A window for at most max_producers producers (0: no bound). With a bound
 * every producer's memory is allocated here. SS_ERR_NOMEM, or
 * SS_ERR_CRYPTO when libsodium cannot start (it keys the index). The caller
 * destroys *out with ss_replay_destroy. */
ss_err ss_replay_new(size_t max_producers, ss_replay_t **out);

/* Is (producer, seq) fresh? 1: yes, and it is remembered. 0: no, and why
 * says why: "replayed (already received from this producer)", "too old to
 * tell from a replay (more than 16384 batches behind its producer's
 * newest)", or "more than N producers upstream" when a bounded table is
 * full. -1 only without a bound, when the table cannot grow for a new
 * producer (why says so). */
int ss_replay_check(ss_replay_t *r, uint64_t producer, uint64_t seq, char *why, size_t whylen);

/* Accepts NULL; sets *r to NULL. */
void ss_replay_destroy(ss_replay_t **r);

#endif
