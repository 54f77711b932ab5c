/*
 * test_router.c - the router (lib/net/router.c) and the links (lib/net/link.c).
 *
 * Part 1 drives the protocol state machine (router_state.h) without sockets:
 * a recorder stands for the sockets and the clock is moved by hand, so every
 * rule of docs/protocol.md is checked deterministically.
 * Part 2 runs a real router thread on tcp://127.0.0.1:* with producer and
 * consumer links in threads (and one consumer in a child process that is
 * killed), plus raw DEALER sockets sending what a well-behaved link never
 * would. Timeouts are short (heartbeat 50 ms, liveness 400 ms).
 */
#include "test.h"

#include "net/link.h"
#include "net/router.h"
#include "net/router_state.h"

#include <errno.h>
#include <msgpack.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define STREAM 0x5353abcdu
#define HDR SS_HEADER_SIZE
#define LIN SS_LINEAGE_ENTRY

/* ------------------------------------------------------------------------
 * Part 1: the state machine with a recorder
 * ------------------------------------------------------------------------ */

typedef struct {
    int side;
    uint64_t peer;          /* id decoded from the routing id */
    ss_link_t link;
    int has_stream;
    ss_header_t hdr;
    size_t nids;
    ss_lineage_id ids[4];
    uint8_t *payload;
    size_t plen;
} sent_t;

typedef struct {
    ss_router_state_t *s;
    sent_t *out;
    size_t nout, capout;
    uint64_t unreachable[8];
    size_t nunreachable;
    int64_t now;
    uint64_t self;
} fx_t;

static void make_ident(uint64_t id, uint8_t ident[SS_ROUTING_ID_SIZE])
{
    ident[0] = SS_ROUTING_ID_PREFIX;
    ss_put_u64(ident + 1, id);
}

static int rec_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                    const ss_link_t *link, zmq_msg_t *stream)
{
    fx_t *f = arg;
    assert_int_equal(idlen, SS_ROUTING_ID_SIZE);
    uint64_t peer = ss_get_u64(ident + 1);
    for (size_t i = 0; i < f->nunreachable; i++)
        if (f->unreachable[i] == peer)
            return -1;
    if (f->nout == f->capout) {
        f->capout = f->capout ? 2 * f->capout : 256;
        f->out = realloc(f->out, f->capout * sizeof *f->out);
        assert_non_null(f->out);
    }
    sent_t *m = &f->out[f->nout++];
    memset(m, 0, sizeof *m);
    m->side = side;
    m->peer = peer;
    m->link = *link;
    if (stream) {
        m->has_stream = 1;
        assert_int_equal(ss_header_decode(zmq_msg_data(&stream[0]), zmq_msg_size(&stream[0]),
                                          &m->hdr), SS_OK);
        assert_int_equal(ss_lineage_check(zmq_msg_data(&stream[1]), zmq_msg_size(&stream[1]),
                                          &m->nids), SS_OK);
        for (size_t i = 0; i < m->nids && i < 4; i++)
            m->ids[i] = ss_lineage_get(zmq_msg_data(&stream[1]), i);
        m->plen = zmq_msg_size(&stream[2]);
        m->payload = malloc(m->plen + 1);
        assert_non_null(m->payload);
        memcpy(m->payload, zmq_msg_data(&stream[2]), m->plen);
    }
    return 0;
}

static fx_t *fx_new(size_t max_bytes)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.stream = STREAM;
    o.max_bytes = max_bytes;
    o.heartbeat_ms = 100;
    o.liveness_ms = 1000;
    f->self = 0x5e1f;
    f->now = 10000;
    assert_int_equal(ss_router_state_new(&o, f->self, rec_send, f, &f->s), SS_OK);
    return f;
}

static void fx_free(fx_t *f)
{
    ss_router_state_destroy(&f->s);
    assert_null(f->s);
    for (size_t i = 0; i < f->nout; i++)
        free(f->out[i].payload);
    free(f->out);
    free(f);
}

static ss_router_stats stats(fx_t *f)
{
    ss_router_stats st;
    ss_router_state_stats(f->s, &st);
    return st;
}

/* Deliver a message of n frames from `peer` on `side`. */
static void input(fx_t *f, int side, uint64_t peer, const void *const *frames,
                  const size_t *lens, size_t n)
{
    zmq_msg_t parts[SS_ROUTER_MAX_PARTS + 1];
    ASSERT_UINT_LE(n, SS_ROUTER_MAX_PARTS + 1);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(zmq_msg_init_size(&parts[i], lens[i]), 0);
        if (lens[i])
            memcpy(zmq_msg_data(&parts[i]), frames[i], lens[i]);
    }
    uint8_t ident[SS_ROUTING_ID_SIZE];
    make_ident(peer, ident);
    ss_router_state_input(f->s, side, ident, sizeof ident, parts, n, f->now);
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
}

static void in_link(fx_t *f, int side, uint64_t peer, uint8_t kind, uint16_t flags, uint32_t n,
                    uint64_t tag)
{
    ss_link_t l = { kind, flags, n, tag };
    uint8_t buf[SS_LINK_SIZE];
    ss_link_encode(&l, buf);
    const void *frames[] = { buf };
    size_t lens[] = { sizeof buf };
    input(f, side, peer, frames, lens, 1);
}

static void in_join(fx_t *f, int side, uint64_t peer)
{
    ss_link_t l = { SS_LINK_JOIN, 0, side == SS_SIDE_FRONTEND ? SS_ROLE_PRODUCER : SS_ROLE_CONSUMER,
                    peer };
    uint8_t buf[SS_LINK_SIZE];
    char name[32];
    ss_link_encode(&l, buf);
    snprintf(name, sizeof name, "peer-%llx", (unsigned long long)peer);
    const void *frames[] = { buf, name };
    size_t lens[] = { sizeof buf, strlen(name) };
    input(f, side, peer, frames, lens, 2);
}

#define P(id) in_join(f, SS_SIDE_FRONTEND, id)
#define C(id) in_join(f, SS_SIDE_BACKEND, id)

static void credit(fx_t *f, uint64_t c, uint32_t n)
{
    in_link(f, SS_SIDE_BACKEND, c, SS_LINK_CREDIT, 0, n, 0);
}

static void ack(fx_t *f, uint64_t c, uint64_t tag)
{
    in_link(f, SS_SIDE_BACKEND, c, SS_LINK_ACK, 0, 0, tag);
}

static void heartbeat(fx_t *f, int side, uint64_t peer)
{
    in_link(f, side, peer, SS_LINK_HEARTBEAT, 0, 0, 0);
}

/* PUBLISH a stream message with full control over its frames. */
static void in_publish_raw(fx_t *f, uint64_t prod, uint64_t pubseq, const ss_header_t *h,
                           const ss_lineage_id *ids, size_t nids, const void *payload, size_t plen)
{
    ss_link_t l = { SS_LINK_PUBLISH, 0, 0, pubseq };
    uint8_t lb[SS_LINK_SIZE], hb[HDR], linb[8 * LIN];
    ASSERT_UINT_LE(nids, 8);
    ss_link_encode(&l, lb);
    ss_header_encode(h, hb);
    for (size_t i = 0; i < nids; i++)
        ss_lineage_put(linb, i, ids[i]);
    const void *frames[] = { lb, hb, linb, payload };
    size_t lens[] = { sizeof lb, sizeof hb, nids * LIN, plen };
    input(f, SS_SIDE_FRONTEND, prod, frames, lens, 4);
}

static void in_publish(fx_t *f, uint64_t prod, uint64_t pubseq, const ss_lineage_id *ids,
                       size_t nids, size_t plen)
{
    static uint8_t payload[4096];
    ASSERT_UINT_LE(plen, sizeof payload);
    ss_header_t h = { SS_MSG_DATA, 0, STREAM, prod, pubseq, 1, 0 };
    in_publish_raw(f, prod, pubseq, &h, ids, nids, payload, plen);
}

/* One batch whose lineage is the single id (source, seq). */
static void pub1(fx_t *f, uint64_t prod, uint64_t pubseq, uint64_t source, uint64_t seq)
{
    ss_lineage_id id = { source, seq };
    in_publish(f, prod, pubseq, &id, 1, 100);
}

static void in_eos(fx_t *f, uint64_t prod, uint64_t pubseq, const uint64_t *members, size_t n,
                   const uint64_t *keys, size_t nkeys, int negative)
{
    msgpack_sbuffer sb;
    test_eos_payload(&sb, members, n, keys, nkeys, negative);
    ss_header_t h = { SS_MSG_EOS, 0, STREAM, prod, pubseq, (uint32_t)n, 0 };
    in_publish_raw(f, prod, pubseq, &h, NULL, 0, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* ACK (flags: 0 or SS_LINK_REJECTED) every DELIVER of a batch sent to
 * consumer c at index >= from. */
static void ack_from(fx_t *f, uint64_t c, size_t from, uint16_t flags)
{
    size_t n = f->nout;   /* acknowledging may deliver more: not those */
    for (size_t i = from; i < n; i++)
        if (f->out[i].link.kind == SS_LINK_DELIVER && f->out[i].peer == c && f->out[i].has_stream
            && f->out[i].hdr.type == SS_MSG_DATA)
            in_link(f, SS_SIDE_BACKEND, c, SS_LINK_ACK, flags, 0, f->out[i].link.tag);
}

/* JOIN of producer `peer` declaring `window` in its flags. */
static void in_join_window(fx_t *f, uint64_t peer, uint16_t window)
{
    ss_link_t l = { SS_LINK_JOIN, window, SS_ROLE_PRODUCER, peer };
    uint8_t buf[SS_LINK_SIZE];
    ss_link_encode(&l, buf);
    const void *frames[] = { buf, "windowed" };
    size_t lens[] = { sizeof buf, 8 };
    input(f, SS_SIDE_FRONTEND, peer, frames, lens, 2);
}

static void tick(fx_t *f, int64_t advance)
{
    f->now += advance;
    ss_router_state_tick(f->s, f->now);
}

/* Messages of `kind` sent to `peer` (0: anyone) at index >= from. */
static size_t count_sent(fx_t *f, size_t from, uint8_t kind, uint64_t peer)
{
    size_t n = 0;
    for (size_t i = from; i < f->nout; i++)
        if (f->out[i].link.kind == kind && (!peer || f->out[i].peer == peer))
            n++;
    return n;
}

static sent_t *nth_sent(fx_t *f, size_t from, uint8_t kind, uint64_t peer, size_t k)
{
    for (size_t i = from; i < f->nout; i++)
        if (f->out[i].link.kind == kind && (!peer || f->out[i].peer == peer) && k-- == 0)
            return &f->out[i];
    fail_msg("no message #%zu of kind %u to %llx", k, kind, (unsigned long long)peer);
    return NULL;
}

/* Members listed in an EOS payload, and how many stats entries it has. */
static size_t eos_members(const sent_t *m, uint64_t *out, size_t max, size_t *nstats)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0, n = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)m->payload, m->plen, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, m->plen);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    *nstats = (size_t)-1;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        msgpack_object k = u.data.via.map.ptr[i].key, v = u.data.via.map.ptr[i].val;
        assert_int_equal(k.type, MSGPACK_OBJECT_STR);
        if (k.via.str.size == 7 && !memcmp(k.via.str.ptr, "members", 7)) {
            assert_int_equal(v.type, MSGPACK_OBJECT_ARRAY);
            for (uint32_t j = 0; j < v.via.array.size && n < max; j++) {
                assert_int_equal(v.via.array.ptr[j].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
                out[n++] = v.via.array.ptr[j].via.u64;
            }
        } else if (k.via.str.size == 5 && !memcmp(k.via.str.ptr, "stats", 5)) {
            assert_int_equal(v.type, MSGPACK_OBJECT_MAP);
            *nstats = v.via.map.size;
        }
    }
    msgpack_unpacked_destroy(&u);
    return n;
}

enum { P1 = 0x101, P2 = 0x102, C1 = 0x201, C2 = 0x202, C3 = 0x203 };

static void join_and_roles(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    sent_t *w = nth_sent(f, 0, SS_LINK_WELCOME, P1, 0);
    assert_int_equal(w->side, SS_SIDE_FRONTEND);
    assert_int_equal(w->link.tag, f->self);
    C(C1);
    assert_int_equal(nth_sent(f, 0, SS_LINK_WELCOME, C1, 0)->side, SS_SIDE_BACKEND);
    /* A consumer's JOIN on the frontend is refused, and gets no WELCOME. */
    in_link(f, SS_SIDE_FRONTEND, C2, SS_LINK_JOIN, 0, SS_ROLE_CONSUMER, C2);
    assert_int_equal(count_sent(f, 0, SS_LINK_WELCOME, C2), 0);
    assert_int_equal(stats(f).refused, 1);
    /* A stranger's heartbeat or ACK is ignored, not refused. */
    heartbeat(f, SS_SIDE_BACKEND, C3);
    ack(f, C3, 1);
    ss_router_stats st = stats(f);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.producers, 1);
    assert_int_equal(st.consumers, 1);
    fx_free(f);
}

static void heartbeats_when_idle(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    size_t mark = f->nout;
    tick(f, 50);
    assert_int_equal(count_sent(f, mark, SS_LINK_HEARTBEAT, P1), 0);
    tick(f, 50);
    assert_int_equal(count_sent(f, mark, SS_LINK_HEARTBEAT, P1), 1);
    tick(f, 50);
    assert_int_equal(count_sent(f, mark, SS_LINK_HEARTBEAT, P1), 1);
    fx_free(f);
}

static void dispatch_needs_credit(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    C(C2);
    for (uint64_t i = 0; i < 3; i++)
        pub1(f, P1, i, P1, i);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 3);
    for (uint64_t i = 0; i < 3; i++)
        assert_int_equal(nth_sent(f, 0, SS_LINK_RECEIPT, P1, i)->link.tag, i);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 0);
    credit(f, C1, 2);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 2);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C2), 0);
    credit(f, C2, 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C2), 1);
    /* Each batch to exactly one consumer, in queue order, with fresh tags. */
    int seen[3] = { 0 };
    uint64_t tags[3];
    for (size_t k = 0; k < 3; k++) {
        sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, 0, k);
        assert_int_equal(d->nids, 1);
        assert_int_equal(d->ids[0].seq, k);
        assert_int_equal(d->link.flags, 0);
        seen[d->ids[0].seq]++;
        tags[k] = d->link.tag;
    }
    ASSERT_INT_EQ(seen[0], 1);
    ASSERT_INT_EQ(seen[1], 1);
    ASSERT_INT_EQ(seen[2], 1);
    ASSERT_INT_NE(tags[0], tags[1]);
    ASSERT_INT_NE(tags[1], tags[2]);
    ASSERT_INT_NE(tags[0], tags[2]);
    /* Nobody has credit: the fourth waits. */
    pub1(f, P1, 3, P1, 3);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 3);
    credit(f, C1, 1);
    sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, C1, 2);
    assert_int_equal(d->ids[0].seq, 3);
    ss_router_stats st = stats(f);
    assert_int_equal(st.batches_in, 4);
    assert_int_equal(st.batches_out, 4);
    fx_free(f);
}

static void dispatch_is_fair(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    C(C2);
    C(C3);
    credit(f, C1, 5);
    credit(f, C2, 5);
    credit(f, C3, 5);
    for (uint64_t i = 0; i < 15; i++)
        pub1(f, P1, i, P1, i);
    static const uint64_t order[3] = { C1, C2, C3 };
    for (size_t k = 0; k < 15; k++)
        assert_int_equal(nth_sent(f, 0, SS_LINK_DELIVER, 0, k)->peer, order[k % 3]);
    /* The one that waited longest goes first: C2 got credit before C1. */
    size_t mark = f->nout;
    credit(f, C2, 1);
    credit(f, C1, 1);
    pub1(f, P1, 15, P1, 15);
    assert_int_equal(nth_sent(f, mark, SS_LINK_DELIVER, 0, 0)->peer, C2);
    pub1(f, P1, 16, P1, 16);
    assert_int_equal(nth_sent(f, mark, SS_LINK_DELIVER, 0, 1)->peer, C1);
    fx_free(f);
}

static void ack_releases(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t one = HDR + LIN + 100;
    P(P1);
    C(C1);
    credit(f, C1, 10);
    for (uint64_t i = 0; i < 3; i++)
        pub1(f, P1, i, P1, i);
    assert_int_equal(stats(f).bytes_held, 3 * one);
    uint64_t t0 = nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag;
    ack(f, C1, t0);
    assert_int_equal(stats(f).bytes_held, 2 * one);
    ack(f, C1, t0);          /* twice: ignored */
    ack(f, C1, 999999);      /* unknown: ignored */
    ack(f, C2, nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag);   /* not a member */
    assert_int_equal(stats(f).bytes_held, 2 * one);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 2)->link.tag);
    ss_router_stats st = stats(f);
    assert_int_equal(st.bytes_held, 0);
    assert_int_equal(st.bytes_held_max, 3 * one);
    assert_int_equal(st.refused, 0);
    fx_free(f);
}

static void dead_consumer_requeues_at_head(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    C(C2);
    credit(f, C1, 3);
    for (uint64_t i = 0; i < 3; i++)
        pub1(f, P1, i, P1, i);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag);
    uint64_t stale = nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag;
    pub1(f, P1, 3, P1, 3);                  /* queued: nobody has credit */
    tick(f, 600);
    assert_int_equal(stats(f).consumers, 2); /* not yet */
    f->now += 500;
    heartbeat(f, SS_SIDE_FRONTEND, P1);
    heartbeat(f, SS_SIDE_BACKEND, C2);
    tick(f, 0);                             /* C1 silent for 1100 ms > 1000 */
    ss_router_stats st = stats(f);
    assert_int_equal(st.consumers, 1);
    assert_int_equal(st.producers, 1);
    assert_int_equal(st.redelivered, 2);
    size_t mark = f->nout;
    credit(f, C2, 3);
    static const struct { uint64_t seq; uint16_t flags; } want[] = {
        { 1, SS_LINK_REDELIVERED }, { 2, SS_LINK_REDELIVERED }, { 3, 0 },
    };
    for (size_t k = 0; k < 3; k++) {
        sent_t *d = nth_sent(f, mark, SS_LINK_DELIVER, C2, k);
        assert_int_equal(d->ids[0].seq, want[k].seq);
        assert_int_equal(d->link.flags, want[k].flags);
    }
    /* The dead consumer's late ACK changes nothing. */
    uint64_t held = stats(f).bytes_held;
    ack(f, C1, stale);
    assert_int_equal(stats(f).bytes_held, held);
    /* Joining again makes a new member. */
    mark = f->nout;
    C(C1);
    assert_int_equal(count_sent(f, mark, SS_LINK_WELCOME, C1), 1);
    assert_int_equal(stats(f).consumers, 2);
    fx_free(f);
}

static void leave_and_lost_connection(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    C(C2);
    credit(f, C1, 2);
    pub1(f, P1, 0, P1, 0);
    pub1(f, P1, 1, P1, 1);
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_LEAVE, 0, 0, 0);
    assert_int_equal(stats(f).consumers, 1);
    size_t mark = f->nout;
    credit(f, C2, 2);
    assert_int_equal(nth_sent(f, mark, SS_LINK_DELIVER, C2, 0)->ids[0].seq, 0);
    assert_int_equal(nth_sent(f, mark, SS_LINK_DELIVER, C2, 1)->ids[0].seq, 1);
    assert_int_equal(nth_sent(f, mark, SS_LINK_DELIVER, C2, 1)->link.flags, SS_LINK_REDELIVERED);
    /* C2's connection is gone: the next DELIVER fails, C2 is dead. */
    pub1(f, P1, 2, P1, 2);
    f->unreachable[f->nunreachable++] = C2;
    credit(f, C2, 1);
    ss_router_stats st = stats(f);
    assert_int_equal(st.consumers, 0);
    assert_int_equal(st.redelivered, 4);
    mark = f->nout;
    C(C3);
    credit(f, C3, 5);
    assert_int_equal(count_sent(f, mark, SS_LINK_DELIVER, C3), 3);
    static const struct { uint64_t seq; uint16_t flags; } want[] = {
        { 0, SS_LINK_REDELIVERED }, { 1, SS_LINK_REDELIVERED }, { 2, 0 },
    };
    for (size_t k = 0; k < 3; k++) {
        sent_t *d = nth_sent(f, mark, SS_LINK_DELIVER, C3, k);
        assert_int_equal(d->ids[0].seq, want[k].seq);
        assert_int_equal(d->link.flags, want[k].flags);
    }
    fx_free(f);
}

static void dedup_single(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    P(P2);
    C(C1);
    credit(f, C1, 10);
    pub1(f, P1, 0, 7, 0);
    ack_from(f, C1, 0, 0);  /* accepted by a consumer: the claim on 7#0 is confirmed */
    pub1(f, P2, 0, 7, 0);   /* the same source batch, re-processed */
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P2), 1);
    assert_int_equal(nth_sent(f, 0, SS_LINK_RECEIPT, P2, 0)->link.flags, 0);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 1);
    ss_router_stats st = stats(f);
    assert_int_equal(st.batches_in, 1);
    assert_int_equal(st.duplicates, 1);
    /* Many ids: the set grows and still remembers every one. */
    credit(f, C1, 5000);
    size_t mark = f->nout;
    for (uint64_t i = 1; i <= 5000; i++)
        pub1(f, P1, i, 8, i);
    ack_from(f, C1, mark, 0);
    for (uint64_t i = 1; i <= 5000; i++)
        pub1(f, P2, i, 8, i);
    st = stats(f);
    assert_int_equal(st.batches_in, 5001);
    assert_int_equal(st.duplicates, 5001);
    fx_free(f);
}

static void dedup_overlapping_lineage(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    static const struct {
        ss_lineage_id ids[2];
        size_t n;
        int dup;
    } cases[] = {
        { { { 5, 0 } }, 1, 0 },
        { { { 5, 0 }, { 5, 1 } }, 2, 1 },   /* overlaps: dropped whole ... */
        { { { 5, 1 } }, 1, 0 },             /* ... so (5,1) alone is new */
        { { { 5, 2 }, { 5, 3 } }, 2, 0 },
        { { { 5, 3 } }, 1, 1 },
        { { { 5, 3 }, { 5, 4 } }, 2, 1 },
        { { { 5, 4 } }, 1, 0 },
        { { { 4, 9 }, { 6, 0 } }, 2, 0 },
    };
    uint64_t in = 0, dups = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t mark = f->nout;
        in_publish(f, P1, i, cases[i].ids, cases[i].n, 10);
        credit(f, C1, 1);
        ack_from(f, C1, mark, 0);   /* each accepted batch is confirmed before the next */
        in += !cases[i].dup;
        dups += cases[i].dup;
        ss_router_stats st = stats(f);
        assert_int_equal(st.batches_in, in);
        assert_int_equal(st.duplicates, dups);
        assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), i + 1);
    }
    fx_free(f);
}

static void eos_after_every_member(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    P(P2);
    C(C1);
    C(C2);
    credit(f, C1, 5);
    credit(f, C2, 5);
    pub1(f, P1, 0, P1, 0);
    pub1(f, P2, 0, P2, 0);
    for (size_t k = 0; k < 2; k++) {
        sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, 0, k);
        ack(f, d->peer, d->link.tag);
    }
    const uint64_t members[] = { P1, P2 };
    const uint64_t k1[] = { P1, 0x8000000000000001ull };
    const uint64_t k2[] = { P2, 0x8000000000000001ull };   /* same key, written signed */
    in_eos(f, P1, 1, members, 2, k1, 2, 0);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 2);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 2);   /* P2 not finished */
    in_eos(f, P2, 1, members, 2, k2, 2, 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 4);
    for (int i = 0; i < 2; i++) {
        uint64_t c = i ? C2 : C1;
        assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, c), 2);
        sent_t *e = nth_sent(f, 0, SS_LINK_DELIVER, c, 1);
        assert_int_equal(e->link.flags, 0);
        assert_int_equal(e->hdr.type, SS_MSG_EOS);
        assert_int_equal(e->hdr.producer, f->self);
        assert_int_equal(e->hdr.seq, 0);
        assert_int_equal(e->hdr.count, 2);
        assert_int_equal(e->hdr.stream, STREAM);
        assert_int_equal(e->nids, 0);
        uint64_t got[4];
        size_t nstats;
        assert_int_equal(eos_members(e, got, 4, &nstats), 2);
        assert_int_equal(got[0], C1);
        assert_int_equal(got[1], C2);
        assert_int_equal(nstats, 3);   /* P1, P2 and the shared key once */
    }
    /* Done only when both acknowledged; no second EOS on more credit. */
    int64_t at;
    assert_false(ss_router_state_done(f->s, &at));
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag);
    assert_false(ss_router_state_done(f->s, &at));
    credit(f, C1, 5);
    ack(f, C2, nth_sent(f, 0, SS_LINK_DELIVER, C2, 1)->link.tag);
    assert_true(ss_router_state_done(f->s, &at));
    assert_int_equal(at, f->now);
    credit(f, C2, 5);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 4);
    /* Data after the end is refused, with a receipt saying so. */
    size_t mark = f->nout;
    pub1(f, P1, 2, P1, 1);
    assert_int_equal(nth_sent(f, mark, SS_LINK_RECEIPT, P1, 0)->link.flags, SS_LINK_REFUSED);
    assert_int_equal(stats(f).refused, 1);
    fx_free(f);
}

static void eos_waits_for_acks(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1 };
    P(P1);
    C(C1);
    pub1(f, P1, 0, P1, 0);
    pub1(f, P1, 1, P1, 1);
    in_eos(f, P1, 2, members, 1, members, 1, 0);
    credit(f, C1, 1);   /* batch 0 delivered; batch 1 still queued */
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag);
    credit(f, C1, 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 2);
    assert_int_equal(nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->hdr.type, SS_MSG_DATA);
    credit(f, C1, 1);   /* credit, but batch 1 is not acknowledged yet */
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 2);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 3);
    assert_int_equal(nth_sent(f, 0, SS_LINK_DELIVER, C1, 2)->hdr.type, SS_MSG_EOS);
    fx_free(f);
}

static void eos_dead_member_is_finished(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1, P2 };
    P(P1);
    P(P2);
    C(C1);
    credit(f, C1, 5);
    in_eos(f, P1, 0, members, 2, NULL, 0, 0);
    tick(f, 600);
    heartbeat(f, SS_SIDE_FRONTEND, P1);
    heartbeat(f, SS_SIDE_BACKEND, C1);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 0);
    tick(f, 500);   /* P2 silent 1100 ms: dead, so finished */
    assert_int_equal(stats(f).producers, 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);
    assert_int_equal(nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->hdr.type, SS_MSG_EOS);
    fx_free(f);
}

static void eos_member_that_never_joined(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1, 0x999 };
    P(P1);
    C(C1);
    credit(f, C1, 5);
    in_eos(f, P1, 0, members, 2, NULL, 0, 0);
    tick(f, 500);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 0);
    heartbeat(f, SS_SIDE_FRONTEND, P1);
    heartbeat(f, SS_SIDE_BACKEND, C1);
    tick(f, 600);   /* listed 1100 ms ago, never seen: dead */
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);
    fx_free(f);
}

static void eos_waits_for_a_consumer(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1 };
    P(P1);
    in_eos(f, P1, 0, members, 1, NULL, 0, 0);
    tick(f, 50);
    assert_false(ss_router_state_done(f->s, NULL));
    C(C1);
    credit(f, C1, 1);
    sent_t *e = nth_sent(f, 0, SS_LINK_DELIVER, C1, 0);
    assert_int_equal(e->hdr.type, SS_MSG_EOS);
    assert_int_equal(e->link.flags, 0);   /* listed, not late */
    uint64_t got[2];
    size_t nstats;
    assert_int_equal(eos_members(e, got, 2, &nstats), 1);
    assert_int_equal(got[0], C1);
    assert_int_equal(nstats, 0);
    ack(f, C1, e->link.tag);
    assert_true(ss_router_state_done(f->s, NULL));
    fx_free(f);
}

static void eos_consumer_dies_before_ack(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1 };
    P(P1);
    C(C1);
    C(C2);
    credit(f, C1, 1);
    credit(f, C2, 1);
    in_eos(f, P1, 0, members, 1, NULL, 0, 0);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, 0), 2);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag);
    assert_false(ss_router_state_done(f->s, NULL));
    in_link(f, SS_SIDE_BACKEND, C2, SS_LINK_LEAVE, 0, 0, 0);
    assert_true(ss_router_state_done(f->s, NULL));
    fx_free(f);
}

static void late_joiner_gets_late_eos(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1 };
    P(P1);
    C(C1);
    credit(f, C1, 1);
    in_eos(f, P1, 0, members, 1, NULL, 0, 0);
    /* Joins while the EOS waits for C1's ACK: late already. */
    C(C2);
    credit(f, C2, 1);
    sent_t *e2 = nth_sent(f, 0, SS_LINK_DELIVER, C2, 0);
    assert_int_equal(e2->hdr.type, SS_MSG_EOS);
    assert_int_equal(e2->link.flags, SS_LINK_LATE);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag);
    assert_true(ss_router_state_done(f->s, NULL));   /* C2's ACK is not awaited */
    C(C3);
    credit(f, C3, 3);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C3), 1);
    sent_t *e3 = nth_sent(f, 0, SS_LINK_DELIVER, C3, 0);
    assert_int_equal(e3->link.flags, SS_LINK_LATE);
    uint64_t got[4];
    size_t nstats;
    assert_int_equal(eos_members(e3, got, 4, &nstats), 1);
    assert_int_equal(got[0], C1);
    ack(f, C3, e3->link.tag);
    fx_free(f);
}

static void backpressure_withholds_receipts(void **state)
{
    const uint64_t one = HDR + LIN + 600;
    fx_t *f = fx_new(1000);
    P(P1);
    C(C1);
    ss_lineage_id id;
    for (uint64_t i = 0; i < 3; i++) {
        id = (ss_lineage_id){ P1, i };
        in_publish(f, P1, i, &id, 1, 600);
    }
    /* Overlapping a pending claim: parked (held), its receipt queues behind
     * the withheld ones. */
    pub1(f, P1, 3, P1, 0);
    const uint64_t small = HDR + LIN + 100;
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 1);   /* 656 <= 1000; then over */
    assert_int_equal(stats(f).bytes_held, 3 * one + small);
    assert_int_equal(stats(f).parked, 1);
    credit(f, C1, 2);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 0)->link.tag);
    /* P1#0 confirmed: the parked batch is a duplicate, dropped. */
    assert_int_equal(stats(f).duplicates, 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 1);   /* 1312 > 1000 */
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->link.tag);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 4);   /* 656: released in order */
    for (uint64_t i = 0; i < 4; i++)
        assert_int_equal(nth_sent(f, 0, SS_LINK_RECEIPT, P1, i)->link.tag, i);
    ss_router_stats st = stats(f);
    assert_int_equal(st.bytes_held_max, 3 * one + small);
    assert_int_equal(st.bytes_held, one);
    /* A producer that dies with withheld receipts leaves nothing behind. */
    id = (ss_lineage_id){ P1, 10 };
    in_publish(f, P1, 4, &id, 1, 600);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 4);
    in_link(f, SS_SIDE_FRONTEND, P1, SS_LINK_LEAVE, 0, 0, 0);
    credit(f, C1, 2);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 2)->link.tag);
    ack(f, C1, nth_sent(f, 0, SS_LINK_DELIVER, C1, 3)->link.tag);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), 4);
    assert_int_equal(stats(f).bytes_held, 0);
    fx_free(f);
}

/* ---- windows, eviction, deferred joins ---- */

static void window_is_granted_in_welcome(void **state)
{
    fx_t *f = fx_new(1 << 20);
    static const struct { uint64_t peer; uint16_t asked; uint32_t granted; } cases[] = {
        { 0x301, 0, SS_DEFAULT_WINDOW },        /* none declared: the default */
        { 0x302, 4, 4 },
        { 0x303, 1000, SS_DEFAULT_MAX_WINDOW }, /* capped by the router */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        in_join_window(f, cases[i].peer, cases[i].asked);
        ASSERT_UINT_EQ(nth_sent(f, 0, SS_LINK_WELCOME, cases[i].peer, 0)->link.n, cases[i].granted);
    }
    C(C1);
    ASSERT_UINT_EQ(nth_sent(f, 0, SS_LINK_WELCOME, C1, 0)->link.n, 0);
    fx_free(f);
}

static void window_overrun_is_dropped_and_evicts(void **state)
{
    const uint64_t one = HDR + LIN + 600;
    fx_t *f = fx_new(1000);   /* over the bound after two batches: receipts withheld */
    in_join_window(f, P1, 4);
    P(P2);
    C(C1);
    ss_lineage_id id;
    for (uint64_t i = 0; i < 4; i++) {
        id = (ss_lineage_id){ P1, i };
        in_publish(f, P1, i, &id, 1, 600);
    }
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_RECEIPT, P1), 1);
    ASSERT_UINT_EQ(stats(f).bytes_held, 4 * one);
    ASSERT_UINT_EQ(stats(f).overruns, 0);
    /* Three receipts withheld and one sent: three in flight of four. One more
     * fits; the next is an overrun: not stored, not receipted. */
    id = (ss_lineage_id){ P1, 4 };
    in_publish(f, P1, 4, &id, 1, 600);
    ASSERT_UINT_EQ(stats(f).overruns, 0);
    for (uint64_t i = 5; i < 9; i++) {
        id = (ss_lineage_id){ P1, i };
        in_publish(f, P1, i, &id, 1, 600);
    }
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.overruns, 4);
    ASSERT_UINT_EQ(st.evicted, 0);
    ASSERT_UINT_EQ(st.bytes_held, 5 * one);
    ASSERT_UINT_EQ(st.batches_in, 5);
    /* The fifth overrun is more than its window: evicted, named in the log. */
    test_capture_start();
    id = (ss_lineage_id){ P1, 9 };
    in_publish(f, P1, 9, &id, 1, 600);
    char *log = test_capture_stop();
    ASSERT_CONTAINS(log, "evicted producer windowed (id 0000000000000101): 5 batches beyond its window of 4");
    free(log);
    st = stats(f);
    ASSERT_UINT_EQ(st.overruns, 5);
    ASSERT_UINT_EQ(st.evicted, 1);
    ASSERT_UINT_EQ(st.producers, 1);
    /* Its later messages are ignored; what it had stored stays and is delivered. */
    id = (ss_lineage_id){ P1, 10 };
    in_publish(f, P1, 10, &id, 1, 600);
    ASSERT_UINT_EQ(stats(f).overruns, 5);
    ASSERT_UINT_EQ(stats(f).bytes_held, 5 * one);
    /* A JOIN while over the bound waits: no WELCOME, so no new window. */
    size_t mark = f->nout;
    in_join_window(f, P1, 4);
    ASSERT_UINT_EQ(count_sent(f, mark, SS_LINK_WELCOME, P1), 0);
    ASSERT_UINT_EQ(stats(f).joins_deferred, 1);
    ASSERT_UINT_EQ(stats(f).producers, 1);
    /* The consumer drains: under the bound, the waiting producer is welcomed
     * with a window of its own, starting over. */
    credit(f, C1, 5);
    ack_from(f, C1, 0, 0);
    ASSERT_UINT_EQ(stats(f).bytes_held, 0);
    ASSERT_UINT_EQ(count_sent(f, mark, SS_LINK_WELCOME, P1), 1);
    ASSERT_UINT_EQ(nth_sent(f, mark, SS_LINK_WELCOME, P1, 0)->link.n, 4);
    ASSERT_UINT_EQ(stats(f).producers, 2);
    id = (ss_lineage_id){ P1, 20 };
    in_publish(f, P1, 0, &id, 1, 600);
    ASSERT_UINT_EQ(count_sent(f, mark, SS_LINK_RECEIPT, P1), 1);
    ASSERT_UINT_EQ(stats(f).overruns, 5);
    fx_free(f);
}

static void honest_producer_never_overruns(void **state)
{
    /* Receipts flowing: any number of batches, one window at a time. */
    fx_t *f = fx_new(1 << 20);
    in_join_window(f, P1, 2);
    C(C1);
    credit(f, C1, 1000);
    for (uint64_t i = 0; i < 500; i++)
        pub1(f, P1, i, P1, i);
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.overruns, 0);
    ASSERT_UINT_EQ(st.batches_in, 500);
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_RECEIPT, P1), 500);
    /* Refused batches are receipted too, so they do not eat the window. */
    ss_header_t h = { SS_MSG_DATA, 0, STREAM + 1, P1, 0, 1, 0 };
    ss_lineage_id id = { P1, 999 };
    for (uint64_t i = 500; i < 510; i++)
        in_publish_raw(f, P1, i, &h, &id, 1, "x", 1);
    ASSERT_UINT_EQ(stats(f).refused, 10);
    ASSERT_UINT_EQ(stats(f).overruns, 0);
    fx_free(f);
}

/* ---- lineage claims: pending, confirmed, rejected ---- */

enum { SRC = 0x50c, SQUAT = 0x666 };

static void squatter_rejected_by_consumer_frees_the_lineage(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(SRC);
    P(SQUAT);
    C(C1);
    /* The squatter claims the real source's next batch first. */
    pub1(f, SQUAT, 0, SRC, 5);
    pub1(f, SRC, 0, SRC, 5);
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.batches_in, 1);
    ASSERT_UINT_EQ(st.parked, 1);
    ASSERT_UINT_EQ(st.duplicates, 0);
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_RECEIPT, SRC), 1);   /* parked is receipted */
    /* The consumer cannot authenticate it: REJECTED. */
    credit(f, C1, 1);
    sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, C1, 0);
    ASSERT_UINT_EQ(d->hdr.producer, SQUAT);
    test_capture_start();
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_ACK, SS_LINK_REJECTED, 0, d->link.tag);
    char *log = test_capture_stop();
    ASSERT_CONTAINS(log, "rejected batch 0 of producer peer-666 (id 0000000000000666)");
    free(log);
    st = stats(f);
    ASSERT_UINT_EQ(st.rejected, 1);
    ASSERT_UINT_EQ(st.batches_in, 2);   /* the real one, out of the parking */
    credit(f, C1, 1);
    d = nth_sent(f, 0, SS_LINK_DELIVER, C1, 1);
    ASSERT_UINT_EQ(d->hdr.producer, SRC);
    ASSERT_UINT_EQ(d->ids[0].seq, 5);
    ack(f, C1, d->link.tag);
    /* Now confirmed: the squatter trying again is a duplicate. */
    pub1(f, SQUAT, 1, SRC, 5);
    st = stats(f);
    ASSERT_UINT_EQ(st.duplicates, 1);
    ASSERT_UINT_EQ(st.bytes_held, 0);
    ASSERT_UINT_EQ(st.parked, 1);
    fx_free(f);
}

static void squatter_accepted_by_consumer_drop_is_logged(void **state)
{
    /* Plain mode: the consumer cannot tell, accepts the squatter's batch; the
     * real one is dropped, and the log names both producers. */
    fx_t *f = fx_new(1 << 20);
    P(SRC);
    P(SQUAT);
    C(C1);
    pub1(f, SQUAT, 0, SRC, 5);
    pub1(f, SRC, 0, SRC, 5);
    credit(f, C1, 5);
    test_capture_start();
    ack_from(f, C1, 0, 0);
    char *log = test_capture_stop();
    ASSERT_CONTAINS(log, "dropped batch 0 of producer peer-50c (id 000000000000050c): lineage "
                         "000000000000050c#5 already accepted from producer peer-666 (id 0000000000000666)");
    free(log);
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.duplicates, 1);
    ASSERT_UINT_EQ(st.batches_in, 1);
    ASSERT_UINT_EQ(st.bytes_held, 0);
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);
    fx_free(f);
}

static void redelivery_keeps_claims_pending(void **state)
{
    /* Rule 5 with claims: a dead consumer's batch stays claimed; a re-processed
     * copy waits in the parking and is dropped once the first is accepted. */
    fx_t *f = fx_new(1 << 20);
    P(P1);
    P(P2);
    C(C1);
    C(C2);
    credit(f, C1, 1);
    ss_lineage_id ab[] = { { 7, 1 }, { 7, 2 } };
    in_publish(f, P1, 0, ab, 2, 10);     /* a reducer's partial over 7#1 and 7#2 */
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_LEAVE, 0, 0, 0);
    ASSERT_UINT_EQ(stats(f).redelivered, 1);
    pub1(f, P2, 0, 7, 2);                /* 7#2 alone, from the upstream redelivery */
    pub1(f, P2, 1, 7, 3);                /* unrelated: queued */
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.parked, 1);
    ASSERT_UINT_EQ(st.batches_in, 2);
    credit(f, C2, 5);
    sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, C2, 0);
    ASSERT_UINT_EQ(d->link.flags, SS_LINK_REDELIVERED);
    ASSERT_UINT_EQ(d->nids, 2);
    ack_from(f, C2, 0, 0);
    st = stats(f);
    ASSERT_UINT_EQ(st.duplicates, 1);
    ASSERT_UINT_EQ(st.batches_in, 2);
    ASSERT_UINT_EQ(st.bytes_held, 0);
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_DELIVER, C2), 2);
    fx_free(f);
}

static void partial_rejected_lets_batches_through_alone(void **state)
{
    /* A partial over 7#1..7#3 rejected by its consumer: each batch that
     * comes again alone, parked meanwhile, is accepted. */
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    ss_lineage_id abc[] = { { 7, 1 }, { 7, 2 }, { 7, 3 } };
    in_publish(f, P1, 0, abc, 3, 10);
    for (uint64_t q = 1; q <= 3; q++)
        pub1(f, P1, q, 7, q);
    ASSERT_UINT_EQ(stats(f).parked, 3);
    credit(f, C1, 1);
    ack_from(f, C1, 0, SS_LINK_REJECTED);
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.rejected, 1);
    ASSERT_UINT_EQ(st.batches_in, 4);
    ASSERT_UINT_EQ(st.duplicates, 0);
    size_t mark = f->nout;
    credit(f, C1, 3);
    for (size_t k = 0; k < 3; k++)
        ASSERT_UINT_EQ(nth_sent(f, mark, SS_LINK_DELIVER, C1, k)->ids[0].seq, k + 1);
    fx_free(f);
}

static void claims_forgotten_among_many(void **state)
{
    /* The claims table forgets entries in the middle of probe runs: every
     * other of 3000 batches rejected, then all of them published again. */
    fx_t *f = fx_new(1 << 30);
    P(P1);
    C(C1);
    credit(f, C1, 3000);
    for (uint64_t i = 0; i < 3000; i++)
        pub1(f, P1, i, 9, i);
    for (size_t k = 0; k < 3000; k++) {
        sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, C1, k);
        in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_ACK, d->ids[0].seq % 2 ? SS_LINK_REJECTED : 0, 0,
                d->link.tag);
    }
    ASSERT_UINT_EQ(stats(f).rejected, 1500);
    for (uint64_t i = 0; i < 3000; i++)
        pub1(f, P1, 3000 + i, 9, i);
    ss_router_stats st = stats(f);
    ASSERT_UINT_EQ(st.duplicates, 1500);       /* the accepted ones */
    ASSERT_UINT_EQ(st.batches_in, 4500);       /* the rejected ones come again */
    ASSERT_UINT_EQ(st.parked, 0);
    fx_free(f);
}

static void eos_waits_for_parked_batches(void **state)
{
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1, P2 };
    P(P1);
    P(P2);
    C(C1);
    pub1(f, P1, 0, 9, 0);
    pub1(f, P2, 0, 9, 0);   /* parked behind P1's */
    in_eos(f, P1, 1, members, 2, NULL, 0, 0);
    in_eos(f, P2, 1, members, 2, NULL, 0, 0);
    credit(f, C1, 5);
    sent_t *d = nth_sent(f, 0, SS_LINK_DELIVER, C1, 0);
    ASSERT_UINT_EQ(d->hdr.type, SS_MSG_DATA);
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);   /* no EOS yet */
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_ACK, SS_LINK_REJECTED, 0, d->link.tag);
    /* P2's copy came out of the parking; only after it the EOS. */
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_DELIVER, C1), 2);
    ASSERT_UINT_EQ(nth_sent(f, 0, SS_LINK_DELIVER, C1, 1)->hdr.producer, P2);
    ack_from(f, C1, 0, 0);
    sent_t *e = nth_sent(f, 0, SS_LINK_DELIVER, C1, 2);
    ASSERT_UINT_EQ(e->hdr.type, SS_MSG_EOS);
    ack(f, C1, e->link.tag);
    assert_true(ss_router_state_done(f->s, NULL));
    fx_free(f);
}

static void eos_from_unlisted_producer_is_merged_not_awaited(void **state)
{
    /* A worker that came LATE upstream forwards its EOS anyway: a router
     * merges its statistics and never waits for it. */
    fx_t *f = fx_new(1 << 20);
    const uint64_t members[] = { P1 };
    const uint64_t k1[] = { 0x11 }, k2[] = { 0x11, 0x22 };
    P(P1);
    P(P2);
    C(C1);
    credit(f, C1, 5);
    in_eos(f, P2, 0, members, 1, k2, 2, 0);   /* P2 unlisted, lists P1 */
    ASSERT_UINT_EQ(count_sent(f, 0, SS_LINK_DELIVER, C1), 0);
    in_eos(f, P1, 0, members, 1, k1, 1, 0);
    sent_t *e = nth_sent(f, 0, SS_LINK_DELIVER, C1, 0);
    uint64_t got[4];
    size_t nstats;
    ASSERT_UINT_EQ(eos_members(e, got, 4, &nstats), 1);
    ASSERT_UINT_EQ(nstats, 2);
    fx_free(f);
}

static void refuses_what_is_not_ours(void **state)
{
    fx_t *f = fx_new(1 << 20);
    P(P1);
    C(C1);
    credit(f, C1, 10);
    uint64_t refused = 0;
    size_t receipts = 0;
#define REFUSED(with_receipt)                                                     \
    do {                                                                          \
        assert_int_equal(stats(f).refused, ++refused);                            \
        if (with_receipt) {                                                       \
            receipts++;                                                           \
            assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), receipts);    \
            assert_int_equal(f->out[f->nout - 1].link.flags, SS_LINK_REFUSED);    \
        }                                                                         \
    } while (0)

    /* Not a link frame. */
    const void *junk[] = { "hello" };
    size_t junklen[] = { 5 };
    input(f, SS_SIDE_FRONTEND, P1, junk, junklen, 1);
    REFUSED(0);
    /* Link frame of another version. */
    uint8_t lb[SS_LINK_SIZE];
    ss_link_encode(&(ss_link_t){ SS_LINK_HEARTBEAT, 0, 0, 0 }, lb);
    lb[0] = 2;
    const void *v2[] = { lb };
    size_t v2len[] = { sizeof lb };
    input(f, SS_SIDE_FRONTEND, P1, v2, v2len, 1);
    REFUSED(0);
    /* PUBLISH with two stream frames. */
    ss_link_encode(&(ss_link_t){ SS_LINK_PUBLISH, 0, 0, 0 }, lb);
    uint8_t hb[HDR];
    ss_header_encode(&(ss_header_t){ SS_MSG_DATA, 0, STREAM, P1, 0, 1, 0 }, hb);
    const void *two[] = { lb, hb, "" };
    size_t twolen[] = { sizeof lb, sizeof hb, 0 };
    input(f, SS_SIDE_FRONTEND, P1, two, twolen, 3);
    REFUSED(1);
    /* Six frames: more than any message has. */
    const void *six[] = { lb, hb, "", "", "", "" };
    size_t sixlen[] = { sizeof lb, sizeof hb, 0, 0, 0, 0 };
    input(f, SS_SIDE_FRONTEND, P1, six, sixlen, 6);
    REFUSED(1);
    /* Another pipeline's stream id. */
    ss_lineage_id id = { P1, 0 };
    ss_header_t h = { SS_MSG_DATA, 0, STREAM + 1, P1, 0, 1, 0 };
    in_publish_raw(f, P1, 2, &h, &id, 1, "x", 1);
    REFUSED(1);
    /* A header of another version. */
    ss_header_encode(&(ss_header_t){ SS_MSG_DATA, 0, STREAM, P1, 0, 1, 0 }, hb);
    hb[0] = 9;
    uint8_t linb[LIN];
    ss_lineage_put(linb, 0, id);
    const void *badh[] = { lb, hb, linb, "x" };
    size_t badhlen[] = { sizeof lb, sizeof hb, sizeof linb, 1 };
    input(f, SS_SIDE_FRONTEND, P1, badh, badhlen, 4);
    REFUSED(1);
    /* An unsorted lineage. */
    ss_lineage_id unsorted[] = { { P1, 5 }, { P1, 4 } };
    h.stream = STREAM;
    in_publish_raw(f, P1, 4, &h, unsorted, 2, "x", 1);
    REFUSED(1);
    /* More than 16 MiB in all (each frame alone would pass the socket). */
    uint8_t *big = calloc(1, SS_MAX_MESSAGE);
    assert_non_null(big);
    in_publish_raw(f, P1, 5, &h, &id, 1, big, SS_MAX_MESSAGE - HDR);
    free(big);
    REFUSED(1);
    /* EOS that is sealed, or whose payload is not MessagePack. */
    ss_header_t e = { SS_MSG_EOS, SS_HDR_SEALED, STREAM, P1, 6, 1, 0 };
    in_publish_raw(f, P1, 6, &e, NULL, 0, "\x81", 1);
    REFUSED(1);
    e.flags = 0;
    in_publish_raw(f, P1, 7, &e, NULL, 0, "\xc1", 1);
    REFUSED(1);
    in_publish_raw(f, P1, 8, &e, NULL, 0, "\x80", 1);   /* a map without members */
    REFUSED(1);
    /* Kinds a side may not send. */
    in_link(f, SS_SIDE_FRONTEND, P1, SS_LINK_CREDIT, 0, 5, 0);
    REFUSED(0);
    in_link(f, SS_SIDE_FRONTEND, P1, SS_LINK_WELCOME, 0, 0, 0);
    REFUSED(0);
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_PUBLISH, 0, 0, 0);
    REFUSED(0);
    in_link(f, SS_SIDE_BACKEND, C1, SS_LINK_DELIVER, 0, 0, 0);
    REFUSED(0);
#undef REFUSED
    /* Nothing was queued, and the router still works. */
    ss_router_stats st = stats(f);
    assert_int_equal(st.batches_in, 0);
    assert_int_equal(st.bytes_held, 0);
    pub1(f, P1, 9, P1, 0);
    assert_int_equal(count_sent(f, 0, SS_LINK_DELIVER, C1), 1);
    assert_int_equal(count_sent(f, 0, SS_LINK_RECEIPT, P1), receipts + 1);
    assert_int_equal(nth_sent(f, 0, SS_LINK_RECEIPT, P1, receipts)->link.flags, 0);
    fx_free(f);
}

/* ------------------------------------------------------------------------
 * Part 2: sockets
 * ------------------------------------------------------------------------ */

#define HB_MS 50
#define LIVE_MS 400
#define MAXC 4

static void router_start_with(test_router *tr, void *zctx, size_t max_bytes, int linger_ms,
                              int liveness_ms)
{
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.frontend = "tcp://127.0.0.1:*";
    o.backend = "tcp://127.0.0.1:*";
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = liveness_ms;
    if (max_bytes)
        o.max_bytes = max_bytes;
    o.linger_ms = linger_ms;
    test_router_start(tr, zctx, &o);
    ASSERT_CONTAINS(ss_router_frontend(tr->r), "tcp://127.0.0.1:");
}

static void router_start(test_router *tr, void *zctx, size_t max_bytes)
{
    router_start_with(tr, zctx, max_bytes, 0, LIVE_MS);
}

static ss_link_opts link_opts(uint64_t id, const char *name)
{
    ss_link_opts o;
    ss_link_opts_init(&o);
    o.id = id;
    o.name = name;
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    o.join_timeout_ms = 3000;
    return o;
}

/* What every consumer thread records, under one lock. */
typedef struct {
    pthread_mutex_t mu;
    uint64_t prod[2];        /* producer ids: lineage source */
    int nbatches;            /* per producer */
    uint8_t *acked[2];       /* times each batch was processed and acknowledged */
    uint64_t redelivered_seen;
} ledger;

typedef struct {
    void *zctx;
    const char *addr;
    uint64_t id;
    ledger *lg;
    int stall_after;         /* >= 0: after so many deliveries stop talking, then destroy */
    int stall_ms;
    int delay_us;            /* per delivery, to be a slow consumer */
    /* results */
    atomic_int joined;       /* 1 once its link joined the router, -1 if it could not */
    ss_err rc;
    int eos, late;
    size_t nmembers;
    uint64_t members[MAXC];
    int processed;
} consumer_job;

static void *consumer_thread(void *arg)
{
    consumer_job *j = arg;
    ss_link_opts o = link_opts(j->id, "test-consumer");
    ss_consumer_t *c = NULL;
    char err[256];
    j->rc = ss_consumer_new(j->zctx, j->addr, &o, &c, err, sizeof err);
    atomic_store(&j->joined, j->rc == SS_OK ? 1 : -1);
    if (j->rc != SS_OK)
        return NULL;
    int got = 0;
    for (;;) {
        ss_delivery_t d;
        ss_err rc = ss_consumer_recv(c, j->eos ? 300 : 8000, &d);
        if (rc == SS_ERR_TIMEOUT && j->eos)
            break;              /* no second EOS came */
        if (rc != SS_OK) {
            j->rc = rc;
            break;
        }
        got++;
        if (j->stall_after >= 0 && got >= j->stall_after) {
            /* Stop answering: the router must declare us dead. (The
             * silence itself is under test, so a sleep.) */
            usleep((useconds_t)j->stall_ms * 1000);
            break;
        }
        if (d.header.type == SS_MSG_EOS) {
            j->eos++;
            j->late += (d.flags & SS_LINK_LATE) != 0;
            ss_header_t h = d.header;
            msgpack_unpacked u;
            msgpack_unpacked_init(&u);
            size_t off = 0;
            if (msgpack_unpack_next(&u, (const char *)d.payload, d.payload_len, &off)
                    == MSGPACK_UNPACK_SUCCESS && u.data.type == MSGPACK_OBJECT_MAP) {
                for (uint32_t i = 0; i < u.data.via.map.size; i++) {
                    msgpack_object v = u.data.via.map.ptr[i].val;
                    if (v.type == MSGPACK_OBJECT_ARRAY)
                        for (uint32_t k = 0; k < v.via.array.size && j->nmembers < MAXC; k++)
                            j->members[j->nmembers++] = v.via.array.ptr[k].via.u64;
                }
            }
            msgpack_unpacked_destroy(&u);
            if (h.count != j->nmembers)
                j->rc = SS_ERR_FORMAT;
            ss_consumer_ack(c, d.tag);
            continue;
        }
        size_t n;
        if (ss_lineage_check(d.lineage, d.lineage_len, &n) != SS_OK || n != 1) {
            j->rc = SS_ERR_FORMAT;
            break;
        }
        ss_lineage_id id = ss_lineage_get(d.lineage, 0);
        pthread_mutex_lock(&j->lg->mu);
        for (int p = 0; p < 2; p++)
            if (id.source == j->lg->prod[p] && id.seq < (uint64_t)j->lg->nbatches)
                j->lg->acked[p][id.seq]++;
        if (d.flags & SS_LINK_REDELIVERED)
            j->lg->redelivered_seen++;
        pthread_mutex_unlock(&j->lg->mu);
        j->processed++;
        if (j->delay_us)   /* the slowness is under test, so a sleep */
            usleep((useconds_t)j->delay_us);
        if (ss_consumer_ack(c, d.tag) != SS_OK) {
            j->rc = SS_ERR_CLOSED;
            break;
        }
    }
    ss_consumer_destroy(&c);
    return NULL;
}

typedef struct {
    void *zctx;
    const char *addr;
    uint64_t id;
    uint64_t members[2];
    int nbatches;
    ss_err rc;
    uint64_t receipts;
} producer_job;

static void count_receipt(void *arg, uint64_t pubseq)
{
    producer_job *j = arg;
    j->receipts++;
}

static void *producer_thread(void *arg)
{
    producer_job *j = arg;
    ss_link_opts o = link_opts(j->id, "test-producer");
    ss_producer_t *p = NULL;
    char err[256];
    uint8_t payload[64];
    j->rc = ss_producer_new(j->zctx, j->addr, &o, count_receipt, j, &p, err, sizeof err);
    if (j->rc != SS_OK)
        return NULL;
    for (int i = 0; i < j->nbatches && j->rc == SS_OK; i++) {
        uint8_t lin[LIN];
        ss_lineage_put(lin, 0, (ss_lineage_id){ j->id, (uint64_t)i });
        memset(payload, i & 0xff, sizeof payload);
        ss_header_t h = { SS_MSG_DATA, 0, STREAM, j->id, (uint64_t)i, 1, (uint64_t)i };
        uint64_t pubseq;
        j->rc = ss_producer_publish(p, &h, lin, sizeof lin, payload, sizeof payload, &pubseq);
        if (j->rc == SS_OK && pubseq != (uint64_t)i)
            j->rc = SS_ERR_FORMAT;
    }
    if (j->rc == SS_OK) {
        msgpack_sbuffer sb;
        test_eos_payload(&sb, j->members, 2, &j->id, 1, 0);
        ss_header_t h = { SS_MSG_EOS, 0, STREAM, j->id, (uint64_t)j->nbatches, 2, 0 };
        j->rc = ss_producer_publish(p, &h, "", 0, sb.data, sb.size, NULL);
        msgpack_sbuffer_destroy(&sb);
    }
    if (j->rc == SS_OK)
        j->rc = ss_producer_drain(p, 10000);
    if (j->rc == SS_OK && (ss_producer_in_flight(p) != 0 || ss_producer_refused(p) != 0))
        j->rc = SS_ERR_FORMAT;
    ss_producer_destroy(&p);
    return NULL;
}

typedef struct {
    void *zctx;
    test_router rr;
    ledger lg;
    producer_job pj[2];
    pthread_t pth[2];
    consumer_job cj[MAXC];
    pthread_t cth[MAXC];
    int nc;
} scenario;

static void scenario_init(scenario *sc, int nbatches)
{
    memset(sc, 0, sizeof *sc);
    sc->zctx = zmq_ctx_new();
    assert_non_null(sc->zctx);
    pthread_mutex_init(&sc->lg.mu, NULL);
    sc->lg.nbatches = nbatches;
    for (int p = 0; p < 2; p++) {
        sc->lg.prod[p] = ss_random_id();
        sc->lg.acked[p] = calloc((size_t)nbatches, 1);
        assert_non_null(sc->lg.acked[p]);
    }
}

static int consumer_joined(void *arg)
{
    consumer_job *j = arg;
    return atomic_load(&j->joined) != 0;
}

static void start_consumer(scenario *sc, int stall_after, int stall_ms, int delay_us)
{
    consumer_job *j = &sc->cj[sc->nc];
    j->zctx = sc->zctx;
    j->addr = ss_router_backend(sc->rr.r);
    j->id = ss_random_id();
    j->lg = &sc->lg;
    j->stall_after = stall_after;
    j->stall_ms = stall_ms;
    j->delay_us = delay_us;
    assert_int_equal(pthread_create(&sc->cth[sc->nc], NULL, consumer_thread, j), 0);
    sc->nc++;
}

static void start_producers(scenario *sc)
{
    for (int p = 0; p < 2; p++) {
        producer_job *j = &sc->pj[p];
        j->zctx = sc->zctx;
        j->addr = ss_router_frontend(sc->rr.r);
        j->id = sc->lg.prod[p];
        j->members[0] = sc->lg.prod[0];
        j->members[1] = sc->lg.prod[1];
        j->nbatches = sc->lg.nbatches;
        assert_int_equal(pthread_create(&sc->pth[p], NULL, producer_thread, j), 0);
    }
}

/* Join everything; check that every batch was processed exactly once and
 * that every surviving consumer got one EOS naming the survivors. */
static void scenario_finish(scenario *sc, int survivors_from, ss_router_stats *st)
{
    assert_int_equal(test_router_finish(&sc->rr, 30), SS_OK);
    for (int p = 0; p < 2; p++) {
        pthread_join(sc->pth[p], NULL);
        assert_int_equal(sc->pj[p].rc, SS_OK);
        assert_int_equal(sc->pj[p].receipts, (uint64_t)sc->lg.nbatches + 1);
    }
    for (int c = 0; c < sc->nc; c++)
        pthread_join(sc->cth[c], NULL);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < sc->lg.nbatches; i++)
            if (sc->lg.acked[p][i] != 1)
                fail_msg("batch %d of producer %d processed %d times", i, p, sc->lg.acked[p][i]);
    int survivors = sc->nc - survivors_from;
    int processed = 0;
    for (int c = survivors_from; c < sc->nc; c++) {
        consumer_job *j = &sc->cj[c];
        assert_int_equal(j->rc, SS_OK);
        assert_int_equal(j->eos, 1);
        assert_int_equal(j->late, 0);
        assert_int_equal(j->nmembers, (size_t)survivors);
        for (int k = survivors_from; k < sc->nc; k++) {
            int found = 0;
            for (size_t m = 0; m < j->nmembers; m++)
                found += j->members[m] == sc->cj[k].id;
            assert_int_equal(found, 1);
        }
        processed += j->processed;
    }
    assert_int_equal(processed, 2 * sc->lg.nbatches);
    ss_router_get_stats(sc->rr.r, st);
    assert_int_equal(st->batches_in, 2 * (uint64_t)sc->lg.nbatches);
    assert_int_equal(st->bytes_held, 0);
    ss_router_destroy(&sc->rr.r);
    assert_null(sc->rr.r);
    for (int p = 0; p < 2; p++)
        free(sc->lg.acked[p]);
    pthread_mutex_destroy(&sc->lg.mu);
    zmq_ctx_term(sc->zctx);
}

static void sockets_two_producers_three_consumers(void **state)
{
    scenario sc;
    scenario_init(&sc, 1000);
    router_start(&sc.rr, sc.zctx, 0);
    for (int c = 0; c < 3; c++)
        start_consumer(&sc, -1, 0, 0);
    start_producers(&sc);
    ss_router_stats st;
    scenario_finish(&sc, 0, &st);
    assert_int_equal(st.batches_out, 2000);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.redelivered, 0);
    assert_int_equal(st.refused, 0);
}

static void sockets_silent_consumer_is_replaced(void **state)
{
    scenario sc;
    scenario_init(&sc, 300);
    router_start(&sc.rr, sc.zctx, 0);
    start_consumer(&sc, 1, 3 * LIVE_MS, 0);   /* takes one, then says nothing */
    /* It joins first, so it gets work. */
    test_wait_for(5000, consumer_joined, &sc.cj[0], "the silent consumer to join");
    assert_int_equal(atomic_load(&sc.cj[0].joined), 1);
    start_consumer(&sc, -1, 0, 0);
    start_consumer(&sc, -1, 0, 0);
    start_producers(&sc);
    ss_router_stats st;
    scenario_finish(&sc, 1, &st);
    ASSERT_UINT_GE(st.redelivered, 2);
    ASSERT_UINT_GE(sc.lg.redelivered_seen, 2);
    assert_int_equal(sc.cj[0].processed, 0);
}

/* A consumer in a child process, killed with SIGKILL while it holds
 * deliveries it never acknowledged. It reads the router's address from one
 * pipe and writes 'j' (joined), then 'k' (holds two deliveries) to another. */
typedef struct {
    int to_child[2], from_child[2];
} child_pipes;

static int child_consumer(void *arg)
{
    child_pipes *cp = arg;
    close(cp->to_child[1]);
    close(cp->from_child[0]);
    int in_fd = cp->to_child[0], out_fd = cp->from_child[1];
    char addr[256];
    ssize_t n = read(in_fd, addr, sizeof addr - 1);
    if (n <= 0)
        return 1;
    addr[n] = '\0';
    void *zctx = zmq_ctx_new();
    ss_link_opts o = link_opts(ss_random_id(), "doomed-consumer");
    ss_consumer_t *c = NULL;
    char err[256];
    if (ss_consumer_new(zctx, addr, &o, &c, err, sizeof err) != SS_OK)
        return 2;
    if (write(out_fd, "j", 1) != 1)
        return 3;
    int got = 0;
    for (;;) {
        ss_delivery_t d;
        ss_err rc = ss_consumer_recv(c, 100, &d);
        if (rc == SS_OK && ++got == 2 && write(out_fd, "k", 1) != 1)
            return 4;
        if (rc != SS_OK && rc != SS_ERR_TIMEOUT)
            return 5;
    }
}

static int wait_byte(int fd, char want, int ms)
{
    struct pollfd p = { fd, POLLIN, 0 };
    char ch;
    if (poll(&p, 1, ms) != 1 || read(fd, &ch, 1) != 1)
        return -1;
    return ch == want ? 0 : -1;
}

static void sockets_killed_consumer_is_replaced(void **state)
{
    child_pipes cp;
    assert_int_equal(pipe(cp.to_child), 0);
    assert_int_equal(pipe(cp.from_child), 0);
    /* Fork before any ZeroMQ context or thread exists in this test. */
    pid_t pid = test_child_start(child_consumer, &cp);
    close(cp.to_child[0]);
    close(cp.from_child[1]);
    scenario sc;
    scenario_init(&sc, 300);
    router_start(&sc.rr, sc.zctx, 0);
    const char *addr = ss_router_backend(sc.rr.r);
    assert_int_equal(write(cp.to_child[1], addr, strlen(addr)), (ssize_t)strlen(addr));
    if (wait_byte(cp.from_child[0], 'j', 5000) != 0) {
        test_child_kill(pid);
        fail_msg("the child consumer did not join");
    }
    start_consumer(&sc, -1, 0, 0);
    start_consumer(&sc, -1, 0, 0);
    start_producers(&sc);
    int rc = wait_byte(cp.from_child[0], 'k', 10000);
    int status = test_child_kill(pid);
    assert_int_equal(rc, 0);
    assert_true(WIFSIGNALED(status));
    close(cp.to_child[1]);
    close(cp.from_child[0]);
    ss_router_stats st;
    scenario_finish(&sc, 0, &st);
    ASSERT_UINT_GE(st.redelivered, 2);
    ASSERT_UINT_GE(sc.lg.redelivered_seen, 2);
}

/* Raw DEALER sockets: what a well-behaved link never sends. */
static void *raw_dealer(void *zctx, const char *addr, uint64_t id)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    assert_non_null(s);
    int linger = 0, rcvtimeo = 3000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    if (id) {
        uint8_t rid[SS_ROUTING_ID_SIZE];
        make_ident(id, rid);
        zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, sizeof rid);
    }
    assert_int_equal(zmq_connect(s, addr), 0);
    return s;
}

static void raw_link(void *s, uint8_t kind, uint32_t n, uint64_t tag, int more)
{
    uint8_t b[SS_LINK_SIZE];
    ss_link_encode(&(ss_link_t){ kind, 0, n, tag }, b);
    assert_int_equal(zmq_send(s, b, sizeof b, more ? ZMQ_SNDMORE : 0), (int)sizeof b);
}

/* Receive the next link frame that is not a heartbeat. */
static ss_link_t raw_expect(void *s)
{
    for (;;) {
        uint8_t b[64];
        int n = zmq_recv(s, b, sizeof b, 0);
        assert_int_equal(n, SS_LINK_SIZE);
        ss_link_t l;
        assert_int_equal(ss_link_decode(b, (size_t)n, &l), SS_OK);
        int more;
        size_t ml = sizeof more;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
        assert_false(more);
        if (l.kind != SS_LINK_HEARTBEAT)
            return l;
    }
}

static void raw_publish(void *s, uint64_t producer, uint64_t pubseq, uint32_t stream,
                        const void *payload, size_t plen)
{
    uint8_t hb[HDR], lin[LIN];
    ss_header_encode(&(ss_header_t){ SS_MSG_DATA, 0, stream, producer, pubseq, 1, 0 }, hb);
    ss_lineage_put(lin, 0, (ss_lineage_id){ 0xbad, pubseq });
    raw_link(s, SS_LINK_PUBLISH, 0, pubseq, 1);
    assert_int_equal(zmq_send(s, hb, sizeof hb, ZMQ_SNDMORE), (int)sizeof hb);
    assert_int_equal(zmq_send(s, lin, sizeof lin, ZMQ_SNDMORE), (int)sizeof lin);
    assert_int_equal(zmq_send(s, payload, plen, 0), (int)plen);
}

static void sockets_bad_input_is_refused(void **state)
{
    scenario sc;
    scenario_init(&sc, 100);
    /* The raw sockets send no heartbeats: a liveness far above the time
     * the test takes between its messages, so that only what they send is
     * under test. */
    router_start_with(&sc.rr, sc.zctx, 0, 0, 20 * LIVE_MS);
    const char *front = ss_router_frontend(sc.rr.r);

    /* A stranger sends garbage: logged, counted, nothing answered. */
    void *junk = raw_dealer(sc.zctx, front, 0);
    assert_int_equal(zmq_send(junk, "hello", 5, 0), 5);
    uint8_t v7[SS_LINK_SIZE] = { 7, SS_LINK_JOIN };   /* a link frame of another version */
    assert_int_equal(zmq_send(junk, v7, sizeof v7, 0), (int)sizeof v7);

    /* A member sends another stream's batch, and one over 16 MiB. */
    uint64_t rid = ss_random_id();
    void *raw = raw_dealer(sc.zctx, front, rid);
    raw_link(raw, SS_LINK_JOIN, SS_ROLE_PRODUCER, rid, 1);
    assert_int_equal(zmq_send(raw, "raw", 3, 0), 3);
    assert_int_equal(raw_expect(raw).kind, SS_LINK_WELCOME);
    raw_publish(raw, rid, 0, STREAM + 1, "x", 1);
    ss_link_t l = raw_expect(raw);
    assert_int_equal(l.kind, SS_LINK_RECEIPT);
    assert_int_equal(l.tag, 0);
    assert_int_equal(l.flags, SS_LINK_REFUSED);
    size_t bigsize = SS_MAX_MESSAGE + 1024;
    uint8_t *big = calloc(1, bigsize);
    assert_non_null(big);
    raw_publish(raw, rid, 1, STREAM, big, bigsize);
    l = raw_expect(raw);
    assert_int_equal(l.kind, SS_LINK_RECEIPT);
    assert_int_equal(l.tag, 1);
    assert_int_equal(l.flags, SS_LINK_REFUSED);
    /* A frame beyond what the socket accepts: that connection is dropped. */
    void *huge = raw_dealer(sc.zctx, front, 0);
    size_t hugesize = 2 * (size_t)SS_MAX_MESSAGE + 1;
    uint8_t *hbuf = calloc(1, hugesize);
    assert_non_null(hbuf);
    assert_int_equal(zmq_send(huge, hbuf, hugesize, 0), (int)hugesize);
    /* The member's link is still fine. */
    raw_publish(raw, rid, 2, STREAM, "ok", 2);
    l = raw_expect(raw);
    assert_int_equal(l.kind, SS_LINK_RECEIPT);
    assert_int_equal(l.tag, 2);
    assert_int_equal(l.flags, 0);
    /* A batch whose header names another producer (the end of stream is
     * counted by that field): refused. */
    raw_publish(raw, rid + 1, 3, STREAM, "ok", 2);
    l = raw_expect(raw);
    assert_int_equal(l.kind, SS_LINK_RECEIPT);
    assert_int_equal(l.tag, 3);
    assert_int_equal(l.flags, SS_LINK_REFUSED);
    raw_link(raw, SS_LINK_LEAVE, 0, 0, 0);

    /* The router survives: a normal stream runs to its end. */
    for (int c = 0; c < 2; c++)
        start_consumer(&sc, -1, 0, 0);
    start_producers(&sc);
    ss_router_stats st;
    /* The raw member's accepted batch is processed too, outside the ledger. */
    assert_int_equal(test_router_finish(&sc.rr, 30), SS_OK);
    ss_router_get_stats(sc.rr.r, &st);
    assert_int_equal(st.refused, 5);   /* garbage, version 7, other stream, too big, not its own */
    assert_int_equal(st.batches_in, 201);
    for (int p = 0; p < 2; p++) {
        pthread_join(sc.pth[p], NULL);
        assert_int_equal(sc.pj[p].rc, SS_OK);
    }
    int processed = 0;
    for (int c = 0; c < sc.nc; c++) {
        pthread_join(sc.cth[c], NULL);
        assert_int_equal(sc.cj[c].rc, SS_OK);
        assert_int_equal(sc.cj[c].eos, 1);
        processed += sc.cj[c].processed;
    }
    assert_int_equal(processed, 201);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 100; i++)
            assert_int_equal(sc.lg.acked[p][i], 1);
    free(big);
    free(hbuf);
    zmq_close(junk);
    zmq_close(raw);
    zmq_close(huge);
    ss_router_destroy(&sc.rr.r);
    for (int p = 0; p < 2; p++)
        free(sc.lg.acked[p]);
    pthread_mutex_destroy(&sc.lg.mu);
    zmq_ctx_term(sc.zctx);
}

static void sockets_backpressure_bounds_memory(void **state)
{
    /* 64-byte payloads: 120 bytes a batch; a 2 KiB bound holds ~17. With
     * one slow consumer the producers stall instead of filling memory. */
    scenario sc;
    scenario_init(&sc, 200);
    router_start(&sc.rr, sc.zctx, 2048);
    start_consumer(&sc, -1, 0, 500);
    start_producers(&sc);
    ss_router_stats st;
    scenario_finish(&sc, 0, &st);
    /* The bound plus what two producer windows (8 each) can add. */
    ASSERT_UINT_LE(st.bytes_held_max, 2048 + 2 * 8 * 120);
    ASSERT_UINT_GT(st.bytes_held_max, 2048);
}

static void sockets_late_joiner_during_linger(void **state)
{
    void *zctx = zmq_ctx_new();
    test_router rr;
    router_start_with(&rr, zctx, 0, 1000, LIVE_MS);
    char err[256];
    ss_link_opts o = link_opts(0, "early");
    ss_consumer_t *c1 = NULL, *c2 = NULL;
    assert_int_equal(ss_consumer_new(zctx, ss_router_backend(rr.r), &o, &c1, err, sizeof err), SS_OK);
    ss_link_opts po = link_opts(0x77, "only-producer");
    ss_producer_t *p = NULL;
    assert_int_equal(ss_producer_new(zctx, ss_router_frontend(rr.r), &po, NULL, NULL, &p, err,
                                     sizeof err), SS_OK);
    msgpack_sbuffer sb;
    const uint64_t me = 0x77;
    test_eos_payload(&sb, &me, 1, &me, 1, 0);
    ss_header_t h = { SS_MSG_EOS, 0, STREAM, me, 0, 1, 0 };
    assert_int_equal(ss_producer_publish(p, &h, "", 0, sb.data, sb.size, NULL), SS_OK);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(ss_producer_drain(p, 3000), SS_OK);
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(c1, 3000, &d), SS_OK);
    assert_int_equal(d.header.type, SS_MSG_EOS);
    assert_int_equal(d.flags, 0);
    assert_int_equal(ss_consumer_ack(c1, d.tag), SS_OK);
    /* The router has ended; it still answers a newcomer during its linger. */
    o = link_opts(0, "late");
    assert_int_equal(ss_consumer_new(zctx, ss_router_backend(rr.r), &o, &c2, err, sizeof err), SS_OK);
    assert_int_equal(ss_consumer_recv(c2, 3000, &d), SS_OK);
    assert_int_equal(d.header.type, SS_MSG_EOS);
    assert_int_equal(d.flags, SS_LINK_LATE);
    assert_int_equal(d.header.count, 1);
    assert_int_equal(ss_consumer_ack(c2, d.tag), SS_OK);
    assert_int_equal(test_router_finish(&rr, 5), SS_OK);
    ss_router_destroy(&rr.r);
    ss_consumer_destroy(&c1);
    ss_consumer_destroy(&c2);
    ss_producer_destroy(&p);
    zmq_ctx_term(zctx);
}

static void sockets_link_takes_the_granted_window(void **state)
{
    void *zctx = zmq_ctx_new();
    test_router rr;
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.frontend = o.backend = "tcp://127.0.0.1:*";
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    o.max_window = 3;
    test_router_start(&rr, zctx, &o);
    static const struct { unsigned asked, used; } cases[] = { { 100, 3 }, { 2, 2 }, { 0, 3 } };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256];
        ss_link_opts lo = link_opts(0x900 + i, "windowed");
        lo.window = cases[i].asked;
        ss_producer_t *p = NULL;
        assert_int_equal(ss_producer_new(zctx, ss_router_frontend(rr.r), &lo, NULL, NULL, &p, err,
                                         sizeof err), SS_OK);
        ASSERT_UINT_EQ(ss_producer_window(p), cases[i].used);
        ss_producer_destroy(&p);
    }
    rr.stop = 1;
    test_router_finish(&rr, 5);
    ss_router_destroy(&rr.r);
    zmq_ctx_term(zctx);
}

static void sockets_consumer_reject_frees_the_lineage(void **state)
{
    /* Links end to end: a squatter's batch rejected by the consumer with
     * ss_consumer_reject lets the real batch with the same lineage through;
     * a plain ss_consumer_ack would have made it a duplicate. */
    void *zctx = zmq_ctx_new();
    test_router rr;
    router_start(&rr, zctx, 0);
    char err[256];
    ss_link_opts so = link_opts(0x666, "squatter"), po = link_opts(0x50c, "source");
    ss_link_opts co = link_opts(0x201, "consumer");
    ss_producer_t *squat = NULL, *src = NULL;
    ss_consumer_t *c = NULL;
    assert_int_equal(ss_producer_new(zctx, ss_router_frontend(rr.r), &so, NULL, NULL, &squat, err,
                                     sizeof err), SS_OK);
    assert_int_equal(ss_producer_new(zctx, ss_router_frontend(rr.r), &po, NULL, NULL, &src, err,
                                     sizeof err), SS_OK);
    uint8_t lin[LIN];
    ss_lineage_put(lin, 0, (ss_lineage_id){ 0x50c, 0 });
    for (int round = 0; round < 2; round++) {
        ss_producer_t *p = round == 0 ? squat : src;
        ss_header_t h = { SS_MSG_DATA, 0, STREAM, round == 0 ? 0x666 : 0x50c, round, 1, 0 };
        assert_int_equal(ss_producer_publish(p, &h, lin, sizeof lin, "\x91\x01", 2, NULL), SS_OK);
        assert_int_equal(ss_producer_drain(p, 3000), SS_OK);   /* both stored before any consumer */
    }
    assert_int_equal(ss_consumer_new(zctx, ss_router_backend(rr.r), &co, &c, err, sizeof err), SS_OK);
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(c, 3000, &d), SS_OK);
    ASSERT_UINT_EQ(d.header.producer, 0x666);
    assert_int_equal(ss_consumer_reject(c, d.tag), SS_OK);
    assert_int_equal(ss_consumer_recv(c, 3000, &d), SS_OK);
    ASSERT_UINT_EQ(d.header.producer, 0x50c);
    assert_int_equal(ss_consumer_ack(c, d.tag), SS_OK);
    rr.stop = 1;
    test_router_finish(&rr, 5);
    ss_router_stats st;
    ss_router_get_stats(rr.r, &st);
    ASSERT_UINT_EQ(st.rejected, 1);
    ASSERT_UINT_EQ(st.parked, 1);
    ASSERT_UINT_EQ(st.duplicates, 0);
    ASSERT_UINT_EQ(st.batches_in, 2);
    ss_router_destroy(&rr.r);
    ss_consumer_destroy(&c);
    ss_producer_destroy(&squat);
    ss_producer_destroy(&src);
    zmq_ctx_term(zctx);
}

static void link_join_times_out_naming_address(void **state)
{
    void *zctx = zmq_ctx_new();
    /* Bind a port and close it, so that nobody answers there. */
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(s, "tcp://127.0.0.1:*"), 0);
    char addr[256];
    size_t len = sizeof addr;
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, addr, &len);
    zmq_close(s);
    ss_link_opts o = link_opts(0, "lonely");
    o.join_timeout_ms = 300;
    ss_producer_t *p = NULL;
    char err[512];
    int64_t t0 = ss_now_ms();
    assert_int_equal(ss_producer_new(zctx, addr, &o, NULL, NULL, &p, err, sizeof err),
                     SS_ERR_TIMEOUT);
    ASSERT_INT_GE(ss_now_ms() - t0, 300);
    assert_null(p);
    ASSERT_CONTAINS(err, addr);
    ASSERT_CONTAINS(err, "no router answered");
    ASSERT_CONTAINS(err, "0.3 s");
    ss_consumer_t *c = NULL;
    assert_int_equal(ss_consumer_new(zctx, addr, &o, &c, err, sizeof err), SS_ERR_TIMEOUT);
    assert_null(c);
    ss_producer_destroy(&p);   /* NULL is fine */
    ss_consumer_destroy(&c);
    zmq_ctx_term(zctx);
}

static void link_notices_silent_router(void **state)
{
    void *zctx = zmq_ctx_new();
    test_router rr;
    router_start(&rr, zctx, 0);
    ss_link_opts o = link_opts(0, "abandoned");
    ss_consumer_t *c = NULL;
    char err[256];
    assert_int_equal(ss_consumer_new(zctx, ss_router_backend(rr.r), &o, &c, err, sizeof err), SS_OK);
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(c, 2 * LIVE_MS, &d), SS_ERR_TIMEOUT);   /* alive, idle */
    rr.stop = 1;
    assert_int_equal(test_router_finish(&rr, 5), SS_ERR_CLOSED);
    ss_router_destroy(&rr.r);
    int64_t t0 = ss_now_ms();
    assert_int_equal(ss_consumer_recv(c, 5000, &d), SS_ERR_CLOSED);
    ASSERT_INT_LT(ss_now_ms() - t0, 5000);
    assert_int_equal(ss_consumer_ack(c, 1), SS_ERR_CLOSED);
    ss_consumer_destroy(&c);
    zmq_ctx_term(zctx);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* e.g. TEST_SKIP='sockets_*' to run only the state tests (under valgrind). */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (getenv("TEST_SKIP"))
        cmocka_set_skip_filter(getenv("TEST_SKIP"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(join_and_roles),
        cmocka_unit_test(heartbeats_when_idle),
        cmocka_unit_test(dispatch_needs_credit),
        cmocka_unit_test(dispatch_is_fair),
        cmocka_unit_test(ack_releases),
        cmocka_unit_test(dead_consumer_requeues_at_head),
        cmocka_unit_test(leave_and_lost_connection),
        cmocka_unit_test(dedup_single),
        cmocka_unit_test(dedup_overlapping_lineage),
        cmocka_unit_test(eos_after_every_member),
        cmocka_unit_test(eos_waits_for_acks),
        cmocka_unit_test(eos_dead_member_is_finished),
        cmocka_unit_test(eos_member_that_never_joined),
        cmocka_unit_test(eos_waits_for_a_consumer),
        cmocka_unit_test(eos_consumer_dies_before_ack),
        cmocka_unit_test(late_joiner_gets_late_eos),
        cmocka_unit_test(backpressure_withholds_receipts),
        cmocka_unit_test(window_is_granted_in_welcome),
        cmocka_unit_test(window_overrun_is_dropped_and_evicts),
        cmocka_unit_test(honest_producer_never_overruns),
        cmocka_unit_test(squatter_rejected_by_consumer_frees_the_lineage),
        cmocka_unit_test(squatter_accepted_by_consumer_drop_is_logged),
        cmocka_unit_test(redelivery_keeps_claims_pending),
        cmocka_unit_test(partial_rejected_lets_batches_through_alone),
        cmocka_unit_test(claims_forgotten_among_many),
        cmocka_unit_test(eos_waits_for_parked_batches),
        cmocka_unit_test(eos_from_unlisted_producer_is_merged_not_awaited),
        cmocka_unit_test(refuses_what_is_not_ours),
        cmocka_unit_test(sockets_killed_consumer_is_replaced),
        cmocka_unit_test(sockets_two_producers_three_consumers),
        cmocka_unit_test(sockets_silent_consumer_is_replaced),
        cmocka_unit_test(sockets_bad_input_is_refused),
        cmocka_unit_test(sockets_backpressure_bounds_memory),
        cmocka_unit_test(sockets_late_joiner_during_linger),
        cmocka_unit_test(sockets_link_takes_the_granted_window),
        cmocka_unit_test(sockets_consumer_reject_frees_the_lineage),
        cmocka_unit_test(link_join_times_out_naming_address),
        cmocka_unit_test(link_notices_silent_router),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
