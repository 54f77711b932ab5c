/*
 * router.c - the socket side of the router (router.h): two ROUTER sockets,
 * the frontend for producers and the backend for consumers, polled
 * together; a bounded number of messages is read from each in turn per
 * round and handed, frames and all, to the protocol state machine
 * (router_state.c), whose answers leave through sock_send. With CurveZMQ
 * (docs/curve.md) both sockets are CURVE servers; the same loop answers the
 * ZAP handler's requests and reads the sockets' monitors, which report
 * clients that fail the handshake before ZAP is asked.
 *
 * Invariants: the sockets never block the loop (every send is ZMQ_DONTWAIT
 * with SNDHWM 0, every read after the first frame is of a message already
 * queued); the state is ticked at least every tick_ms (heartbeat / 4, at
 * most 100 ms); nothing here interprets a link frame: the protocol is the
 * state's alone.
 */
#include "net/router.h"

#include "crypto/curve.h"
#include "net/router_state.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ROUTER_BURST 64            /* messages read from each socket per round */
#define ROUTER_LINGER_MS 500       /* to flush the last receipts and EOS at close */
/* Complete messages libzmq queues per connection before it stops reading
 * that peer's socket (TCP backpressure): with ROUTER_MAX_FRAME, what a peer
 * can make the router buffer below the state machine. An honest peer never
 * needs more: the state reads every message at once. */
#define ROUTER_RCVHWM 16
/* The socket drops a peer sending a frame above this; messages between
 * SS_MAX_MESSAGE and this are read, refused and counted by the state. */
#define ROUTER_MAX_FRAME (2 * (int64_t)SS_MAX_MESSAGE)
#define ROUTER_HANDSHAKE_MS 5000   /* CurveZMQ: a client's handshake must be done by then */
#define ROUTER_MON_EVENTS (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
/* A refused client reconnects every 100 ms: one line per kind of failure
 * and side at most this often, with the count of those not logged. */
#define HS_LOG_EVERY_MS 10000
/* Identities under CurveZMQ: lines logged about impostors and role
 * refusals (one per key among the last ID_RECENT keys), and peer ids bound
 * to the first key that joined with them. */
#define ID_LOG_LIMIT 100
#define ID_RECENT 64
#define ID_BIND_MAX 65536

typedef struct {
    uint64_t peer;
    uint8_t key[32];
} id_binding;

struct ss_router {
    void *sock[2];                       /* SS_SIDE_FRONTEND, SS_SIDE_BACKEND */
    char endpoint[2][256];
    int tick_ms;
    int linger_ms;
    ss_router_state_t *st;
    zmq_msg_t in[2 + SS_ROUTER_MAX_PARTS];   /* routing id, frames, surplus */
    ss_curve_zap_t *zap;                 /* CurveZMQ: the ZAP handler, or NULL */
    void *mon[2];                        /* CurveZMQ: handshake monitors (may be NULL) */
    uint64_t hs_refused;                 /* handshakes failed before ZAP */
    struct {
        int64_t at;                      /* last line logged (0: none yet) */
        uint64_t quiet;                  /* failures since, not logged */
    } hs_log[2][3];                      /* per side: mismatch, decryption, other */
    uint64_t impostors, role_refused;    /* CurveZMQ: messages dropped (ss_router_stats) */
    uint64_t id_nlog;                    /* log limiter of both */
    uint8_t id_recent[ID_RECENT][32];    /* keys already named in the log */
    size_t id_nrecent, id_next;
    id_binding *bind;                    /* sorted by peer id */
    size_t nbind, capbind;
};

void ss_router_opts_init(ss_router_opts *o)
{
    memset(o, 0, sizeof *o);
    o->name = "router";
    o->stream = SS_DEFAULT_STREAM;
    o->max_bytes = (size_t)64 << 20;
    o->max_window = SS_DEFAULT_MAX_WINDOW;
    o->heartbeat_ms = ss_env_int("SS_HEARTBEAT_MS", SS_DEFAULT_HEARTBEAT_MS);
    o->liveness_ms = ss_env_int("SS_LIVENESS_MS", SS_DEFAULT_LIVENESS_MS);
    o->linger_ms = 0;
}

int ss_router_send_frames(void *sock, const uint8_t *ident, size_t idlen, const ss_link_t *link,
                          zmq_msg_t *stream)
{
    uint8_t lb[SS_LINK_SIZE];
    ss_link_encode(link, lb);
    if (zmq_send(sock, ident, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(sock, lb, sizeof lb, ZMQ_DONTWAIT | (stream ? ZMQ_SNDMORE : 0)) < 0)
        return -1;
    for (int i = 0; stream && i < 3; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_copy(&m, &stream[i]) != 0
            || zmq_msg_send(&m, sock, ZMQ_DONTWAIT | (i < 2 ? ZMQ_SNDMORE : 0)) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
    }
    return 0;
}

/* The state's send callback. ROUTER_MANDATORY turns a peer without a
 * connection into EHOSTUNREACH; SNDHWM 0 means EAGAIN never happens (what
 * is queued is bounded by credit and windows, and shares the held frames). */
static int sock_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                     const ss_link_t *link, zmq_msg_t *stream)
{
    ss_router_t *r = arg;
    return ss_router_send_frames(r->sock[side], ident, idlen, link, stream);
}

/* ---- identities under CurveZMQ (docs/curve.md, "Identities", "Roles") ---- */

/* Log a line about the client with `key` the first time among the recent
 * keys (and at most ID_LOG_LIMIT lines in all). */
static void id_log(ss_router_t *r, const uint8_t key[32], const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void id_log(ss_router_t *r, const uint8_t key[32], const char *fmt, ...)
{
    for (size_t i = 0; i < r->id_nrecent; i++)
        if (memcmp(r->id_recent[i], key, 32) == 0)
            return;
    memcpy(r->id_recent[r->id_next], key, 32);
    r->id_next = (r->id_next + 1) % ID_RECENT;
    if (r->id_nrecent < ID_RECENT)
        r->id_nrecent++;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ss_log_limited(&r->id_nlog, ID_LOG_LIMIT, "%s", line);
}

static int bind_cmp(const void *x, const void *y)
{
    uint64_t a = ((const id_binding *)x)->peer, b = ((const id_binding *)y)->peer;
    return a < b ? -1 : a > b;
}

/* Bind `peer` to `key` on its first JOIN. 1 when it is (or now is) bound
 * to that key; 0 when another key holds it (*other receives that key) or
 * the table is full (*other is left alone). */
static int id_bind(ss_router_t *r, uint64_t peer, const uint8_t key[32], uint8_t other[32],
                   int *full)
{
    id_binding probe = { .peer = peer };
    id_binding *b = r->nbind ? bsearch(&probe, r->bind, r->nbind, sizeof *b, bind_cmp) : NULL;
    *full = 0;
    if (b) {
        if (memcmp(b->key, key, 32) == 0)
            return 1;
        memcpy(other, b->key, 32);
        return 0;
    }
    if (r->nbind == r->capbind) {
        size_t cap = r->capbind ? 2 * r->capbind : 64;
        id_binding *nb = cap <= ID_BIND_MAX ? realloc(r->bind, cap * sizeof *nb) : NULL;
        if (!nb) {
            *full = 1;
            return 0;
        }
        r->bind = nb;
        r->capbind = cap;
    }
    size_t at = 0;
    while (at < r->nbind && r->bind[at].peer < peer)   /* joins are rare: linear is enough */
        at++;
    memmove(&r->bind[at + 1], &r->bind[at], (r->nbind - at) * sizeof *r->bind);
    r->bind[at].peer = peer;
    memcpy(r->bind[at].key, key, 32);
    r->nbind++;
    return 1;
}

/* The lineage of a DATA PUBLISH, as the roles see it: 1 with *only_self
 * and *names_self set; 0 when the message is not a well-formed DATA batch
 * (then the state refuses or handles it: an EOS has no lineage to check). */
static int publish_lineage(zmq_msg_t *frames, size_t n, uint64_t self, int *only_self,
                           int *names_self)
{
    ss_header_t h;
    size_t count;
    if (n != 4
        || ss_header_decode(zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), &h) != SS_OK
        || h.type != SS_MSG_DATA
        || ss_lineage_check(zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2]), &count) != SS_OK)
        return 0;
    const void *lin = zmq_msg_data(&frames[2]);
    *names_self = 0;
    for (size_t i = 0; i < count && !*names_self; i++)
        *names_self = ss_lineage_get(lin, i).source == self;
    *only_self = count == 1 && *names_self;
    return 1;
}

/* The client's address, for a log line (libzmq's connection metadata). */
static const char *peer_address(zmq_msg_t *m)
{
    const char *a = zmq_msg_gets(m, "Peer-Address");
    return a ? a : "an unknown address";
}

/* Under CurveZMQ, before the state sees a message: the routing id must
 * carry the key of the session it came on (the ZAP handler's user id, on
 * every frame); a JOIN must name the routing id's peer id, a peer id no
 * other key joined with, and a side the key's roles allow; a PUBLISH of a
 * source or worker key must have a lineage its roles allow. 1 to pass the
 * message on; 0 when it was dropped here (logged, counted). */
static int curve_admit(ss_router_t *r, int side, size_t n)
{
    const uint8_t *rid = zmq_msg_data(&r->in[0]);
    size_t ridlen = zmq_msg_size(&r->in[0]);
    const char *user = n ? zmq_msg_gets(&r->in[1], "User-Id") : NULL;
    const char *where = side == SS_SIDE_FRONTEND ? "frontend" : "backend";
    uint8_t key[32];
    if (!user || !ss_curve_key_valid(user) || !zmq_z85_decode(key, user)) {
        r->impostors++;   /* not a session the ZAP handler admitted: cannot happen */
        ss_log_limited(&r->id_nlog, ID_LOG_LIMIT, "dropped a message on the %s from %s: no "
                       "CurveZMQ user id", where, peer_address(&r->in[1]));
        return 0;
    }
    int own = ridlen == SS_ROUTING_ID_CURVE_SIZE && rid[0] == SS_ROUTING_ID_PREFIX
              && memcmp(rid + SS_ROUTING_ID_SIZE, key, 32) == 0;
    if (!own) {
        char claimed[96], other[SS_Z85_KEY];
        if (ridlen >= SS_ROUTING_ID_SIZE && rid[0] == SS_ROUTING_ID_PREFIX) {
            int len = snprintf(claimed, sizeof claimed, "the routing id of peer %016llx",
                               (unsigned long long)ss_get_u64(rid + 1));
            if (ridlen == SS_ROUTING_ID_CURVE_SIZE) {
                zmq_z85_encode(other, rid + SS_ROUTING_ID_SIZE, 32);
                snprintf(claimed + len, sizeof claimed - (size_t)len, " of key %s", other);
            } else {
                snprintf(claimed + len, sizeof claimed - (size_t)len, " without its key");
            }
        } else {
            snprintf(claimed, sizeof claimed, "a routing id of %zu bytes not in our format",
                     ridlen);
        }
        r->impostors++;
        id_log(r, key, "impostor: dropping every message on the %s from the CurveZMQ client "
               "with public key %s at %s: it claims %s", where, user,
               peer_address(&r->in[1]), claimed);
        return 0;
    }
    ss_link_t l;
    if (ss_link_decode(zmq_msg_data(&r->in[1]), zmq_msg_size(&r->in[1]), &l) != SS_OK)
        return 1;   /* the state refuses it */
    uint64_t self = ss_get_u64(rid + 1);
    unsigned roles = 0;
    char rs[64];
    ss_curve_allow_roles(ss_curve_zap_allow(r->zap), key, &roles);
    if (l.kind == SS_LINK_JOIN) {
        uint8_t other[32];
        int full;
        if (l.tag != self) {
            r->impostors++;
            id_log(r, key, "impostor: dropping a JOIN on the %s from the CurveZMQ client with "
                   "public key %s at %s: it names peer id %016llx, its routing id %016llx",
                   where, user, peer_address(&r->in[1]), (unsigned long long)l.tag,
                   (unsigned long long)self);
            return 0;
        }
        int want_producer = l.n == SS_ROLE_PRODUCER, want_consumer = l.n == SS_ROLE_CONSUMER;
        if ((want_producer && !ss_curve_roles_may_produce(roles))
            || (want_consumer && !ss_curve_roles_may_consume(roles))) {
            r->role_refused++;
            id_log(r, key, "refused a JOIN as %s on the %s from the CurveZMQ client with public "
                   "key %s at %s (peer %016llx): its roles in the allow-list are %s",
                   want_producer ? "producer" : "consumer", where, user, peer_address(&r->in[1]),
                   (unsigned long long)self, ss_curve_roles_str(roles, rs, sizeof rs));
            return 0;
        }
        if (!id_bind(r, self, key, other, &full)) {
            char oz[SS_Z85_KEY];
            r->impostors++;
            if (full) {
                ss_log_limited(&r->id_nlog, ID_LOG_LIMIT, "refused a JOIN from the CurveZMQ "
                               "client with public key %s: %d peer ids joined already", user,
                               ID_BIND_MAX);
                return 0;
            }
            zmq_z85_encode(oz, other, 32);
            id_log(r, key, "impostor: dropping a JOIN on the %s from the CurveZMQ client with "
                   "public key %s at %s: peer id %016llx joined with key %s", where, user,
                   peer_address(&r->in[1]), (unsigned long long)self, oz);
            return 0;
        }
        return 1;
    }
    int only_self, names_self;
    if (l.kind == SS_LINK_PUBLISH && side == SS_SIDE_FRONTEND
        && !ss_curve_roles_may_publish(roles, 0, 1)
        && publish_lineage(&r->in[1], n, self, &only_self, &names_self)
        && !ss_curve_roles_may_publish(roles, only_self, names_self)) {
        char why[256];
        r->role_refused++;
        snprintf(why, sizeof why, "its key %s has the roles %s, which may not publish a batch "
                 "whose lineage %s", user, ss_curve_roles_str(roles, rs, sizeof rs),
                 names_self ? (only_self ? "names itself" : "names itself and other batches")
                            : "does not name itself");
        ss_router_state_refuse_publish(r->st, side, rid, ridlen, l.tag, why, ss_now_ms());
        return 0;
    }
    return 1;
}

/* Read one message from a side and hand it to the state. 1 when one was
 * read, 0 when none was pending, -1 on a socket error (errno set). */
static int read_one(ss_router_t *r, int side)
{
    void *sock = r->sock[side];
    if (zmq_msg_recv(&r->in[0], sock, ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    size_t n = 0;
    int more = zmq_msg_more(&r->in[0]);
    while (more) {
        zmq_msg_t *m = &r->in[1 + (n < SS_ROUTER_MAX_PARTS ? n : SS_ROUTER_MAX_PARTS)];
        if (zmq_msg_recv(m, sock, 0) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        more = zmq_msg_more(m);
        if (n <= SS_ROUTER_MAX_PARTS)
            n++;
    }
    if (r->zap && !curve_admit(r, side, n))
        return 1;
    ss_router_state_input(r->st, side, zmq_msg_data(&r->in[0]), zmq_msg_size(&r->in[0]),
                          &r->in[1], n, ss_now_ms());
    return 1;
}

/* A handshake failure on a side's socket, reported by its monitor (which
 * does not say who the client was). A ZAP refusal (HANDSHAKE_FAILED_AUTH)
 * is the ZAP handler's to log and count. */
static void handshake_failed(ss_router_t *r, int side, uint16_t event, uint32_t value)
{
    const char *why;
    char buf[64];
    int kind = 2;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
        && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        why = "it does not use CurveZMQ (set SS_CURVE_KEY and SS_CURVE_SERVER for it)";
        kind = 0;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
               && value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) {
        why = "its CurveZMQ handshake does not decrypt (is its SS_CURVE_SERVER this router's "
              "public key?)";
        kind = 1;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        snprintf(buf, sizeof buf, "handshake protocol error 0x%08x", (unsigned)value);
        why = buf;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        why = "the handshake did not complete (the client hung up or timed out: does it use "
              "CurveZMQ with this router's public key?)";
    } else {
        return;
    }
    r->hs_refused++;
    int64_t now = ss_now_ms();
    if (r->hs_log[side][kind].at && now - r->hs_log[side][kind].at < HS_LOG_EVERY_MS) {
        r->hs_log[side][kind].quiet++;
        return;
    }
    char more[80] = "";
    if (r->hs_log[side][kind].quiet)
        snprintf(more, sizeof more, " (%llu more like it in the last %lld s)",
                 (unsigned long long)r->hs_log[side][kind].quiet,
                 (long long)(now - r->hs_log[side][kind].at) / 1000);
    r->hs_log[side][kind].at = now;
    r->hs_log[side][kind].quiet = 0;
    ss_log("refused a client on the %s (%s): %s%s",
           side == SS_SIDE_FRONTEND ? "frontend" : "backend", r->endpoint[side], why, more);
}

/* CurveZMQ, before any socket exists: the router's key pair into pub/sec,
 * and the ZAP handler (libzmq lets every client in when none is bound). */
static ss_err curve_begin(ss_router_t *r, void *zctx, const ss_router_opts *o,
                          char pub[SS_Z85_KEY], char sec[SS_Z85_KEY], char *err, size_t errlen)
{
    char why[1024];
    ss_err rc = ss_curve_load_secret(o->curve_key, pub, sec, why, sizeof why);
    if (rc != SS_OK) {
        snprintf(err, errlen, "the router's CurveZMQ key: %s", why);
        return rc;
    }
    rc = ss_curve_zap_new(zctx, o->curve_allow, &r->zap, why, sizeof why);
    if (rc != SS_OK)
        snprintf(err, errlen, "the router's CurveZMQ allow-list: %s", why);
    return rc;
}

/* CurveZMQ on one socket, before it binds: server key, handshake bound,
 * monitor of failed handshakes (diagnosis only: may stay NULL). */
static ss_err curve_socket(ss_router_t *r, void *zctx, int side, const char *sec,
                           char *err, size_t errlen)
{
    char why[1024];
    int ivl = ROUTER_HANDSHAKE_MS;
    ss_err rc = ss_curve_server_setup(r->sock[side], sec, why, sizeof why);
    if (rc == SS_OK && zmq_setsockopt(r->sock[side], ZMQ_HANDSHAKE_IVL, &ivl, sizeof ivl) != 0) {
        snprintf(why, sizeof why, "cannot set the handshake interval: %s", zmq_strerror(errno));
        rc = SS_ERR_IO;
    }
    if (rc != SS_OK) {
        snprintf(err, errlen, "the router's %s: %s", side ? "backend" : "frontend", why);
        return rc;
    }
    r->mon[side] = ss_curve_monitor_open(zctx, r->sock[side], ROUTER_MON_EVENTS, why, sizeof why);
    return SS_OK;
}

/* The options a router cannot run with: SS_ERR_USAGE with a message. */
static ss_err check_opts(const ss_router_opts *o, int has_key, int has_allow,
                         char *err, size_t errlen)
{
    if (!o->frontend || !*o->frontend || !o->backend || !*o->backend) {
        ss_say(err, errlen, "the router needs a frontend and a backend address");
        return SS_ERR_USAGE;
    }
    if (has_key != has_allow) {
        ss_say(err, errlen, "CurveZMQ on the router needs both its secret key file "
               "(--curve-key) and the allow-list of client keys (--curve-allow); only %s "
               "was given", has_key ? "the key" : "the allow-list");
        return SS_ERR_USAGE;
    }
    if (o->max_window == 0 || o->max_window > SS_MAX_WINDOW) {
        ss_say(err, errlen, "the largest producer window must be from 1 to %u, not %u",
               (unsigned)SS_MAX_WINDOW, o->max_window);
        return SS_ERR_USAGE;
    }
    if (o->heartbeat_ms <= 0 || o->liveness_ms <= o->heartbeat_ms || o->linger_ms < 0) {
        ss_say(err, errlen, "heartbeat (%d ms) must be positive and below liveness (%d ms)",
               o->heartbeat_ms, o->liveness_ms);
        return SS_ERR_USAGE;
    }
    return SS_OK;
}

/* Create, configure (CurveZMQ when sec is not NULL) and bind one side's
 * socket; r->endpoint[side] receives the address actually bound. */
static ss_err open_side(ss_router_t *r, void *zctx, int side, const char *addr,
                        const char *sec, char *err, size_t errlen)
{
    const char *what = side == SS_SIDE_FRONTEND ? "frontend" : "backend";
    int one = 1, zero = 0, hwm = ROUTER_RCVHWM, linger = ROUTER_LINGER_MS;
    int64_t maxmsg = ROUTER_MAX_FRAME;
    void *sock = r->sock[side] = zmq_socket(zctx, ZMQ_ROUTER);
    if (!sock) {
        ss_say(err, errlen, "cannot create the %s socket: %s", what, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    if (zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0
        || zmq_setsockopt(sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one) != 0
        || zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0
        || zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof zero) != 0
        || zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0
        || zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        ss_say(err, errlen, "cannot set %s socket options: %s", what, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    ss_err rc;
    if (sec && (rc = curve_socket(r, zctx, side, sec, err, errlen)) != SS_OK)
        return rc;
    if (zmq_bind(sock, addr) != 0) {
        ss_say(err, errlen, "cannot bind the %s to %s: %s", what, addr, zmq_strerror(errno));
        return SS_ERR_IO;
    }
    size_t len = sizeof r->endpoint[side];
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, r->endpoint[side], &len) != 0)
        snprintf(r->endpoint[side], sizeof r->endpoint[side], "%s", addr);
    return SS_OK;
}

ss_err ss_router_new(void *zctx, const ss_router_opts *o, ss_router_t **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    int has_key = o->curve_key && *o->curve_key, has_allow = o->curve_allow && *o->curve_allow;
    ss_err rc = check_opts(o, has_key, has_allow, err, errlen);
    if (rc != SS_OK)
        return rc;
    ss_router_t *r = calloc(1, sizeof *r);
    if (!r) {
        ss_say(err, errlen, "out of memory creating the router");
        return SS_ERR_NOMEM;
    }
    for (size_t i = 0; i < sizeof r->in / sizeof r->in[0]; i++)
        zmq_msg_init(&r->in[i]);
    r->tick_ms = o->heartbeat_ms / 4 > 0 ? o->heartbeat_ms / 4 : 1;
    if (r->tick_ms > 100)
        r->tick_ms = 100;
    r->linger_ms = o->linger_ms;
    char pub[SS_Z85_KEY], sec[SS_Z85_KEY] = "";
    if (has_key && (rc = curve_begin(r, zctx, o, pub, sec, err, errlen)) != SS_OK)
        goto fail;
    if ((rc = open_side(r, zctx, SS_SIDE_FRONTEND, o->frontend, has_key ? sec : NULL, err,
                        errlen)) != SS_OK
        || (rc = open_side(r, zctx, SS_SIDE_BACKEND, o->backend, has_key ? sec : NULL, err,
                           errlen)) != SS_OK)
        goto fail;
    if (ss_router_state_new(o, ss_random_id(), sock_send, r, &r->st) != SS_OK) {
        ss_say(err, errlen, "out of memory creating the router");
        rc = SS_ERR_NOMEM;
        goto fail;
    }
    sodium_memzero(sec, sizeof sec);
    if (has_key)
        ss_log("CurveZMQ: server public key %s; %zu client keys allowed (%s)", pub,
               ss_curve_zap_allowed(r->zap), o->curve_allow);
    *out = r;
    return SS_OK;
fail:
    sodium_memzero(sec, sizeof sec);
    ss_router_destroy(&r);
    return rc;
}

const char *ss_router_frontend(const ss_router_t *r)
{
    return r->endpoint[SS_SIDE_FRONTEND];
}

const char *ss_router_backend(const ss_router_t *r)
{
    return r->endpoint[SS_SIDE_BACKEND];
}

/* Alternate between the sides, up to ROUTER_BURST messages from each, so
 * that neither starves the other. SS_OK, or the error that ends the run. */
static ss_err read_rounds(ss_router_t *r)
{
    for (int round = 0; round < ROUTER_BURST; round++) {
        int got = 0;
        for (int side = 0; side < 2; side++) {
            int rc = read_one(r, side);
            if (rc < 0) {
                if (errno == ETERM)
                    return SS_ERR_CLOSED;
                ss_log("receiving on the %s: %s", side ? "backend" : "frontend",
                       zmq_strerror(errno));
                return SS_ERR_IO;
            }
            got += rc;
        }
        if (!got)
            break;
    }
    return SS_OK;
}

/* What the loop polls: the two router sockets, then (CurveZMQ) the ZAP
 * handler at index 2 and each side's monitor at mon_at[side] (-1: none).
 * Returns the number of items. */
static int poll_items(ss_router_t *r, zmq_pollitem_t items[5], int mon_at[2])
{
    items[0] = (zmq_pollitem_t){ r->sock[SS_SIDE_FRONTEND], 0, ZMQ_POLLIN, 0 };
    items[1] = (zmq_pollitem_t){ r->sock[SS_SIDE_BACKEND], 0, ZMQ_POLLIN, 0 };
    int n = 2;
    if (r->zap)
        items[n++] = (zmq_pollitem_t){ ss_curve_zap_socket(r->zap), 0, ZMQ_POLLIN, 0 };
    for (int side = 0; side < 2; side++) {
        mon_at[side] = -1;
        if (r->mon[side]) {
            mon_at[side] = n;
            items[n++] = (zmq_pollitem_t){ r->mon[side], 0, ZMQ_POLLIN, 0 };
        }
    }
    return n;
}

/* After a poll: ZAP requests, then failed handshakes the monitors report. */
static ss_err serve_curve(ss_router_t *r, const zmq_pollitem_t *items, const int mon_at[2])
{
    if (r->zap && (items[2].revents & ZMQ_POLLIN)) {
        ss_err e = ss_curve_zap_serve(r->zap);
        if (e != SS_OK)
            return e;
    }
    for (int side = 0; side < 2; side++) {
        uint16_t event;
        uint32_t value;
        if (mon_at[side] < 0 || !(items[mon_at[side]].revents & ZMQ_POLLIN))
            continue;
        while (ss_curve_monitor_read(r->mon[side], &event, &value) > 0)
            handshake_failed(r, side, event, value);
    }
    return SS_OK;
}

ss_err ss_router_run(ss_router_t *r, volatile int *stop)
{
    zmq_pollitem_t items[5];
    int mon_at[2];
    int nitems = poll_items(r, items, mon_at);
    int64_t next_tick = 0, done_at;
    for (;;) {
        int64_t now = ss_now_ms();
        int done = ss_router_state_done(r->st, &done_at);
        if (done && now >= done_at + r->linger_ms)
            return SS_OK;
        if (stop && *stop) {
            if (done)
                return SS_OK;   /* only the linger was cut short */
            ss_log("stopped before end of stream");
            return SS_ERR_CLOSED;
        }
        int64_t wake = next_tick;
        if (done && done_at + r->linger_ms < wake)
            wake = done_at + r->linger_ms;
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (zmq_poll(items, nitems, timeout) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ETERM)
                return SS_ERR_CLOSED;
            ss_log("polling the router sockets: %s", zmq_strerror(errno));
            return SS_ERR_IO;
        }
        ss_err e = read_rounds(r);
        if (e == SS_OK)
            e = serve_curve(r, items, mon_at);
        if (e != SS_OK)
            return e;
        now = ss_now_ms();
        if (now >= next_tick) {
            ss_router_state_tick(r->st, now);
            next_tick = now + r->tick_ms;
        }
    }
}

void ss_router_get_stats(const ss_router_t *r, ss_router_stats *s)
{
    ss_router_state_stats(r->st, s);
    s->auth_refused = r->hs_refused + (r->zap ? ss_curve_zap_refused(r->zap) : 0);
    s->impostors = r->impostors;
    s->role_refused = r->role_refused;
}

void ss_router_destroy(ss_router_t **rp)
{
    if (!rp || !*rp)
        return;
    ss_router_t *r = *rp;
    ss_router_state_destroy(&r->st);
    for (int side = 0; side < 2; side++) {
        ss_curve_monitor_close(r->sock[side], &r->mon[side]);
        if (r->sock[side])
            zmq_close(r->sock[side]);
    }
    ss_curve_zap_destroy(&r->zap);   /* after the sockets it serves */
    for (size_t i = 0; i < sizeof r->in / sizeof r->in[0]; i++)
        zmq_msg_close(&r->in[i]);
    free(r->bind);
    free(r);
    *rp = NULL;
}
