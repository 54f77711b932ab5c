/*
 * router.h - the rendezvous between two stages (docs/protocol.md, "Router
 * rules"): fair-queued input from any number of producers, credit-based
 * dispatch to consumers, acknowledgement and re-dispatch, lineage
 * deduplication, end of stream counted and delivered exactly once to every
 * consumer, bounded memory.
 */
#ifndef SS_ROUTER_H
#define SS_ROUTER_H

#include "base/common.h"

typedef struct ss_router ss_router_t;

typedef struct {
    const char *frontend;   /* producers' side, e.g. tcp://0.0.0.0:5555 */
    const char *backend;    /* consumers' side, e.g. tcp://0.0.0.0:5556 */
    const char *name;       /* for logs */
    uint32_t stream;        /* pipeline id */
    size_t max_bytes;       /* bound on held batches (default 64 MiB) */
    unsigned max_window;    /* the largest window granted to a producer
                               (default SS_DEFAULT_MAX_WINDOW, at most SS_MAX_WINDOW) */
    int heartbeat_ms;       /* default 250 */
    int liveness_ms;        /* default 10000 */
    int linger_ms;          /* after end of stream, keep answering late
                               joiners this long before exiting (default 0) */
    const char *curve_key;  /* CurveZMQ: the router's secret key file, or NULL */
    const char *curve_allow;/* CurveZMQ: the allow-list of client public keys (a
                               directory of *.pub files, a .pub file or a list;
                               docs/curve.md), or NULL */
} ss_router_opts;

/* Defaults: name "router", stream SS_DEFAULT_STREAM, max_bytes 64 MiB,
 * max_window SS_DEFAULT_MAX_WINDOW,
 * heartbeat 250 ms and liveness 10000 ms (or SS_HEARTBEAT_MS / SS_LIVENESS_MS
 * from the environment), linger 0; no addresses. */
void ss_router_opts_init(ss_router_opts *o);

/* Bind both sockets (a router always binds, '*' or not). On failure
 * returns SS_ERR_USAGE (missing address, heartbeat not below liveness) or
 * SS_ERR_IO and writes a message naming the address into err.
 *
 * CurveZMQ: with curve_key and curve_allow both sockets are CURVE servers
 * and a ZAP handler bound in `zctx` before them (one CurveZMQ router per
 * context) lets in only clients whose public key is in the allow-list; it
 * runs in ss_router_run's loop. Refused handshakes, and clients that do not
 * speak CurveZMQ, are logged (first occurrences) and counted in
 * auth_refused. Only one of the two: SS_ERR_USAGE. A key file or allow-list
 * that does not load: its error (SS_ERR_IO, SS_ERR_FORMAT, SS_ERR_CRYPTO,
 * SS_ERR_USAGE) with a message naming the file. */
ss_err ss_router_new(void *zctx, const ss_router_opts *o, ss_router_t **out,
                     char *err, size_t errlen);

/* The endpoints actually bound (ports resolved when '*' was given). */
const char *ss_router_frontend(const ss_router_t *r);
const char *ss_router_backend(const ss_router_t *r);

/* Run until end of stream was delivered and acknowledged by every consumer
 * it listed (then keep answering late joiners for linger_ms) and return
 * SS_OK; or until *stop (may be NULL) becomes non-zero, a signal handler's
 * flag: SS_ERR_CLOSED when that happens before the end. SS_ERR_IO when a
 * socket fails. */
ss_err ss_router_run(ss_router_t *r, volatile int *stop);

typedef struct {
    uint64_t batches_in;     /* DATA batches accepted (duplicates excluded) */
    uint64_t batches_out;    /* DATA deliveries, re-deliveries included */
    uint64_t duplicates;     /* batches dropped by lineage deduplication */
    uint64_t parked;         /* batches that waited for another batch's pending lineage
                                claims to be confirmed or rejected */
    uint64_t rejected;       /* deliveries a consumer acknowledged REJECTED (their lineage
                                claims were forgotten) */
    uint64_t overruns;       /* PUBLISHes beyond the producer's window: dropped unread */
    uint64_t evicted;        /* producer memberships ended for overrunning their window */
    uint64_t joins_deferred; /* producer JOINs answered only once held bytes were back
                                under the bound */
    uint64_t redelivered;    /* batches returned to the queue by a consumer's death */
    uint64_t refused;        /* messages not in our format, another stream, too big */
    uint64_t auth_refused;   /* CurveZMQ: handshakes refused (key not allowed, or
                                the client does not speak CurveZMQ); 0 when plain */
    uint64_t impostors;      /* CurveZMQ: messages dropped because their routing id
                                is not one of the sender's key (docs/curve.md) */
    uint64_t role_refused;   /* CurveZMQ: JOINs and PUBLISHes the key's roles do not
                                allow (the PUBLISHes also count in refused) */
    uint64_t bytes_held, bytes_held_max;  /* queued plus unacknowledged, now and peak */
    unsigned producers, consumers;        /* live members */
} ss_router_stats;

void ss_router_get_stats(const ss_router_t *r, ss_router_stats *s);

/* Accepts NULL; sets *r to NULL. */
void ss_router_destroy(ss_router_t **r);


#endif
