/*
 * link.h - the peer side of the router protocol (docs/protocol.md).
 *
 * A producer link publishes stream messages to a router's frontend with a
 * window of unreceipted batches; a consumer link receives deliveries from a
 * router's backend, granting one credit each time the application asks for
 * the next delivery. Both join with JOIN/WELCOME, keep the router informed
 * with heartbeats, and notice a silent router after the liveness timeout.
 *
 * Neither is thread-safe; one thread drives both links of a worker.
 * Addresses containing '*' are bound, others are connected.
 */
#ifndef SS_LINK_H
#define SS_LINK_H

#include "wire/frame.h"

typedef struct {
    uint64_t id;          /* this peer's id (0: a random one) */
    const char *name;     /* for logs: "mapper#2"; copied */
    uint32_t stream;      /* pipeline id; messages of other streams are refused */
    unsigned window;      /* producer: unreceipted batches in flight (default 8),
                             declared in JOIN; the router may grant fewer;
                             consumer: prefetched deliveries (default 2);
                             0: the default of the role; at most 1024 */
    int heartbeat_ms;     /* default 250 */
    int liveness_ms;      /* default 10000 */
    int join_timeout_ms;  /* give up joining after this long (default 10000) */
    void (*join_tick)(void *arg); /* run about every 100 ms while joining (may be
                                     NULL): keeps another link of the same peer
                                     alive while this one waits for its router */
    void *join_tick_arg;
    const char *curve_key;    /* CurveZMQ: this client's secret key file (docs/curve.md);
                                 default $SS_CURVE_KEY; not copied */
    const char *curve_server; /* CurveZMQ: the router's public key file (.pub);
                                 default $SS_CURVE_SERVER; not copied */
} ss_link_opts;

/* Fill opts with the defaults above (and SS_HEARTBEAT_MS / SS_LIVENESS_MS,
 * SS_CURVE_KEY / SS_CURVE_SERVER from the environment when set and not
 * empty). The stream is SS_DEFAULT_STREAM.
 *
 * CurveZMQ: with both curve_key and curve_server the link's socket is a
 * CURVE client of the router (the keys are read by ss_producer_new and
 * ss_consumer_new); with neither, the link is plain; with only one, those
 * constructors fail with SS_ERR_USAGE naming what is missing. A router that
 * refuses the client's key makes them fail with SS_ERR_CRYPTO ("the router
 * at ADDR refused this client's CurveZMQ key ..."), as does a mismatch of
 * CurveZMQ and plain between link and router. */
void ss_link_opts_init(ss_link_opts *o);

/* Bind when addr contains '*', else connect. Returns -1 and sets errno. */
int ss_endpoint_attach(void *socket, const char *addr);

/* ---- producer ---- */
typedef struct ss_producer ss_producer_t;
typedef void ss_receipt_fn(void *arg, uint64_t pubseq);

/* Connect to `addr` (a router's frontend), JOIN and wait for WELCOME.
 * `on_receipt` (may be NULL) is called for every RECEIPT with the publish
 * sequence that ss_producer_publish returned. On failure returns an error
 * and writes a message naming the address into err. */
ss_err ss_producer_new(void *zctx, const char *addr, const ss_link_opts *o,
                       ss_receipt_fn *on_receipt, void *arg,
                       ss_producer_t **out, char *err, size_t errlen);

/* Publish one stream message (header, lineage frame, payload). Blocks while
 * the window is full, servicing receipts and heartbeats and calling `tick`
 * (may be NULL) about every heartbeat interval. The bytes are copied.
 * *pubseq receives the publish sequence (0, 1, 2, ...); the router receipts
 * in that order. Errors: SS_ERR_CLOSED when the router stopped answering,
 * SS_ERR_TOOBIG when header, lineage and payload exceed SS_MAX_MESSAGE,
 * SS_ERR_FORMAT when the lineage frame is not sorted 16-byte ids. */
ss_err ss_producer_publish(ss_producer_t *p, const ss_header_t *h,
                           const void *lineage, size_t lineage_len,
                           const void *payload, size_t payload_len,
                           uint64_t *pubseq);

/* Service incoming receipts/heartbeats for up to timeout_ms (0: no wait). */
ss_err ss_producer_service(ss_producer_t *p, int timeout_ms);

/* Wait until every published message is receipted (or the router is gone). */
ss_err ss_producer_drain(ss_producer_t *p, int timeout_ms);

/* Hook run while publish or drain blocks (to keep another link alive).
 * Not run by ss_producer_service, so two links may hook each other. */
void ss_producer_set_tick(ss_producer_t *p, void (*tick)(void *), void *arg);

void *ss_producer_socket(ss_producer_t *p);
unsigned ss_producer_in_flight(const ss_producer_t *p);
/* The window in use: the one asked for, or the smaller one the router
 * granted in its WELCOME. */
unsigned ss_producer_window(const ss_producer_t *p);
/* Batches the router receipted flagged SS_LINK_REFUSED (it logged why). */
uint64_t ss_producer_refused(const ss_producer_t *p);

/* Send LEAVE, close. Accepts NULL; sets *p to NULL. */
void ss_producer_destroy(ss_producer_t **p);

/* ---- consumer ---- */
typedef struct ss_consumer ss_consumer_t;

/* One delivery. The pointers stay valid until the next ss_consumer_recv or
 * ss_consumer_destroy. */
typedef struct {
    uint64_t tag;         /* delivery tag, to ACK */
    uint16_t flags;       /* SS_LINK_REDELIVERED, SS_LINK_LATE (both informational:
                             a router may set them falsely) */
    ss_header_t header;
    const uint8_t *header_bytes; /* the 40 encoded header bytes */
    const uint8_t *lineage;      /* raw lineage frame */
    size_t lineage_len;
    const uint8_t *payload;
    size_t payload_len;
} ss_delivery_t;

/* Connect to `addr` (a router's backend), JOIN, wait for WELCOME, then grant
 * `window` credits. On failure returns an error and writes a message naming
 * the address into err. */
ss_err ss_consumer_new(void *zctx, const char *addr, const ss_link_opts *o,
                       ss_consumer_t **out, char *err, size_t errlen);

/* Wait up to timeout_ms (-1: forever) for the next delivery, granting
 * credit for it. SS_ERR_TIMEOUT when none came, SS_ERR_CLOSED when the router
 * stopped answering. Messages not in our format are logged and skipped. */
ss_err ss_consumer_recv(ss_consumer_t *c, int timeout_ms, ss_delivery_t *d);

/* Acknowledge a delivery: the router forgets the batch (an EOS too: the
 * router ends once every consumer acknowledged its EOS), and the batch's
 * lineage claims become confirmed: a later batch overlapping them is a
 * duplicate. SS_ERR_CLOSED when the router is gone. */
ss_err ss_consumer_ack(ss_consumer_t *c, uint64_t tag);

/* Acknowledge a delivery this consumer did not accept (it failed
 * authentication, does not decode, is a replay): an ACK flagged
 * SS_LINK_REJECTED, so the router forgets the batch's lineage claims and a
 * real batch with that lineage is not taken for a duplicate. Errors as
 * ss_consumer_ack. */
ss_err ss_consumer_reject(ss_consumer_t *c, uint64_t tag);

/* Send a heartbeat if one is due and read pending control messages without
 * blocking (deliveries are buffered for the next recv). Does not run the
 * hook of ss_consumer_set_tick. */
void ss_consumer_tick(ss_consumer_t *c);

/* Deliveries received and buffered, not yet handed out by recv (at most
 * the window): what ss_consumer_tick has read ahead. */
unsigned ss_consumer_buffered(const ss_consumer_t *c);

/* Hook run about every heartbeat interval while recv blocks (to keep another
 * link alive, e.g. ss_producer_service of the same worker). */
void ss_consumer_set_tick(ss_consumer_t *c, void (*tick)(void *), void *arg);

void *ss_consumer_socket(ss_consumer_t *c);
void ss_consumer_destroy(ss_consumer_t **c);

#endif
