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

/* The state's send callback. ROUTER_MANDATORY turns a peer without a
 * connection into EHOSTUNREACH; SNDHWM 0 means EAGAIN never happens (what
 * is queued is bounded by credit and windows, and shares the held frames). */
static int sock_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                     const ss_link_t *link, zmq_msg_t *stream)
{
    ss_router_t *r = arg;
    void *sock = r->sock[side];
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
    free(r);
    *rp = NULL;
}
