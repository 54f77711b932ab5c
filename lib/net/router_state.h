/*
 * router_state.h - the router's protocol state machine, without sockets
 * (router_state.c; internal to the router and its tests).
 *
 * The state takes decoded input -- "peer P on side S sent these frames at
 * time T" -- and answers through one send callback; router.c binds it to two
 * ROUTER sockets, tests bind it to a recorder and drive time by hand. Every
 * rule of docs/protocol.md ("Router rules") lives here: membership and
 * liveness, receipts and backpressure, deduplication, credit dispatch,
 * acknowledgement and re-dispatch, end of stream.
 */
#ifndef SS_ROUTER_STATE_H
#define SS_ROUTER_STATE_H

#include "wire/frame.h"
#include "net/router.h"

#include <zmq.h>

enum { SS_SIDE_FRONTEND = 0, SS_SIDE_BACKEND = 1 };

/* Frames of one input message the state looks at: the link frame and at
 * most four more; a caller that received more passes SS_ROUTER_MAX_PARTS + 1
 * as nparts (the message is refused without reading the surplus). */
#define SS_ROUTER_MAX_PARTS 5

/* Send one message to the peer with routing id `ident` on `side`: the link
 * frame, then, when `stream` is not NULL, the three stream frames it points
 * to (header, lineage, payload), which the callee copies (zmq_msg_copy) and
 * must not modify. Returns 0, or -1 when the peer's connection is gone (the
 * state then declares the peer dead). */
typedef int ss_router_send_fn(void *arg, int side, const uint8_t *ident, size_t idlen,
                              const ss_link_t *link, zmq_msg_t *stream);

typedef struct ss_router_state ss_router_state_t;

/* Uses o->stream, max_bytes, heartbeat_ms, liveness_ms. `self_id` is the
 * producer id of the EOS the router creates. SS_ERR_NOMEM on failure. */
ss_err ss_router_state_new(const ss_router_opts *o, uint64_t self_id,
                           ss_router_send_fn *send, void *arg, ss_router_state_t **out);

/* Frees every held batch. Accepts NULL; sets *s to NULL. */
void ss_router_state_destroy(ss_router_state_t **s);

/* Handle one message from peer `ident` on `side` at time `now` (ms):
 * parts[0] is the link frame, nparts counts it. Stream frames of an accepted
 * batch are moved out of parts (left empty); the caller still owns, and
 * eventually closes, every element of parts. Never fails: what it cannot use
 * is logged and counted. */
void ss_router_state_input(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                           zmq_msg_t *parts, size_t nparts, int64_t now);

/* A PUBLISH from `ident` on `side` that the socket layer refuses before the
 * state sees it (router.c: what a CurveZMQ key's roles do not allow): logged
 * with `why`, counted in `refused`, and answered like any refused batch of a
 * member (a RECEIPT of `pubseq` flagged REFUSED). */
void ss_router_state_refuse_publish(ss_router_state_t *s, int side, const void *ident,
                                    size_t idlen, uint64_t pubseq, const char *why, int64_t now);

/* Timers: heartbeats due, members silent past the liveness timeout, listed
 * members that never joined. Call at least every heartbeat_ms / 2. */
void ss_router_state_tick(ss_router_state_t *s, int64_t now);

/* 1 once end of stream was delivered and acknowledged by every consumer it
 * listed (or they died); *at (may be NULL) receives the time it happened. */
int ss_router_state_done(const ss_router_state_t *s, int64_t *at);

void ss_router_state_stats(const ss_router_state_t *s, ss_router_stats *st);

/* One message out of a ROUTER socket, as the router sends it: the peer's
 * routing id, the link frame, then the three stream frames when stream is
 * not NULL (copied: the caller keeps its frames). Never blocks; -1 with
 * errno on failure. Also what a tool standing in for a router sends with. */
int ss_router_send_frames(void *sock, const uint8_t *ident, size_t idlen, const ss_link_t *link,
                          zmq_msg_t *stream);

#endif
