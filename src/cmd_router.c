/*
 * cmd_router.c - `securestreams router`: run one router as a process.
 *
 * Addresses come from --from/--to or, like the seed's compose files, from the
 * environment variables FROM (producers' side) and TO (consumers' side).
 * With --ready-fd the parent learns the endpoints actually bound (useful with
 * tcp://127.0.0.1:*) from one line written once both sockets are bound.
 * With --curve-key and --curve-allow (or SS_CURVE_ROUTER_KEY and
 * SS_CURVE_ALLOW) both sockets are CurveZMQ servers that let in only the
 * allowed client keys (docs/curve.md).
 * Exit status: 0 after end of stream or a stop by SIGINT/SIGTERM, 1 on a
 * runtime error, 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "net/router.h"
#include "wire/frame.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define DAY_MS (24ull * 3600 * 1000)   /* bound of every time option */
#define NOT_GIVEN UINT64_MAX           /* a number option left unset */

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* What the command line asks for, once checked. */
typedef struct {
    ss_router_opts o;
    int ready_fd;   /* -1: none */
} router_args;

/* The checks that involve several options: both addresses, a heartbeat
 * below the liveness, both CurveZMQ options or neither. */
static int check(const ss_cli *cli, router_args *a)
{
    ss_router_opts *o = &a->o;
    if (!o->frontend)
        return ss_cli_fail(cli, SS_EXIT_USAGE, "no producers' address: give --from ADDR or set FROM "
                                               "(e.g. FROM=tcp://*:5555)");
    if (!o->backend)
        return ss_cli_fail(cli, SS_EXIT_USAGE, "no consumers' address: give --to ADDR or set TO "
                                               "(e.g. TO=tcp://*:5556)");
    if (o->liveness_ms <= o->heartbeat_ms)
        return ss_cli_fail(cli, SS_EXIT_USAGE, "--heartbeat-ms (%d) must be below --liveness-ms (%d)",
                           o->heartbeat_ms, o->liveness_ms);
    if (!o->curve_key != !o->curve_allow)
        return ss_cli_fail(cli, SS_EXIT_USAGE,
                           "CurveZMQ needs both --curve-key FILE (this router's secret key, or "
                           "$SS_CURVE_ROUTER_KEY) and --curve-allow PATH (the client keys let in, or "
                           "$SS_CURVE_ALLOW); only %s was given",
                           o->curve_key ? "--curve-key" : "--curve-allow");
    return SS_CLI_GO;
}

/* Parse and check argv into a; SS_CLI_GO or the exit status. */
static int parse(router_args *a, int argc, char **argv)
{
    ss_router_opts *o = &a->o;
    ss_router_opts_init(o);
    uint64_t stream = NOT_GIVEN, max_bytes = o->max_bytes, ready_fd = NOT_GIVEN;
    uint64_t max_window = o->max_window;
    uint64_t heartbeat = (uint64_t)o->heartbeat_ms, liveness = (uint64_t)o->liveness_ms;
    uint64_t linger = (uint64_t)o->linger_ms;
    char stream_help[96];
    snprintf(stream_help, sizeof stream_help, "pipeline id (default: $SS_STREAM, else 0x%08x)",
             SS_DEFAULT_STREAM);
    const ss_opt opts[] = {
        { "--from", 0, SS_OPT_STRING, &o->frontend, "ADDR", "producers' side (e.g. tcp://*:5555)", .env = "FROM" },
        { "--to", 0, SS_OPT_STRING, &o->backend, "ADDR", "consumers' side (e.g. tcp://*:5556)", .env = "TO" },
        { "--name", 0, SS_OPT_STRING, &o->name, "NAME", "name in log lines (default: router)" },
        { "--stream", 0, SS_OPT_UINT, &stream, "ID", stream_help, .max = UINT32_MAX, .flags = SS_OPTF_HEX },
        { "--max-bytes", 0, SS_OPT_UINT, &max_bytes, "N", "bound on held batches, suffix K, M or G allowed (default 64M)",
          .min = 1, .max = SIZE_MAX, .suffix = SS_NUM_KMG, .flags = SS_OPTF_HEX },
        { "--max-window", 0, SS_OPT_UINT, &max_window, "N", "the most unreceipted batches a producer may have in flight;\n"
                                                           "beyond it a batch is dropped, and a producer that keeps\n"
                                                           "overrunning is evicted (default 64)", .min = 1, .max = SS_MAX_WINDOW },
        { "--heartbeat-ms", 0, SS_OPT_MS, &heartbeat, "N", "heartbeat interval (default 250, or $SS_HEARTBEAT_MS)",
          .min = 1, .max = DAY_MS },
        { "--liveness-ms", 0, SS_OPT_MS, &liveness, "N", "a silent peer is dead after this\n"
                                                         "(default 10000, or $SS_LIVENESS_MS)", .min = 1, .max = DAY_MS },
        { "--linger-ms", 0, SS_OPT_MS, &linger, "N", "keep answering late joiners this long after the end (default 0)",
          .max = DAY_MS },
        { "--ready-fd", 0, SS_OPT_UINT, &ready_fd, "FD", "once bound, write \"ready FRONTEND BACKEND\\n\" to FD and close it",
          .max = 1u << 20 },
        { "--curve-key", 0, SS_OPT_STRING, &o->curve_key, "FILE", "CurveZMQ: this router's secret key file, from\n"
                                                                  "`securestreams keygen --curve`", .env = "SS_CURVE_ROUTER_KEY" },
        { "--curve-allow", 0, SS_OPT_STRING, &o->curve_allow, "PATH", "CurveZMQ: the client public keys let in: a directory of *.pub\n"
                                                                     "files, one .pub file, or a file listing Z85 keys or .pub paths\n"
                                                                     "one per line; see docs/curve.md", .env = "SS_CURVE_ALLOW" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "router", .opts = opts,
        .synopsis = "[--from ADDR] [--to ADDR] [--name NAME] [--stream ID]\n"
                    "                            [--max-bytes N] [--max-window N] [--heartbeat-ms N]\n"
                    "                            [--liveness-ms N] [--linger-ms N] [--ready-fd FD]\n"
                    "                            [--curve-key FILE --curve-allow PATH]",
        .about = "\nRendezvous between two pipeline stages: producers connect to --from, consumers\n"
                 "to --to; see docs/protocol.md. The router exits once end of stream has been\n"
                 "acknowledged by every consumer (and --linger-ms has passed).\n",
        .epilogue = "\nExit status: 0 after end of stream or a stop by SIGINT/SIGTERM, 1 on a\n"
                    "runtime error, 2 on a usage error.",
    };
    int rc = ss_cli_parse(&cli, argc, argv, NULL, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    char err[256];
    if (stream == NOT_GIVEN && ss_stream_from_env(&o->stream, err, sizeof err) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "%s", err);
    if (stream != NOT_GIVEN)
        o->stream = (uint32_t)stream;
    o->max_bytes = (size_t)max_bytes;
    o->max_window = (unsigned)max_window;
    o->heartbeat_ms = (int)heartbeat;
    o->liveness_ms = (int)liveness;
    o->linger_ms = (int)linger;
    a->ready_fd = ready_fd == NOT_GIVEN ? -1 : (int)ready_fd;
    return check(&cli, a);
}

/* SIGINT and SIGTERM end the run at the next turn of the loop. */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Tell the parent the endpoints bound, on --ready-fd. */
static int report_ready(const ss_router_t *r, int fd)
{
    if (fd < 0)
        return 0;
    if (dprintf(fd, "ready %s %s\n", ss_router_frontend(r), ss_router_backend(r)) < 0) {
        int en = errno;
        ss_log("cannot write to --ready-fd %d: %s", fd, strerror(en));
        return -1;
    }
    close(fd);
    return 0;
}

/* The closing line: what went through, and the peak memory held. */
static void log_stats(const ss_router_t *r, const ss_router_opts *o)
{
    ss_router_stats st;
    ss_router_get_stats(r, &st);
    char auth[160] = "";
    if (o->curve_key)
        snprintf(auth, sizeof auth, ", CurveZMQ handshakes refused %llu, impostors %llu, "
                 "role refusals %llu", (unsigned long long)st.auth_refused,
                 (unsigned long long)st.impostors, (unsigned long long)st.role_refused);
    ss_log_info("batches in %llu, out %llu, duplicates %llu, parked %llu, rejected %llu, "
                "redelivered %llu, refused %llu, overruns %llu, evicted %llu, joins deferred %llu, "
                "peak held %llu bytes%s", (unsigned long long)st.batches_in,
                (unsigned long long)st.batches_out, (unsigned long long)st.duplicates,
                (unsigned long long)st.parked, (unsigned long long)st.rejected,
                (unsigned long long)st.redelivered, (unsigned long long)st.refused,
                (unsigned long long)st.overruns, (unsigned long long)st.evicted,
                (unsigned long long)st.joins_deferred, (unsigned long long)st.bytes_held_max, auth);
}

/* securestreams router [options]; argv[0] is "router". */
int ss_cmd_router(int argc, char **argv)
{
    router_args a;
    int status = parse(&a, argc, argv);
    if (status != SS_CLI_GO)
        return status;
    ss_log_init(a.o.name);
    catch_signals();

    status = SS_EXIT_ERROR;
    char err[512];
    ss_router_t *r = NULL;
    void *zctx = zmq_ctx_new();
    if (!zctx) {
        int en = errno;
        ss_log("cannot create a ZeroMQ context: %s", zmq_strerror(en));
        goto out;
    }
    ss_err rc = ss_router_new(zctx, &a.o, &r, err, sizeof err);
    if (rc != SS_OK) {
        ss_log("%s", err);
        status = rc == SS_ERR_USAGE ? SS_EXIT_USAGE : SS_EXIT_ERROR;
        goto out;
    }
    ss_log_info("frontend %s, backend %s, stream 0x%08x", ss_router_frontend(r), ss_router_backend(r),
                a.o.stream);
    if (report_ready(r, a.ready_fd) != 0)
        goto out;
    rc = ss_router_run(r, &stop_flag);
    if (rc == SS_OK || (rc == SS_ERR_CLOSED && stop_flag))
        status = SS_EXIT_OK;
    else
        ss_log("stopped: %s", ss_strerror(rc));
    log_stats(r, &a.o);
out:
    ss_router_destroy(&r);
    if (zctx)
        zmq_ctx_term(zctx);
    return status;
}
