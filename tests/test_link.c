/*
 * test_link.c - the links (lib/net/link.c), the peer side of the router
 * protocol (docs/protocol.md), against a real router.
 *
 * Each test runs a router (lib/net/router.c) in a thread on
 * tcp://127.0.0.1:* and drives producer and consumer links from the test's
 * own thread, or from a consumer thread whose results the test checks after
 * joining it (cmocka's assertions are only made on the main thread). One
 * test stands in for the router with a raw ROUTER socket to see the join
 * handshake and the credit frames exactly as they are sent.
 *
 * The router withholds receipts while it holds more than max_bytes: with a
 * max_bytes of 1 and no consumer, nothing is receipted, which is how a full
 * window is made. Timeouts are generous (heartbeat 100 ms, liveness 3 s):
 * these tests share the machine with others.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test.h"
#include "net/link.h"
#include "net/router.h"
#include "wire/eos.h"
#include "wire/frame.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define STREAM 0x53531ea5u
#define HB_MS 100
#define LIVE_MS 3000
#define PAYLOAD 100

/* ---- a router in a thread (test.h) ---- */

typedef test_router router_run;

static void router_start(router_run *rr, void *zctx, size_t max_bytes)
{
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.frontend = "tcp://127.0.0.1:*";
    o.backend = "tcp://127.0.0.1:*";
    o.name = "test-router";
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    if (max_bytes)
        o.max_bytes = max_bytes;
    test_router_start(rr, zctx, &o);
}

/* Stop the router (it has not reached end of stream: SS_ERR_CLOSED), return
 * its statistics and free it. */
static ss_router_stats router_stop(router_run *rr)
{
    ss_router_stats st;
    rr->stop = 1;
    test_router_finish(rr, 10);
    ss_router_get_stats(rr->r, &st);
    ss_router_destroy(&rr->r);
    return st;
}

static ss_link_opts link_opts(uint64_t id, const char *name, unsigned window)
{
    ss_link_opts o;
    ss_link_opts_init(&o);
    o.id = id;
    o.name = name;
    o.stream = STREAM;
    o.window = window;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    o.join_timeout_ms = 5000;
    return o;
}

static ss_producer_t *producer_new(void *zctx, router_run *rr, uint64_t id, unsigned window,
                                   ss_receipt_fn *on_receipt, void *arg)
{
    ss_link_opts o = link_opts(id, "test-producer", window);
    ss_producer_t *p = NULL;
    char err[256];
    ss_err e = ss_producer_new(zctx, ss_router_frontend(rr->r), &o, on_receipt, arg, &p, err,
                               sizeof err);
    if (e != SS_OK)
        fail_msg("producer: %s: %s", ss_strerror(e), err);
    return p;
}

static ss_consumer_t *consumer_new(void *zctx, router_run *rr, const char *name, unsigned window)
{
    ss_link_opts o = link_opts(0, name, window);
    ss_consumer_t *c = NULL;
    char err[256];
    ss_err e = ss_consumer_new(zctx, ss_router_backend(rr->r), &o, &c, err, sizeof err);
    if (e != SS_OK)
        fail_msg("consumer %s: %s: %s", name, ss_strerror(e), err);
    return c;
}

/* Publish batch `seq` of producer `prod`: lineage (prod, seq), a payload of
 * PAYLOAD bytes. */
static ss_err publish(ss_producer_t *p, uint64_t prod, uint64_t seq, uint32_t stream,
                      uint64_t *pubseq)
{
    static const uint8_t payload[PAYLOAD];
    uint8_t lin[SS_LINEAGE_ENTRY];
    ss_lineage_put(lin, 0, (ss_lineage_id){ prod, seq });
    ss_header_t h = { .type = SS_MSG_DATA, .stream = stream, .producer = prod, .seq = seq,
                      .count = 1 };
    return ss_producer_publish(p, &h, lin, sizeof lin, payload, sizeof payload, pubseq);
}

/* Receipts as the callback saw them. */
typedef struct {
    uint64_t seq[64];
    size_t n;
} receipts;

static void on_receipt(void *arg, uint64_t pubseq)
{
    receipts *r = arg;
    if (r->n < 64)
        r->seq[r->n++] = pubseq;
}

static void assert_receipts_in_order(const receipts *r, size_t n)
{
    assert_int_equal(r->n, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(r->seq[i], i);
}

/* ---- a consumer thread: takes `want` batches, acknowledging each ---- */

typedef struct {
    void *zctx;
    const char *addr;
    int want;
    /* results */
    ss_err rc;
    int got;
    pthread_t th;
    int started;
} consumer_job;

static void *consumer_thread(void *arg)
{
    consumer_job *j = arg;
    ss_link_opts o = link_opts(0, "thread-consumer", 2);
    ss_consumer_t *c = NULL;
    char err[256];
    if ((j->rc = ss_consumer_new(j->zctx, j->addr, &o, &c, err, sizeof err)) != SS_OK)
        return NULL;
    int64_t deadline = ss_now_ms() + 20000;
    while (j->got < j->want && ss_now_ms() < deadline) {
        ss_delivery_t d;
        ss_err rc = ss_consumer_recv(c, 200, &d);
        if (rc == SS_ERR_TIMEOUT)
            continue;
        if (rc == SS_OK)
            rc = ss_consumer_ack(c, d.tag);
        if (rc != SS_OK) {
            j->rc = rc;
            break;
        }
        j->got++;
    }
    ss_consumer_destroy(&c);
    return NULL;
}

static void consumer_job_start(consumer_job *j)
{
    j->started = 1;
    assert_int_equal(pthread_create(&j->th, NULL, consumer_thread, j), 0);
}

/* ---- tests ---- */

/* The window: publish returns at once while fewer than `window` batches are
 * unreceipted, then blocks (running its tick hook) until receipts come. */
typedef struct {
    ss_producer_t *p;
    consumer_job *job;
    int ticks;
    unsigned in_flight_seen;   /* in_flight at the first tick */
    unsigned in_flight_max;
} window_probe;

static void window_tick(void *arg)
{
    window_probe *w = arg;
    unsigned f = ss_producer_in_flight(w->p);
    if (f > w->in_flight_max)
        w->in_flight_max = f;
    if (w->ticks++ == 0) {
        w->in_flight_seen = f;
        consumer_job_start(w->job);   /* only now do receipts start to flow */
    }
}

static void producer_window_blocks_until_receipts(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 1);   /* every receipt withheld while a batch is held */
    receipts rc = { 0 };
    const uint64_t prod = 0xa1;
    ss_producer_t *p = producer_new(zctx, &rr, prod, 3, on_receipt, &rc);

    uint64_t pubseq;
    for (uint64_t i = 0; i < 3; i++) {
        int64_t t0 = ss_now_ms();
        assert_int_equal(publish(p, prod, i, STREAM, &pubseq), SS_OK);
        assert_int_equal(pubseq, i);
        assert_true(ss_now_ms() - t0 < 1000);   /* room in the window: no wait */
        assert_int_equal(ss_producer_in_flight(p), i + 1);
    }
    /* Nothing is receipted: servicing and draining change nothing. */
    assert_int_equal(ss_producer_service(p, 300), SS_OK);
    assert_int_equal(ss_producer_in_flight(p), 3);
    int64_t t0 = ss_now_ms();
    assert_int_equal(ss_producer_drain(p, 300), SS_ERR_TIMEOUT);
    assert_true(ss_now_ms() - t0 >= 300);
    assert_int_equal(rc.n, 0);

    /* The window is full: the fourth publish waits, ticking, until a
     * consumer (started by the first tick) takes the batches and the router
     * releases their receipts. */
    consumer_job job = { .zctx = zctx, .addr = ss_router_backend(rr.r), .want = 4 };
    window_probe w = { .p = p, .job = &job };
    ss_producer_set_tick(p, window_tick, &w);
    assert_int_equal(publish(p, prod, 3, STREAM, &pubseq), SS_OK);
    assert_int_equal(pubseq, 3);
    assert_true(w.ticks >= 1);
    assert_int_equal(w.in_flight_seen, 3);
    assert_int_equal(w.in_flight_max, 3);
    assert_true(ss_producer_in_flight(p) >= 1 && ss_producer_in_flight(p) <= 3);

    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    assert_int_equal(ss_producer_in_flight(p), 0);
    assert_receipts_in_order(&rc, 4);
    assert_int_equal(ss_producer_refused(p), 0);
    assert_true(job.started);
    pthread_join(job.th, NULL);
    assert_int_equal(job.rc, SS_OK);
    assert_int_equal(job.got, 4);

    ss_producer_destroy(&p);
    assert_null(p);
    ss_router_stats st = router_stop(&rr);
    assert_int_equal(st.batches_in, 4);
    assert_int_equal(st.batches_out, 4);
    assert_int_equal(st.refused, 0);
    zmq_ctx_term(zctx);
}

/* Receipts advance in_flight, in publish order, and drain waits for them. */
static void receipts_advance_in_flight(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 0);
    receipts rc = { 0 };
    const uint64_t prod = 0xa2;
    ss_producer_t *p = producer_new(zctx, &rr, prod, 8, on_receipt, &rc);
    assert_int_equal(ss_producer_in_flight(p), 0);
    for (uint64_t i = 0; i < 5; i++) {
        uint64_t pubseq;
        assert_int_equal(publish(p, prod, i, STREAM, &pubseq), SS_OK);
        assert_int_equal(pubseq, i);
    }
    assert_true(ss_producer_in_flight(p) <= 5);
    unsigned last = ss_producer_in_flight(p);
    int64_t deadline = ss_now_ms() + 10000;
    while (ss_producer_in_flight(p) > 0 && ss_now_ms() < deadline) {
        assert_int_equal(ss_producer_service(p, 100), SS_OK);
        unsigned now = ss_producer_in_flight(p);
        assert_true(now <= last);   /* receipts only ever shrink it */
        assert_int_equal(rc.n + now, 5);
        last = now;
    }
    assert_int_equal(ss_producer_in_flight(p), 0);
    assert_receipts_in_order(&rc, 5);
    assert_int_equal(ss_producer_drain(p, 0), SS_OK);   /* nothing left: at once */
    ss_producer_destroy(&p);
    ss_router_stats st = router_stop(&rr);
    assert_int_equal(st.batches_in, 5);
    zmq_ctx_term(zctx);
}

/* Read what came (ss_consumer_tick); true once c holds two deliveries. */
static int ticked_buffers_two(void *c)
{
    ss_consumer_tick(c);
    return ss_consumer_buffered(c) == 2;
}

/* Read what came; true once c holds three deliveries (window + 1). */
static int ticked_buffers_three(void *c)
{
    ss_consumer_tick(c);
    return ss_consumer_buffered(c) == 3;
}

/* A consumer is delivered at most `window` batches it was not yet handed:
 * an idle consumer holds two of ten, a second consumer gets the other
 * eight. */
static void consumer_credit_bounds_deliveries(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 0);
    ss_consumer_t *idle = consumer_new(zctx, &rr, "idle", 2);
    const uint64_t prod = 0xa3;
    ss_producer_t *p = producer_new(zctx, &rr, prod, 16, NULL, NULL);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(publish(p, prod, i, STREAM, NULL), SS_OK);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    /* the router delivers all it may to `idle`: its window of two */
    test_wait_for(10000, ticked_buffers_two, idle, "the idle consumer to buffer its window");

    ss_consumer_t *busy = consumer_new(zctx, &rr, "busy", 16);
    int got_busy = 0;
    int64_t deadline = ss_now_ms() + 10000;
    while (got_busy < 10 && ss_now_ms() < deadline) {
        ss_delivery_t d;
        ss_err e = ss_consumer_recv(busy, 500, &d);
        ss_consumer_tick(idle);   /* heartbeats; buffers, grants nothing */
        if (e == SS_ERR_TIMEOUT && got_busy >= 8)
            break;
        if (e == SS_ERR_TIMEOUT)
            continue;
        assert_int_equal(e, SS_OK);
        assert_true(d.header.seq >= 2);
        assert_int_equal(ss_consumer_ack(busy, d.tag), SS_OK);
        got_busy++;
    }
    assert_int_equal(got_busy, 8);

    /* The idle consumer now takes what it held: the first two, no more. */
    for (uint64_t i = 0; i < 2; i++) {
        ss_delivery_t d;
        assert_int_equal(ss_consumer_recv(idle, 2000, &d), SS_OK);
        assert_int_equal(d.header.type, SS_MSG_DATA);
        assert_int_equal(d.header.seq, i);
        assert_int_equal(d.flags, 0);
        assert_int_equal(ss_consumer_ack(idle, d.tag), SS_OK);
    }
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(idle, 300, &d), SS_ERR_TIMEOUT);

    ss_consumer_destroy(&idle);
    ss_consumer_destroy(&busy);
    ss_producer_destroy(&p);
    ss_router_stats st = router_stop(&rr);
    assert_int_equal(st.batches_in, 10);
    assert_int_equal(st.batches_out, 10);
    assert_int_equal(st.redelivered, 0);
    zmq_ctx_term(zctx);
}

/* An acknowledged batch is done with; one that is not comes back, flagged
 * REDELIVERED, once its consumer leaves. */
static void ack_releases_and_unacked_returns(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 0);
    ss_consumer_t *first = consumer_new(zctx, &rr, "first", 2);
    const uint64_t prod = 0xa4;
    ss_producer_t *p = producer_new(zctx, &rr, prod, 8, NULL, NULL);
    for (uint64_t i = 0; i < 2; i++)
        assert_int_equal(publish(p, prod, i, STREAM, NULL), SS_OK);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(first, 3000, &d), SS_OK);
    assert_int_equal(d.header.seq, 0);
    assert_int_equal(ss_consumer_ack(first, d.tag), SS_OK);
    assert_int_equal(ss_consumer_recv(first, 3000, &d), SS_OK);
    assert_int_equal(d.header.seq, 1);
    ss_consumer_destroy(&first);   /* leaves without acknowledging batch 1 */
    assert_null(first);

    ss_consumer_t *second = consumer_new(zctx, &rr, "second", 2);
    assert_int_equal(ss_consumer_recv(second, 5000, &d), SS_OK);
    assert_int_equal(d.header.seq, 1);
    assert_int_equal(d.flags, SS_LINK_REDELIVERED);
    assert_int_equal(ss_consumer_ack(second, d.tag), SS_OK);
    assert_int_equal(ss_consumer_recv(second, 300, &d), SS_ERR_TIMEOUT);   /* 0 is not back */

    ss_consumer_destroy(&second);
    ss_producer_destroy(&p);
    ss_router_stats st = router_stop(&rr);
    assert_int_equal(st.batches_in, 2);
    assert_int_equal(st.batches_out, 3);
    assert_int_equal(st.redelivered, 1);
    assert_int_equal(st.bytes_held, 0);   /* every delivery acknowledged */
    zmq_ctx_term(zctx);
}

/* A batch the router refuses is receipted REFUSED and counted; a publish
 * the link itself refuses sends nothing. */
static void refused_publish_is_counted(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 0);
    receipts rc = { 0 };
    const uint64_t prod = 0xa5;
    ss_producer_t *p = producer_new(zctx, &rr, prod, 8, on_receipt, &rc);
    uint64_t pubseq;

    /* Another pipeline's batch. */
    assert_int_equal(publish(p, prod, 0, STREAM + 1, &pubseq), SS_OK);
    assert_int_equal(pubseq, 0);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    assert_int_equal(ss_producer_refused(p), 1);
    assert_int_equal(ss_producer_in_flight(p), 0);

    /* An end of stream whose payload is not the end-of-stream map. */
    static const uint8_t not_a_map[] = { 0x91, 0x01 };
    ss_header_t h = { .type = SS_MSG_EOS, .stream = STREAM, .producer = prod, .seq = 1,
                      .count = 1 };
    assert_int_equal(ss_producer_publish(p, &h, "", 0, not_a_map, sizeof not_a_map, &pubseq),
                     SS_OK);
    assert_int_equal(pubseq, 1);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    assert_int_equal(ss_producer_refused(p), 2);

    /* Refused by the link before sending: too big, lineage not sorted. */
    size_t big = SS_MAX_MESSAGE;
    uint8_t *huge = calloc(1, big);
    assert_non_null(huge);
    h.type = SS_MSG_DATA;
    assert_int_equal(ss_producer_publish(p, &h, "", 0, huge, big, &pubseq), SS_ERR_TOOBIG);
    free(huge);
    uint8_t lin[2 * SS_LINEAGE_ENTRY];
    ss_lineage_put(lin, 0, (ss_lineage_id){ prod, 9 });
    ss_lineage_put(lin, 1, (ss_lineage_id){ prod, 8 });
    assert_int_equal(ss_producer_publish(p, &h, lin, sizeof lin, "x", 1, &pubseq), SS_ERR_FORMAT);
    assert_int_equal(ss_producer_in_flight(p), 0);

    /* A good batch: receipted plainly, with the next publish sequence. */
    assert_int_equal(publish(p, prod, 2, STREAM, &pubseq), SS_OK);
    assert_int_equal(pubseq, 2);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    assert_int_equal(ss_producer_refused(p), 2);
    assert_receipts_in_order(&rc, 3);   /* refusals are receipts too */

    ss_producer_destroy(&p);
    ss_router_stats st = router_stop(&rr);
    assert_int_equal(st.refused, 2);
    assert_int_equal(st.batches_in, 1);
    zmq_ctx_term(zctx);
}

/* A router that stops answering: a blocked publish and a drain return
 * SS_ERR_CLOSED once the liveness timeout has passed. */
static void publish_and_drain_end_when_router_goes(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 1);
    ss_link_opts o = link_opts(0xa6, "orphan", 1);
    o.liveness_ms = 600;
    ss_producer_t *p = NULL;
    char err[256];
    assert_int_equal(ss_producer_new(zctx, ss_router_frontend(rr.r), &o, NULL, NULL, &p, err,
                                     sizeof err), SS_OK);
    assert_int_equal(publish(p, 0xa6, 0, STREAM, NULL), SS_OK);   /* withheld receipt */
    router_stop(&rr);
    int64_t t0 = ss_now_ms();
    assert_int_equal(publish(p, 0xa6, 1, STREAM, NULL), SS_ERR_CLOSED);
    assert_true(ss_now_ms() - t0 < 5000);
    assert_int_equal(ss_producer_drain(p, 5000), SS_ERR_CLOSED);
    assert_int_equal(ss_producer_in_flight(p), 1);
    ss_producer_destroy(&p);
    zmq_ctx_term(zctx);
}

/* End of stream through links: the producer's EOS, the router's EOS to the
 * consumer listing it, the acknowledgement that ends the router. */
static void drain_and_end_of_stream(void **state)
{
    void *zctx = zmq_ctx_new();
    router_run rr;
    router_start(&rr, zctx, 0);
    ss_consumer_t *c = consumer_new(zctx, &rr, "sink", 2);
    const uint64_t prod = 0xa7;
    receipts rc = { 0 };
    ss_producer_t *p = producer_new(zctx, &rr, prod, 4, on_receipt, &rc);
    assert_int_equal(publish(p, prod, 0, STREAM, NULL), SS_OK);

    ss_eos_writer w;
    const uint8_t *payload;
    size_t len;
    char err[256];
    ss_eos_writer_init(&w, 0);
    ss_eos_writer_begin(&w, &prod, 1, 0);
    assert_int_equal(ss_eos_writer_finish(&w, &payload, &len, err, sizeof err), SS_OK);
    ss_header_t h = { .type = SS_MSG_EOS, .stream = STREAM, .producer = prod, .seq = 1,
                      .count = 1 };
    assert_int_equal(ss_producer_publish(p, &h, "", 0, payload, len, NULL), SS_OK);
    ss_eos_writer_cleanup(&w);
    assert_int_equal(ss_producer_drain(p, 10000), SS_OK);
    assert_receipts_in_order(&rc, 2);

    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(c, 5000, &d), SS_OK);
    assert_int_equal(d.header.type, SS_MSG_DATA);
    assert_int_equal(ss_consumer_ack(c, d.tag), SS_OK);
    assert_int_equal(ss_consumer_recv(c, 5000, &d), SS_OK);
    assert_int_equal(d.header.type, SS_MSG_EOS);
    assert_int_equal(d.flags, 0);
    assert_int_equal(d.header.count, 1);
    ss_eos_reader r;
    assert_int_equal(ss_eos_read(&r, d.payload, d.payload_len, err, sizeof err), SS_OK);
    assert_int_equal(ss_eos_nmembers(&r), 1);   /* the consumer itself */
    ss_eos_reader_cleanup(&r);
    assert_int_equal(ss_consumer_ack(c, d.tag), SS_OK);

    /* The router ends by itself once the consumer acknowledged the EOS. */
    assert_int_equal(test_router_finish(&rr, 10), SS_OK);
    ss_router_destroy(&rr.r);
    ss_consumer_destroy(&c);
    ss_producer_destroy(&p);
    zmq_ctx_term(zctx);
}

/* ---- the handshake and the credit frames, seen by a raw ROUTER ---- */

typedef struct {
    void *zctx;
    char addr[256];
    int consumer;
    ss_producer_t *p;
    ss_consumer_t *c;
    ss_err rc;
    volatile int done;
    pthread_t th;
} join_job;

static void *join_thread(void *arg)
{
    join_job *j = arg;
    ss_link_opts o = link_opts(0x10ad + (uint64_t)j->consumer, "joiner", 2);
    char err[256];
    if (j->consumer)
        j->rc = ss_consumer_new(j->zctx, j->addr, &o, &j->c, err, sizeof err);
    else
        j->rc = ss_producer_new(j->zctx, j->addr, &o, NULL, NULL, &j->p, err, sizeof err);
    j->done = 1;
    return NULL;
}

/* The next message from the peer other than a heartbeat: its routing id
 * into rid, its link frame decoded, its other frames counted. */
static ss_link_t raw_next(void *s, const char *what, uint8_t rid[SS_ROUTING_ID_SIZE], char *extra,
                          size_t extralen, int *nextra)
{
    for (;;) {
        int n = zmq_recv(s, rid, SS_ROUTING_ID_SIZE, 0);
        if (n < 0)
            fail_msg("waiting for %s from the link: %s", what, zmq_strerror(errno));
        assert_int_equal(n, SS_ROUTING_ID_SIZE);
        uint8_t b[64];
        n = zmq_recv(s, b, sizeof b, 0);
        assert_int_equal(n, SS_LINK_SIZE);
        ss_link_t l;
        assert_int_equal(ss_link_decode(b, (size_t)n, &l), SS_OK);
        *nextra = 0;
        int more;
        size_t ml = sizeof more;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
        while (more) {
            int k = zmq_recv(s, extra, extralen - 1, 0);
            assert_true(k >= 0);
            extra[(size_t)k < extralen - 1 ? (size_t)k : extralen - 1] = '\0';
            (*nextra)++;
            zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
        }
        if (l.kind != SS_LINK_HEARTBEAT)
            return l;
    }
}

static void raw_send(void *s, const uint8_t rid[SS_ROUTING_ID_SIZE], uint8_t kind, uint16_t flags,
                     uint64_t tag, int more)
{
    uint8_t b[SS_LINK_SIZE];
    ss_link_encode(&(ss_link_t){ kind, flags, 0, tag }, b);
    assert_int_equal(zmq_send(s, rid, SS_ROUTING_ID_SIZE, ZMQ_SNDMORE), SS_ROUTING_ID_SIZE);
    assert_int_equal(zmq_send(s, b, sizeof b, more ? ZMQ_SNDMORE : 0), (int)sizeof b);
}

/* DELIVER of a one-event DATA batch with delivery tag `tag`. */
static void raw_deliver(void *s, const uint8_t rid[SS_ROUTING_ID_SIZE], uint64_t tag)
{
    uint8_t hb[SS_HEADER_SIZE];
    ss_header_encode(&(ss_header_t){ .type = SS_MSG_DATA, .stream = STREAM, .producer = 1,
                                     .seq = tag, .count = 1 }, hb);
    raw_send(s, rid, SS_LINK_DELIVER, 0, tag, 1);
    assert_int_equal(zmq_send(s, hb, sizeof hb, ZMQ_SNDMORE), (int)sizeof hb);
    assert_int_equal(zmq_send(s, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(s, "\x91\x01", 2, 0), 2);
}

static void join_waits_for_welcome(void **state)
{
    void *zctx = zmq_ctx_new();
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0, timeo = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeo, sizeof timeo);
    assert_int_equal(zmq_bind(s, "tcp://127.0.0.1:*"), 0);

    for (int consumer = 0; consumer < 2; consumer++) {
        join_job j = { .zctx = zctx, .consumer = consumer };
        size_t len = sizeof j.addr;
        assert_int_equal(zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, j.addr, &len), 0);
        assert_int_equal(pthread_create(&j.th, NULL, join_thread, &j), 0);

        /* JOIN: routing id 'S' + id, the role, the id, the name. */
        uint8_t rid[SS_ROUTING_ID_SIZE];
        char extra[64];
        int nextra;
        ss_link_t l = raw_next(s, "JOIN", rid, extra, sizeof extra, &nextra);
        assert_int_equal(l.kind, SS_LINK_JOIN);
        assert_int_equal(l.n, consumer ? SS_ROLE_CONSUMER : SS_ROLE_PRODUCER);
        assert_int_equal(l.tag, 0x10ad + consumer);
        assert_int_equal(rid[0], SS_ROUTING_ID_PREFIX);
        assert_int_equal(ss_get_u64(rid + 1), 0x10ad + consumer);
        assert_int_equal(nextra, 1);
        assert_string_equal(extra, "joiner");

        /* Without WELCOME the constructor does not return: that it is still
         * waiting after a while is what is checked, so a sleep. */
        usleep(300 * 1000);
        assert_false(j.done);
        raw_send(s, rid, SS_LINK_WELCOME, 0, 0xbeef, 0);
        pthread_join(j.th, NULL);
        assert_int_equal(j.rc, SS_OK);

        if (consumer) {
            /* The consumer grants its window once welcomed... */
            l = raw_next(s, "CREDIT", rid, extra, sizeof extra, &nextra);
            assert_int_equal(l.kind, SS_LINK_CREDIT);
            assert_int_equal(l.n, 2);
            /* ...buffers at most window + 1 deliveries (the window, and the
             * one the application holds): of four sent beyond the credit,
             * the fourth is dropped... */
            for (uint64_t tag = 1; tag <= 4; tag++)
                raw_deliver(s, rid, tag);
            test_wait_for(5000, ticked_buffers_three, j.c, "the consumer to buffer three deliveries");
            ss_delivery_t d;
            for (uint64_t tag = 1; tag <= 3; tag++) {
                assert_int_equal(ss_consumer_recv(j.c, 3000, &d), SS_OK);
                assert_int_equal(d.tag, tag);
                /* ...and grants one credit for each delivery handed over. */
                l = raw_next(s, "CREDIT", rid, extra, sizeof extra, &nextra);
                assert_int_equal(l.kind, SS_LINK_CREDIT);
                assert_int_equal(l.n, 1);
            }
            assert_int_equal(ss_consumer_recv(j.c, 300, &d), SS_ERR_TIMEOUT);
            assert_int_equal(ss_consumer_ack(j.c, 2), SS_OK);
            l = raw_next(s, "ACK", rid, extra, sizeof extra, &nextra);
            assert_int_equal(l.kind, SS_LINK_ACK);
            assert_int_equal(l.tag, 2);
            ss_consumer_destroy(&j.c);
        } else {
            ss_producer_destroy(&j.p);
        }
        l = raw_next(s, "LEAVE", rid, extra, sizeof extra, &nextra);
        assert_int_equal(l.kind, SS_LINK_LEAVE);
    }
    zmq_close(s);
    zmq_ctx_term(zctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(join_waits_for_welcome),
        cmocka_unit_test(producer_window_blocks_until_receipts),
        cmocka_unit_test(receipts_advance_in_flight),
        cmocka_unit_test(consumer_credit_bounds_deliveries),
        cmocka_unit_test(ack_releases_and_unacked_returns),
        cmocka_unit_test(refused_publish_is_counted),
        cmocka_unit_test(publish_and_drain_end_when_router_goes),
        cmocka_unit_test(drain_and_end_of_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
