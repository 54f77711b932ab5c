/*
 * late_router.c - a hostile router for the attack tests
 * (tests/integration/t_router_attacks.sh): what the host of a router can
 * run in its place. It binds a router's two sockets and runs the router's
 * own protocol state machine (lib/net/router_state.h), so it relays
 * honestly, except that in mode `late` it sets the LATE flag on every end
 * of stream it delivers, telling each consumer it joined after the end.
 *
 *   late_router late|honest [--ready-fd FD]
 *
 * Binds tcp://127.0.0.1:* twice and writes "ready FRONTEND BACKEND\n" to FD
 * (default 1). Runs until end of stream was acknowledged by every consumer,
 * or SIGTERM. The pipeline id comes from SS_STREAM. Exit status 0, or 1 when
 * a socket fails, 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L
#include "net/router_state.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

typedef struct {
    void *sock[2];
    int late;          /* lie: flag every EOS delivery LATE */
    uint64_t lied;
} relay;

static int relay_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                      const ss_link_t *link, zmq_msg_t *stream)
{
    relay *r = arg;
    ss_link_t l = *link;
    ss_header_t h;
    if (r->late && l.kind == SS_LINK_DELIVER && stream
        && ss_header_decode(zmq_msg_data(&stream[0]), zmq_msg_size(&stream[0]), &h) == SS_OK
        && h.type == SS_MSG_EOS) {
        l.flags |= SS_LINK_LATE;
        r->lied++;
    }
    return ss_router_send_frames(r->sock[side], ident, idlen, &l, stream);
}

static int read_one(relay *r, ss_router_state_t *st, int side, zmq_msg_t *in)
{
    if (zmq_msg_recv(&in[0], r->sock[side], ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    size_t n = 0;
    int more = zmq_msg_more(&in[0]);
    while (more) {
        zmq_msg_t *m = &in[1 + (n < SS_ROUTER_MAX_PARTS ? n : SS_ROUTER_MAX_PARTS)];
        if (zmq_msg_recv(m, r->sock[side], 0) < 0)
            return -1;
        more = zmq_msg_more(m);
        if (n <= SS_ROUTER_MAX_PARTS)
            n++;
    }
    ss_router_state_input(st, side, zmq_msg_data(&in[0]), zmq_msg_size(&in[0]), &in[1], n,
                          ss_now_ms());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "late") && strcmp(argv[1], "honest"))) {
        fprintf(stderr, "usage: late_router late|honest [--ready-fd FD]\n");
        return 2;
    }
    int ready_fd = 1;
    if (argc == 4 && !strcmp(argv[2], "--ready-fd"))
        ready_fd = atoi(argv[3]);
    ss_log_init("late_router");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    relay r = { .late = !strcmp(argv[1], "late") };
    ss_router_opts o;
    ss_router_opts_init(&o);
    char err[160];
    if (ss_stream_from_env(&o.stream, err, sizeof err) != SS_OK) {
        fprintf(stderr, "late_router: %s\n", err);
        return 2;
    }
    void *zctx = zmq_ctx_new();
    char ep[2][256];
    for (int side = 0; side < 2; side++) {
        int one = 1, zero = 0;
        int64_t maxmsg = 2 * (int64_t)SS_MAX_MESSAGE;
        r.sock[side] = zmq_socket(zctx, ZMQ_ROUTER);
        zmq_setsockopt(r.sock[side], ZMQ_ROUTER_MANDATORY, &one, sizeof one);
        zmq_setsockopt(r.sock[side], ZMQ_ROUTER_HANDOVER, &one, sizeof one);
        zmq_setsockopt(r.sock[side], ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(r.sock[side], ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
        size_t len = sizeof ep[side];
        if (zmq_bind(r.sock[side], "tcp://127.0.0.1:*") != 0
            || zmq_getsockopt(r.sock[side], ZMQ_LAST_ENDPOINT, ep[side], &len) != 0) {
            fprintf(stderr, "late_router: cannot bind: %s\n", zmq_strerror(errno));
            return 1;
        }
    }
    ss_router_state_t *st = NULL;
    if (ss_router_state_new(&o, ss_random_id(), relay_send, &r, &st) != SS_OK)
        return 1;
    dprintf(ready_fd, "ready %s %s\n", ep[0], ep[1]);
    if (ready_fd != 1)
        close(ready_fd);

    zmq_msg_t in[2 + SS_ROUTER_MAX_PARTS];
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        zmq_msg_init(&in[i]);
    int status = 0;
    while (!stop_flag && !ss_router_state_done(st, NULL)) {
        zmq_pollitem_t items[2] = { { r.sock[0], 0, ZMQ_POLLIN, 0 }, { r.sock[1], 0, ZMQ_POLLIN, 0 } };
        if (zmq_poll(items, 2, 25) < 0 && errno != EINTR) {
            status = 1;
            break;
        }
        for (int side = 0; side < 2; side++)
            while (read_one(&r, st, side, in) > 0)
                ;
        ss_router_state_tick(st, ss_now_ms());
    }
    fprintf(stderr, "late_router: %s; %llu end-of-stream deliveries flagged LATE\n",
            ss_router_state_done(st, NULL) ? "end of stream acknowledged" : "stopped",
            (unsigned long long)r.lied);
    ss_router_state_destroy(&st);
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        zmq_msg_close(&in[i]);
    int linger = 500;
    for (int side = 0; side < 2; side++) {
        zmq_setsockopt(r.sock[side], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(r.sock[side]);
    }
    zmq_ctx_term(zctx);
    return status;
}
