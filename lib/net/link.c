/*
 * link.c - producer and consumer links, the peer side of docs/protocol.md.
 *
 * Both links share a `peer`: one DEALER socket whose routing id is derived
 * from the peer id (so the router recognises a reconnecting socket), the
 * JOIN/WELCOME handshake, heartbeats and the router's liveness. The router is
 * alive while it was heard from within the liveness timeout; once declared
 * silent the link stays dead and every call returns SS_ERR_CLOSED.
 *
 * Hot path: incoming frames land in zmq_msg_t objects initialised once and
 * reused (zmq_msg_recv releases the previous content); outgoing frames are
 * sent with zmq_send, which copies. Waiting is one zmq_poll whose timeout is
 * the next heartbeat, liveness or tick deadline, never a busy loop.
 *
 * CurveZMQ (docs/curve.md): with both key files configured the socket is a
 * CURVE client of the router. While joining, a socket monitor reports the
 * handshake: a refused key or a CURVE/plain mismatch ends the join at once
 * with a message saying so, instead of the join timeout. The monitor is
 * closed once the router welcomed us.
 *
 * Consumer invariant: the router may deliver at most `window` batches that
 * the application has not yet been handed (initial CREDIT window, then one
 * CREDIT per hand-over). They are buffered in a ring of window + 1 slots;
 * the extra slot is the delivery the application holds until its next recv.
 */
#include "net/link.h"

#include "crypto/curve.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define LINK_HWM 1000        /* messages queued per direction */
#define LINK_LINGER_MS 200   /* time to flush LEAVE and ACKs at close */
#define READ_BURST 256       /* messages handled per read, so callers regain control */
#define LOG_LIMIT 10         /* first occurrences of each odd event that are logged */
#define MAX_WINDOW SS_MAX_WINDOW   /* bound on either window (the consumer buffers that many) */
#define PRODUCER_WINDOW SS_DEFAULT_WINDOW   /* default: unreceipted batches in flight */
#define CONSUMER_WINDOW 2    /* default: deliveries prefetched */
#define LINK_HANDSHAKE_MS 5000  /* CurveZMQ: a handshake not done by then is retried */
#define JOIN_EVENTS (ZMQ_EVENT_CONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED \
                     | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL \
                     | ZMQ_EVENT_DISCONNECTED)
/* Connections closed during the handshake, in a row, after which joining
 * gives up: a router never does that to a client it will accept (a CURVE
 * router closing on a plain client, or on a client naming another server
 * key, races with the client's own diagnosis and may just hang up). */
#define JOIN_HANDSHAKES_LOST 5

typedef struct {
    void *sock;
    char addr[256];
    char name[64];
    uint64_t id;
    uint32_t stream;
    unsigned window;
    int heartbeat_ms, liveness_ms, join_timeout_ms;
    void (*join_tick)(void *);
    void *join_tick_arg;
    int64_t heard;          /* last message from the router */
    int64_t sent;           /* last message to the router */
    int dead;               /* router declared silent, or socket failure */
    void (*tick)(void *);   /* hook while blocked (may be NULL) */
    void *tick_arg;
    int64_t ticked;         /* last run of the hook */
    zmq_msg_t in;           /* first frame of each incoming message */
    zmq_msg_t drop;         /* surplus frames of malformed messages */
    uint64_t nodd;          /* log limiter: unexpected messages */
    int curve;              /* a CURVE client */
    char curve_pub[SS_Z85_KEY];  /* its public key, for messages */
    void *mon;              /* handshake monitor while joining (may be NULL) */
    int hs_open;            /* connected, handshake not done yet */
    int hs_lost;            /* connections closed during the handshake, in a row */
} peer;

void ss_link_opts_init(ss_link_opts *o)
{
    memset(o, 0, sizeof *o);
    o->id = 0;
    o->name = NULL;
    o->stream = SS_DEFAULT_STREAM;
    o->window = 0;
    o->heartbeat_ms = ss_env_int("SS_HEARTBEAT_MS", SS_DEFAULT_HEARTBEAT_MS);
    o->liveness_ms = ss_env_int("SS_LIVENESS_MS", SS_DEFAULT_LIVENESS_MS);
    o->join_timeout_ms = ss_env_int("SS_JOIN_TIMEOUT_MS", 10000);
    const char *key = getenv("SS_CURVE_KEY"), *server = getenv("SS_CURVE_SERVER");
    o->curve_key = key && *key ? key : NULL;
    o->curve_server = server && *server ? server : NULL;
}

int ss_endpoint_attach(void *socket, const char *addr)
{
    if (strchr(addr, '*'))
        return zmq_bind(socket, addr);
    return zmq_connect(socket, addr);
}

/* ---- peer: what producer and consumer share ---- */

static int send_link(peer *p, uint8_t kind, uint16_t flags, uint32_t n, uint64_t tag, int more)
{
    ss_link_t l = { .kind = kind, .flags = flags, .n = n, .tag = tag };
    uint8_t buf[SS_LINK_SIZE];
    ss_link_encode(&l, buf);
    if (zmq_send(p->sock, buf, sizeof buf, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0)
        return -1;
    p->sent = ss_now_ms();
    return 0;
}

/* A send failed: the router is not reading (queue full) or the socket broke. */
static ss_err send_failed(peer *p, const char *what)
{
    int en = errno;
    if (!p->dead)
        ss_log("%s: cannot send %s to the router at %s: %s", p->name, what, p->addr,
               en == EAGAIN ? "its queue is full (router not reading)" : zmq_strerror(en));
    p->dead = 1;
    return SS_ERR_CLOSED;
}

/* Read and discard the remaining frames of the current message. */
static void drain_frames(peer *p, zmq_msg_t *last)
{
    int more = zmq_msg_more(last);
    while (more) {
        if (zmq_msg_recv(&p->drop, p->sock, 0) < 0)
            return;
        more = zmq_msg_more(&p->drop);
    }
}

/* The routing id (wire/frame.h): 'S' and the peer id; with CurveZMQ also
 * this client's public key, which the router checks against the key of the
 * session, and random bytes that only this link and the router know, so
 * that no other client can name the connection to take it over. */
static size_t routing_id(const peer *p, uint8_t rid[SS_ROUTING_ID_CURVE_SIZE])
{
    rid[0] = SS_ROUTING_ID_PREFIX;
    ss_put_u64(rid + 1, p->id);
    if (!p->curve || !zmq_z85_decode(rid + SS_ROUTING_ID_SIZE, p->curve_pub))
        return SS_ROUTING_ID_SIZE;
    randombytes_buf(rid + SS_ROUTING_ID_SIZE + SS_ROUTING_ID_KEY, SS_ROUTING_ID_NONCE);
    return SS_ROUTING_ID_CURVE_SIZE;
}

static ss_err peer_open(peer *p, void *zctx, const char *addr, const ss_link_opts *o,
                        const char *role, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    zmq_msg_init(&p->in);
    zmq_msg_init(&p->drop);
    p->id = o->id ? o->id : ss_random_id();
    snprintf(p->addr, sizeof p->addr, "%s", addr);
    if (o->name)
        snprintf(p->name, sizeof p->name, "%s", o->name);
    else
        snprintf(p->name, sizeof p->name, "%s %016llx", role, (unsigned long long)p->id);
    p->stream = o->stream;
    p->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : SS_DEFAULT_HEARTBEAT_MS;
    p->liveness_ms = o->liveness_ms > 0 ? o->liveness_ms : 3000;
    if (p->liveness_ms <= p->heartbeat_ms)
        p->liveness_ms = 2 * p->heartbeat_ms;
    p->join_timeout_ms = o->join_timeout_ms > 0 ? o->join_timeout_ms : 10000;
    p->join_tick = o->join_tick;
    p->join_tick_arg = o->join_tick_arg;

    int has_key = o->curve_key && *o->curve_key, has_server = o->curve_server && *o->curve_server;
    if (has_key != has_server) {
        snprintf(err, errlen, "CurveZMQ on the link to %s needs two key files: %s is set, "
                 "but not %s", addr,
                 has_key ? "this client's secret key (SS_CURVE_KEY)"
                         : "the router's public key (SS_CURVE_SERVER)",
                 has_key ? "the router's public key file (SS_CURVE_SERVER)"
                         : "this client's secret key file (SS_CURVE_KEY)");
        return SS_ERR_USAGE;
    }
    p->curve = has_key;

    p->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!p->sock) {
        snprintf(err, errlen, "cannot create a socket for %s: %s", addr, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    int64_t maxmsg = SS_MAX_MESSAGE;
    int hwm = LINK_HWM, linger = LINK_LINGER_MS;
    if (zmq_setsockopt(p->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0
        || zmq_setsockopt(p->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0
        || zmq_setsockopt(p->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0
        || zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        snprintf(err, errlen, "cannot set socket options for %s: %s", addr, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    if (p->curve) {
        char why[1024];
        int ivl = LINK_HANDSHAKE_MS;
        ss_err rc = ss_curve_client_setup_files(p->sock, o->curve_key, o->curve_server,
                                                p->curve_pub, why, sizeof why);
        if (rc == SS_OK && zmq_setsockopt(p->sock, ZMQ_HANDSHAKE_IVL, &ivl, sizeof ivl) != 0) {
            snprintf(why, sizeof why, "cannot set the handshake interval: %s", zmq_strerror(errno));
            rc = SS_ERR_IO;
        }
        if (rc != SS_OK) {
            snprintf(err, errlen, "CurveZMQ on the link to %s: %s", addr, why);
            return rc;
        }
    }
    uint8_t rid[SS_ROUTING_ID_CURVE_SIZE];
    size_t ridlen = routing_id(p, rid);
    int set = zmq_setsockopt(p->sock, ZMQ_ROUTING_ID, rid, ridlen);
    sodium_memzero(rid, sizeof rid);
    if (set != 0) {
        snprintf(err, errlen, "cannot set the routing id for %s: %s", addr, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    /* Diagnosis only: without a monitor a refusal shows as a join timeout. */
    char ignored[128];
    p->mon = ss_curve_monitor_open(zctx, p->sock, JOIN_EVENTS, ignored, sizeof ignored);
    if (ss_endpoint_attach(p->sock, addr) != 0) {
        int en = errno;
        snprintf(err, errlen, "cannot %s %s: %s", strchr(addr, '*') ? "bind" : "connect to",
                 addr, zmq_strerror(en));
        return SS_ERR_IO;
    }
    return SS_OK;
}

static void peer_close(peer *p, int leave)
{
    ss_curve_monitor_close(p->sock, &p->mon);
    if (p->sock) {
        if (leave && !p->dead)
            send_link(p, SS_LINK_LEAVE, 0, 0, 0, 0);
        zmq_close(p->sock);
        p->sock = NULL;
    }
    zmq_msg_close(&p->in);
    zmq_msg_close(&p->drop);
}

/* A handshake event while joining: SS_OK to keep waiting, or an error with
 * a message when the router will never let this link in as configured. */
static ss_err join_event(peer *p, uint16_t event, uint32_t value, char *err, size_t errlen)
{
    switch (event) {
    case ZMQ_EVENT_CONNECTED:
        p->hs_open = 1;
        return SS_OK;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        p->hs_open = 0;
        p->hs_lost = 0;
        return SS_OK;
    case ZMQ_EVENT_DISCONNECTED:
        if (!p->hs_open)
            return SS_OK;
        p->hs_open = 0;
        if (++p->hs_lost < JOIN_HANDSHAKES_LOST)
            return SS_OK;
        if (p->curve)
            snprintf(err, errlen, "the router at %s closed the connection during the CurveZMQ "
                     "handshake %d times in a row: is SS_CURVE_SERVER the public key of this "
                     "router, and is it a CurveZMQ router (--curve-key)?", p->addr, p->hs_lost);
        else
            snprintf(err, errlen, "the router at %s closed the connection during the handshake "
                     "%d times in a row: it probably requires CurveZMQ: set SS_CURVE_KEY to this "
                     "client's secret key file and SS_CURVE_SERVER to the router's public key "
                     "file (docs/curve.md)", p->addr, p->hs_lost);
        return SS_ERR_CRYPTO;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        snprintf(err, errlen, "the router at %s refused this client's CurveZMQ key (public key "
                 "%s, status %u): add it to the router's allow-list (--curve-allow)", p->addr,
                 p->curve ? p->curve_pub : "none", (unsigned)value);
        return SS_ERR_CRYPTO;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            if (p->curve)
                snprintf(err, errlen, "the router at %s does not use CurveZMQ, but this link "
                         "does (SS_CURVE_KEY and SS_CURVE_SERVER are set): configure the router "
                         "with --curve-key and --curve-allow, or unset them", p->addr);
            else
                snprintf(err, errlen, "the router at %s requires CurveZMQ: set SS_CURVE_KEY "
                         "to this client's secret key file and SS_CURVE_SERVER to the router's "
                         "public key file (docs/curve.md)", p->addr);
            return SS_ERR_CRYPTO;
        }
        return SS_OK;
    default:
        return SS_OK;
    }
}

/* Send JOIN and wait for WELCOME, at most join_timeout_ms. A producer
 * declares its window in the JOIN's flags and takes the smaller of it and
 * the window the router grants in the WELCOME's n (0: an older router that
 * grants none). */
static ss_err peer_join(peer *p, uint32_t role, char *err, size_t errlen)
{
    uint16_t declared = role == SS_ROLE_PRODUCER ? (uint16_t)p->window : 0;
    if (send_link(p, SS_LINK_JOIN, declared, role, p->id, 1) != 0
        || zmq_send(p->sock, p->name, strlen(p->name), ZMQ_DONTWAIT) < 0) {
        snprintf(err, errlen, "cannot send JOIN to %s: %s", p->addr, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    int64_t deadline = ss_now_ms() + p->join_timeout_ms;
    for (;;) {
        int64_t left = deadline - ss_now_ms();
        if (left <= 0)
            break;
        zmq_pollitem_t it[2] = { { p->sock, 0, ZMQ_POLLIN, 0 }, { p->mon, 0, ZMQ_POLLIN, 0 } };
        if (p->join_tick) {
            p->join_tick(p->join_tick_arg);
            if (left > 100)
                left = 100;
        }
        int rc = zmq_poll(it, p->mon ? 2 : 1, (long)left);
        if (rc < 0 && errno != EINTR) {
            snprintf(err, errlen, "waiting for the router at %s: %s", p->addr, zmq_strerror(errno));
            return SS_ERR_IO;
        }
        while (zmq_msg_recv(&p->in, p->sock, ZMQ_DONTWAIT) >= 0) {
            ss_link_t l;
            int ok = ss_link_decode(zmq_msg_data(&p->in), zmq_msg_size(&p->in), &l) == SS_OK;
            drain_frames(p, &p->in);
            if (ok && l.kind == SS_LINK_WELCOME) {
                p->heard = ss_now_ms();
                if (role == SS_ROLE_PRODUCER && l.n > 0 && l.n < p->window)
                    p->window = l.n;
                ss_curve_monitor_close(p->sock, &p->mon);
                return SS_OK;
            }
        }
        uint16_t event;
        uint32_t value;
        while (p->mon && ss_curve_monitor_read(p->mon, &event, &value) > 0) {
            ss_err e = join_event(p, event, value, err, errlen);
            if (e != SS_OK)
                return e;
        }
    }
    if (p->curve)
        snprintf(err, errlen, "no router answered at %s within %g s (with CurveZMQ: is this "
                 "client's key in the router's allow-list, with a role that may join as a %s?)",
                 p->addr, p->join_timeout_ms / 1000.0,
                 role == SS_ROLE_PRODUCER ? "producer" : "consumer");
    else
        snprintf(err, errlen, "no router answered at %s within %g s", p->addr,
                 p->join_timeout_ms / 1000.0);
    return SS_ERR_TIMEOUT;
}

/* Heartbeat when due, liveness of the router, the tick hook when allowed. */
static ss_err peer_upkeep(peer *p, int run_hook)
{
    if (p->dead)
        return SS_ERR_CLOSED;
    int64_t now = ss_now_ms();
    if (now - p->heard > p->liveness_ms) {
        ss_log("%s: the router at %s has been silent for %lld ms (liveness %d ms); giving up",
               p->name, p->addr, (long long)(now - p->heard), p->liveness_ms);
        p->dead = 1;
        return SS_ERR_CLOSED;
    }
    if (now - p->sent >= p->heartbeat_ms && send_link(p, SS_LINK_HEARTBEAT, 0, 0, 0, 0) != 0)
        return send_failed(p, "a heartbeat");
    if (run_hook && p->tick && now - p->ticked >= p->heartbeat_ms / 2) {
        p->ticked = now;
        p->tick(p->tick_arg);
    }
    return SS_OK;
}

/* Milliseconds until the next upkeep is due, bounded by `deadline` (ms). */
static long peer_wait_ms(const peer *p, int64_t deadline, int run_hook)
{
    int64_t now = ss_now_ms();
    int64_t next = p->sent + p->heartbeat_ms;
    if (p->heard + p->liveness_ms + 1 < next)
        next = p->heard + p->liveness_ms + 1;
    if (run_hook && p->tick && p->ticked + p->heartbeat_ms / 2 < next)
        next = p->ticked + p->heartbeat_ms / 2;
    if (deadline < next)
        next = deadline;
    int64_t ms = next - now;
    return ms < 0 ? 0 : (long)ms;
}

/* Wait up to ms for input. Returns 0, or SS_ERR_IO when polling failed. */
static ss_err peer_poll(peer *p, long ms)
{
    zmq_pollitem_t it = { p->sock, 0, ZMQ_POLLIN, 0 };
    if (zmq_poll(&it, 1, ms) < 0 && errno != EINTR) {
        ss_log("%s: polling the link to %s: %s", p->name, p->addr, zmq_strerror(errno));
        p->dead = 1;
        return SS_ERR_IO;
    }
    return SS_OK;
}

/* Receive the link frame of the next message without blocking.
 * Returns 1 with *l filled, 0 when no message is pending, -1 on a socket
 * error. Messages whose first frame is not a link frame are logged and
 * skipped (with their other frames). */
static int peer_next(peer *p, ss_link_t *l)
{
    for (;;) {
        if (zmq_msg_recv(&p->in, p->sock, ZMQ_DONTWAIT) < 0) {
            if (errno == EAGAIN)
                return 0;
            if (errno == EINTR)
                continue;
            ss_log("%s: receiving from %s: %s", p->name, p->addr, zmq_strerror(errno));
            p->dead = 1;
            return -1;
        }
        p->heard = ss_now_ms();
        if (ss_link_decode(zmq_msg_data(&p->in), zmq_msg_size(&p->in), l) == SS_OK)
            return 1;
        ss_log_limited(&p->nodd, LOG_LIMIT, "%s: skipped a message from %s that does not start "
                       "with a link frame (%zu bytes)", p->name, p->addr, zmq_msg_size(&p->in));
        drain_frames(p, &p->in);
    }
}

/* ---- producer ---- */

struct ss_producer {
    peer p;
    ss_receipt_fn *on_receipt;
    void *arg;
    uint64_t next_pub;      /* publish sequence of the next message */
    uint64_t next_receipt;  /* oldest unreceipted publish sequence */
    uint64_t refused;       /* receipts flagged SS_LINK_REFUSED */
    uint64_t nrefused_log;  /* log limiter */
};

static void on_receipt(ss_producer_t *pr, const ss_link_t *l)
{
    if (l->tag < pr->next_receipt || l->tag >= pr->next_pub) {
        ss_log_limited(&pr->p.nodd, LOG_LIMIT, "%s: ignored a receipt for batch %llu, not in flight",
                       pr->p.name, (unsigned long long)l->tag);
        return;
    }
    if (l->flags & SS_LINK_REFUSED) {
        pr->refused++;
        ss_log_limited(&pr->nrefused_log, LOG_LIMIT, "%s: the router at %s refused batch %llu "
                       "(its log says why)", pr->p.name, pr->p.addr, (unsigned long long)l->tag);
    }
    /* Receipts come in publish order; one also covers any earlier batch. */
    while (pr->next_receipt <= l->tag) {
        uint64_t seq = pr->next_receipt++;
        if (pr->on_receipt)
            pr->on_receipt(pr->arg, seq);
    }
}

static ss_err producer_read(ss_producer_t *pr)
{
    ss_link_t l;
    for (int i = 0; i < READ_BURST; i++) {
        int rc = peer_next(&pr->p, &l);
        if (rc < 0)
            return SS_ERR_IO;
        if (rc == 0)
            break;
        int more = zmq_msg_more(&pr->p.in);
        if (more)
            drain_frames(&pr->p, &pr->p.in);
        switch (l.kind) {
        case SS_LINK_RECEIPT:
            on_receipt(pr, &l);
            break;
        case SS_LINK_HEARTBEAT:
        case SS_LINK_WELCOME:
            break;
        default:
            ss_log_limited(&pr->p.nodd, LOG_LIMIT, "%s: ignored an unexpected message of kind %u "
                           "from %s", pr->p.name, l.kind, pr->p.addr);
        }
    }
    return SS_OK;
}

ss_err ss_producer_new(void *zctx, const char *addr, const ss_link_opts *o,
                       ss_receipt_fn *receipt, void *arg,
                       ss_producer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_producer_t *pr = calloc(1, sizeof *pr);
    if (!pr) {
        snprintf(err, errlen, "out of memory creating a link to %s", addr);
        return SS_ERR_NOMEM;
    }
    ss_err rc = peer_open(&pr->p, zctx, addr, o, "producer", err, errlen);
    pr->p.window = o->window ? (o->window < MAX_WINDOW ? o->window : MAX_WINDOW)
                           : PRODUCER_WINDOW;
    if (rc == SS_OK)
        rc = peer_join(&pr->p, SS_ROLE_PRODUCER, err, errlen);
    if (rc != SS_OK) {
        peer_close(&pr->p, 0);
        free(pr);
        return rc;
    }
    pr->on_receipt = receipt;
    pr->arg = arg;
    pr->p.ticked = ss_now_ms();
    *out = pr;
    return SS_OK;
}

ss_err ss_producer_publish(ss_producer_t *pr, const ss_header_t *h,
                           const void *lineage, size_t lineage_len,
                           const void *payload, size_t payload_len,
                           uint64_t *pubseq)
{
    size_t ids;
    if (lineage_len > SS_MAX_MESSAGE || payload_len > SS_MAX_MESSAGE
        || SS_HEADER_SIZE + lineage_len + payload_len > SS_MAX_MESSAGE)
        return SS_ERR_TOOBIG;
    if (ss_lineage_check(lineage, lineage_len, &ids) != SS_OK)
        return SS_ERR_FORMAT;
    /* Read receipts and keep up heartbeats; wait only while the window is full. */
    for (;;) {
        ss_err rc = producer_read(pr);
        if (rc == SS_OK)
            rc = peer_upkeep(&pr->p, 1);
        if (rc != SS_OK)
            return rc;
        if (pr->next_pub - pr->next_receipt < pr->p.window)
            break;
        rc = peer_poll(&pr->p, peer_wait_ms(&pr->p, INT64_MAX, 1));
        if (rc != SS_OK)
            return rc;
    }

    uint8_t hdr[SS_HEADER_SIZE];
    ss_header_encode(h, hdr);
    uint64_t seq = pr->next_pub;
    if (send_link(&pr->p, SS_LINK_PUBLISH, 0, 0, seq, 1) != 0)
        return send_failed(&pr->p, "a batch");
    /* A multipart message is accepted whole once its first frame is. */
    if (zmq_send(pr->p.sock, hdr, sizeof hdr, ZMQ_SNDMORE) < 0
        || zmq_send(pr->p.sock, lineage_len ? lineage : "", lineage_len, ZMQ_SNDMORE) < 0
        || zmq_send(pr->p.sock, payload_len ? payload : "", payload_len, 0) < 0)
        return send_failed(&pr->p, "a batch");
    pr->next_pub++;
    if (pubseq)
        *pubseq = seq;
    return SS_OK;
}

ss_err ss_producer_service(ss_producer_t *pr, int timeout_ms)
{
    ss_err rc = producer_read(pr);
    if (rc == SS_OK)
        rc = peer_upkeep(&pr->p, 0);
    if (rc != SS_OK || timeout_ms == 0)
        return rc;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : ss_now_ms() + timeout_ms;
    for (;;) {
        uint64_t before = pr->next_receipt;
        rc = peer_poll(&pr->p, peer_wait_ms(&pr->p, deadline, 0));
        if (rc == SS_OK)
            rc = producer_read(pr);
        if (rc == SS_OK)
            rc = peer_upkeep(&pr->p, 0);
        if (rc != SS_OK || pr->next_receipt != before || ss_now_ms() >= deadline)
            return rc;
    }
}

ss_err ss_producer_drain(ss_producer_t *pr, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : ss_now_ms() + timeout_ms;
    for (;;) {
        ss_err rc = producer_read(pr);
        if (rc == SS_OK)
            rc = peer_upkeep(&pr->p, 1);
        if (rc != SS_OK)
            return rc;
        if (pr->next_receipt == pr->next_pub)
            return SS_OK;
        if (ss_now_ms() >= deadline)
            return SS_ERR_TIMEOUT;
        rc = peer_poll(&pr->p, peer_wait_ms(&pr->p, deadline, 1));
        if (rc != SS_OK)
            return rc;
    }
}

void ss_producer_set_tick(ss_producer_t *pr, void (*tick)(void *), void *arg)
{
    pr->p.tick = tick;
    pr->p.tick_arg = arg;
    pr->p.ticked = ss_now_ms();
}

void *ss_producer_socket(ss_producer_t *pr)
{
    return pr->p.sock;
}

unsigned ss_producer_in_flight(const ss_producer_t *pr)
{
    return (unsigned)(pr->next_pub - pr->next_receipt);
}

unsigned ss_producer_window(const ss_producer_t *pr)
{
    return pr->p.window;
}

uint64_t ss_producer_refused(const ss_producer_t *pr)
{
    return pr->refused;
}

void ss_producer_destroy(ss_producer_t **prp)
{
    if (!prp || !*prp)
        return;
    ss_producer_t *pr = *prp;
    peer_close(&pr->p, 1);
    free(pr);
    *prp = NULL;
}

/* ---- consumer ---- */

typedef struct {
    zmq_msg_t part[3];   /* header, lineage, payload */
    ss_link_t link;
    ss_header_t header;
} slot;

struct ss_consumer {
    peer p;
    slot *slots;         /* ring of window + 1 */
    unsigned nslots;
    unsigned head;       /* oldest buffered delivery */
    unsigned count;      /* buffered deliveries */
    int held;            /* the slot before head is the application's */
    uint64_t nbad;       /* log limiter: malformed deliveries */
};

/* A delivery we cannot use still consumed a credit and is held by the
 * router: acknowledge it and grant the credit back. */
static ss_err reject_delivery(ss_consumer_t *c, uint64_t tag, const char *why)
{
    ss_log_limited(&c->nbad, LOG_LIMIT, "%s: skipped a delivery from %s: %s", c->p.name,
                   c->p.addr, why);
    if (send_link(&c->p, SS_LINK_ACK, SS_LINK_REJECTED, 0, tag, 0) != 0
        || send_link(&c->p, SS_LINK_CREDIT, 0, 1, 0, 0) != 0)
        return send_failed(&c->p, "an acknowledgement");
    return SS_OK;
}

/* Read the three stream frames of a DELIVER into the next free slot. */
static ss_err read_delivery(ss_consumer_t *c, const ss_link_t *l)
{
    if (!zmq_msg_more(&c->p.in))
        return reject_delivery(c, l->tag, "no stream frames after the link frame");
    if (c->count + (unsigned)c->held >= c->nslots) {
        /* The router sent more than the credit we granted. */
        drain_frames(&c->p, &c->p.in);
        ss_log_limited(&c->nbad, LOG_LIMIT, "%s: dropped a delivery beyond the granted credit "
                       "from %s", c->p.name, c->p.addr);
        return SS_OK;
    }
    slot *s = &c->slots[(c->head + c->count) % c->nslots];
    int n = 0, more = 1;
    while (more && n < 3) {
        if (zmq_msg_recv(&s->part[n], c->p.sock, 0) < 0) {
            c->p.dead = 1;
            ss_log("%s: receiving from %s: %s", c->p.name, c->p.addr, zmq_strerror(errno));
            return SS_ERR_IO;
        }
        more = zmq_msg_more(&s->part[n]);
        n++;
    }
    if (more) {
        drain_frames(&c->p, &s->part[n - 1]);
        return reject_delivery(c, l->tag, "more than three stream frames");
    }
    if (n != 3)
        return reject_delivery(c, l->tag, "fewer than three stream frames");
    size_t ids;
    if (ss_header_decode(zmq_msg_data(&s->part[0]), zmq_msg_size(&s->part[0]), &s->header) != SS_OK)
        return reject_delivery(c, l->tag, "malformed stream header");
    if (s->header.stream != c->p.stream) {
        char why[96];
        snprintf(why, sizeof why, "stream id 0x%08x is not this pipeline's 0x%08x",
                 s->header.stream, c->p.stream);
        return reject_delivery(c, l->tag, why);
    }
    if (ss_lineage_check(zmq_msg_data(&s->part[1]), zmq_msg_size(&s->part[1]), &ids) != SS_OK)
        return reject_delivery(c, l->tag, "malformed lineage frame");
    s->link = *l;
    c->count++;
    return SS_OK;
}

static ss_err consumer_read(ss_consumer_t *c)
{
    ss_link_t l;
    for (int i = 0; i < READ_BURST; i++) {
        int rc = peer_next(&c->p, &l);
        if (rc < 0)
            return SS_ERR_IO;
        if (rc == 0)
            break;
        if (l.kind == SS_LINK_DELIVER) {
            ss_err e = read_delivery(c, &l);
            if (e != SS_OK)
                return e;
            continue;
        }
        if (zmq_msg_more(&c->p.in))
            drain_frames(&c->p, &c->p.in);
        if (l.kind != SS_LINK_HEARTBEAT && l.kind != SS_LINK_WELCOME)
            ss_log_limited(&c->p.nodd, LOG_LIMIT, "%s: ignored an unexpected message of kind %u "
                           "from %s", c->p.name, l.kind, c->p.addr);
    }
    return SS_OK;
}

ss_err ss_consumer_new(void *zctx, const char *addr, const ss_link_opts *o,
                       ss_consumer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_consumer_t *c = calloc(1, sizeof *c);
    ss_err rc = SS_ERR_NOMEM;
    unsigned window = o->window ? (o->window < MAX_WINDOW ? o->window : MAX_WINDOW)
                               : CONSUMER_WINDOW;
    if (!c)
        goto nomem;
    c->nslots = window + 1;
    c->slots = calloc(c->nslots, sizeof *c->slots);
    if (!c->slots)
        goto nomem;
    for (unsigned i = 0; i < c->nslots; i++)
        for (int k = 0; k < 3; k++)
            zmq_msg_init(&c->slots[i].part[k]);
    rc = peer_open(&c->p, zctx, addr, o, "consumer", err, errlen);
    if (rc == SS_OK)
        rc = peer_join(&c->p, SS_ROLE_CONSUMER, err, errlen);
    if (rc == SS_OK && send_link(&c->p, SS_LINK_CREDIT, 0, window, 0, 0) != 0) {
        snprintf(err, errlen, "cannot send credit to %s: %s", addr, zmq_strerror(errno));
        rc = SS_ERR_IO;
    }
    if (rc != SS_OK)
        goto fail;
    c->p.window = window;
    c->p.ticked = ss_now_ms();
    *out = c;
    return SS_OK;

nomem:
    snprintf(err, errlen, "out of memory creating a link to %s", addr);
fail:
    if (c) {
        c->p.dead = 1;   /* never joined: no LEAVE */
        if (c->p.sock || c->slots)
            ss_consumer_destroy(&c);
        else
            free(c);
    }
    return rc;
}

ss_err ss_consumer_recv(ss_consumer_t *c, int timeout_ms, ss_delivery_t *d)
{
    c->held = 0;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : ss_now_ms() + timeout_ms;
    for (;;) {
        ss_err rc = consumer_read(c);
        if (rc == SS_OK)
            rc = peer_upkeep(&c->p, 1);
        if (rc != SS_OK)
            return rc;
        if (c->count > 0) {
            slot *s = &c->slots[c->head];
            c->head = (c->head + 1) % c->nslots;
            c->count--;
            c->held = 1;
            d->tag = s->link.tag;
            d->flags = s->link.flags;
            d->header = s->header;
            d->header_bytes = zmq_msg_data(&s->part[0]);
            d->lineage = zmq_msg_data(&s->part[1]);
            d->lineage_len = zmq_msg_size(&s->part[1]);
            d->payload = zmq_msg_data(&s->part[2]);
            d->payload_len = zmq_msg_size(&s->part[2]);
            if (send_link(&c->p, SS_LINK_CREDIT, 0, 1, 0, 0) != 0)
                return send_failed(&c->p, "credit");
            return SS_OK;
        }
        if (ss_now_ms() >= deadline)
            return SS_ERR_TIMEOUT;
        rc = peer_poll(&c->p, peer_wait_ms(&c->p, deadline, 1));
        if (rc != SS_OK)
            return rc;
    }
}

static ss_err consumer_ack(ss_consumer_t *c, uint64_t tag, uint16_t flags)
{
    if (c->p.dead)
        return SS_ERR_CLOSED;
    if (send_link(&c->p, SS_LINK_ACK, flags, 0, tag, 0) != 0)
        return send_failed(&c->p, "an acknowledgement");
    return SS_OK;
}

ss_err ss_consumer_ack(ss_consumer_t *c, uint64_t tag)
{
    return consumer_ack(c, tag, 0);
}

ss_err ss_consumer_reject(ss_consumer_t *c, uint64_t tag)
{
    return consumer_ack(c, tag, SS_LINK_REJECTED);
}

void ss_consumer_tick(ss_consumer_t *c)
{
    if (consumer_read(c) == SS_OK)
        peer_upkeep(&c->p, 0);
}

unsigned ss_consumer_buffered(const ss_consumer_t *c)
{
    return c->count;
}

void ss_consumer_set_tick(ss_consumer_t *c, void (*tick)(void *), void *arg)
{
    c->p.tick = tick;
    c->p.tick_arg = arg;
    c->p.ticked = ss_now_ms();
}

void *ss_consumer_socket(ss_consumer_t *c)
{
    return c->p.sock;
}

void ss_consumer_destroy(ss_consumer_t **cp)
{
    if (!cp || !*cp)
        return;
    ss_consumer_t *c = *cp;
    peer_close(&c->p, 1);
    if (c->slots) {
        for (unsigned i = 0; i < c->nslots; i++)
            for (int k = 0; k < 3; k++)
                zmq_msg_close(&c->slots[i].part[k]);
        free(c->slots);
    }
    free(c);
    *cp = NULL;
}
