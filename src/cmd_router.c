/*
 * router_main.c - `securestreams router`: run one router as a process.
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
#include <getopt.h>
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

static void usage(FILE *out)
{
    fprintf(out,
        "usage: securestreams router [--from ADDR] [--to ADDR] [--name NAME] [--stream ID]\n"
        "                            [--max-bytes N] [--heartbeat-ms N] [--liveness-ms N]\n"
        "                            [--linger-ms N] [--ready-fd FD]\n"
        "                            [--curve-key FILE --curve-allow PATH]\n"
        "\n"
        "Rendezvous between two pipeline stages: producers connect to --from, consumers\n"
        "to --to; see docs/protocol.md. The router exits once end of stream has been\n"
        "acknowledged by every consumer (and --linger-ms has passed).\n"
        "\n"
        "  --from ADDR         producers' side (default: $FROM, e.g. tcp://*:5555)\n"
        "  --to ADDR           consumers' side (default: $TO, e.g. tcp://*:5556)\n"
        "  --name NAME         name in log lines (default: router)\n"
        "  --stream ID         pipeline id (default: $SS_STREAM, else 0x%08x)\n"
        "  --max-bytes N       bound on held batches, suffix K, M or G allowed (default 64M)\n"
        "  --heartbeat-ms N    heartbeat interval (default 250)\n"
        "  --liveness-ms N     a silent peer is dead after this (default 3000)\n"
        "  --linger-ms N       keep answering late joiners this long after the end (default 0)\n"
        "  --ready-fd FD       once bound, write \"ready FRONTEND BACKEND\\n\" to FD and close it\n"
        "  --curve-key FILE    CurveZMQ: this router's secret key file, from\n"
        "                      `securestreams keygen --curve` (default: $SS_CURVE_ROUTER_KEY)\n"
        "  --curve-allow PATH  CurveZMQ: the client public keys let in: a directory of *.pub\n"
        "                      files, one .pub file, or a file listing Z85 keys or .pub paths\n"
        "                      one per line (default: $SS_CURVE_ALLOW); see docs/curve.md\n"
        "  --help              this text\n",
        SS_DEFAULT_STREAM);
}

static int parse_ms(const char *opt, const char *s, int *out)
{
    uint64_t v;
    if (ss_parse_u64(s, 0, SS_NUM_KMG, 24ull * 3600 * 1000, &v) != 0) {
        fprintf(stderr, "router: %s wants a number of milliseconds, not '%s'\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int ss_cmd_router(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "from", required_argument, NULL, 'f' },
        { "to", required_argument, NULL, 't' },
        { "name", required_argument, NULL, 'n' },
        { "stream", required_argument, NULL, 's' },
        { "max-bytes", required_argument, NULL, 'b' },
        { "heartbeat-ms", required_argument, NULL, 'H' },
        { "liveness-ms", required_argument, NULL, 'L' },
        { "linger-ms", required_argument, NULL, 'g' },
        { "ready-fd", required_argument, NULL, 'r' },
        { "curve-key", required_argument, NULL, 'k' },
        { "curve-allow", required_argument, NULL, 'a' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static char logname[96];
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.frontend = getenv("FROM");
    o.backend = getenv("TO");
    o.curve_key = getenv("SS_CURVE_ROUTER_KEY");
    o.curve_allow = getenv("SS_CURVE_ALLOW");
    const char *stream_env = getenv("SS_STREAM");
    const char *stream_arg = stream_env && *stream_env ? stream_env : NULL;
    int ready_fd = -1;
    uint64_t v;

    optind = 0;   /* GNU: restart scanning, whoever parsed before us */
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'f': o.frontend = optarg; break;
        case 't': o.backend = optarg; break;
        case 'n': o.name = optarg; break;
        case 's': stream_arg = optarg; break;
        case 'b':
            if (ss_parse_u64(optarg, 0, SS_NUM_KMG, SIZE_MAX, &v) != 0 || v == 0) {
                fprintf(stderr, "router: --max-bytes wants a positive size, not '%s'\n", optarg);
                return 2;
            }
            o.max_bytes = (size_t)v;
            break;
        case 'H':
            if (parse_ms("--heartbeat-ms", optarg, &o.heartbeat_ms) != 0)
                return 2;
            break;
        case 'L':
            if (parse_ms("--liveness-ms", optarg, &o.liveness_ms) != 0)
                return 2;
            break;
        case 'g':
            if (parse_ms("--linger-ms", optarg, &o.linger_ms) != 0)
                return 2;
            break;
        case 'r':
            if (ss_parse_u64(optarg, 0, SS_NUM_KMG, 1u << 20, &v) != 0) {
                fprintf(stderr, "router: --ready-fd wants a file descriptor, not '%s'\n", optarg);
                return 2;
            }
            ready_fd = (int)v;
            break;
        case 'k': o.curve_key = optarg; break;
        case 'a': o.curve_allow = optarg; break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "router: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (stream_arg) {
        if (ss_parse_u64(stream_arg, 0, SS_NUM_KMG, UINT32_MAX, &v) != 0) {
            fprintf(stderr, "router: the stream id must be a 32-bit number, not '%s'\n", stream_arg);
            return 2;
        }
        o.stream = (uint32_t)v;
    }
    if (!o.frontend || !*o.frontend) {
        fprintf(stderr, "router: no producers' address: give --from ADDR or set FROM "
                        "(e.g. FROM=tcp://*:5555)\n");
        return 2;
    }
    if (!o.backend || !*o.backend) {
        fprintf(stderr, "router: no consumers' address: give --to ADDR or set TO "
                        "(e.g. TO=tcp://*:5556)\n");
        return 2;
    }
    if (o.heartbeat_ms <= 0 || o.liveness_ms <= o.heartbeat_ms) {
        fprintf(stderr, "router: --heartbeat-ms (%d) must be positive and below --liveness-ms (%d)\n",
                o.heartbeat_ms, o.liveness_ms);
        return 2;
    }
    if (o.curve_key && !*o.curve_key)
        o.curve_key = NULL;
    if (o.curve_allow && !*o.curve_allow)
        o.curve_allow = NULL;
    if (!o.curve_key != !o.curve_allow) {
        fprintf(stderr, "router: CurveZMQ needs both --curve-key FILE (this router's secret key, "
                        "or $SS_CURVE_ROUTER_KEY) and --curve-allow PATH (the client keys let in, "
                        "or $SS_CURVE_ALLOW); only %s was given\n",
                o.curve_key ? "--curve-key" : "--curve-allow");
        return 2;
    }
    snprintf(logname, sizeof logname, "%s", o.name);
    ss_log_init(logname);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int status = 1;
    char err[512];
    ss_router_t *r = NULL;
    void *zctx = zmq_ctx_new();
    if (!zctx) {
        ss_log("cannot create a ZeroMQ context: %s", zmq_strerror(errno));
        goto out;
    }
    ss_err rc = ss_router_new(zctx, &o, &r, err, sizeof err);
    if (rc != SS_OK) {
        ss_log("%s", err);
        status = rc == SS_ERR_USAGE ? 2 : 1;
        goto out;
    }
    ss_log_info("frontend %s, backend %s, stream 0x%08x", ss_router_frontend(r), ss_router_backend(r),
           o.stream);
    if (ready_fd >= 0) {
        if (dprintf(ready_fd, "ready %s %s\n", ss_router_frontend(r), ss_router_backend(r)) < 0) {
            ss_log("cannot write to --ready-fd %d: %s", ready_fd, strerror(errno));
            goto out;
        }
        close(ready_fd);
    }
    rc = ss_router_run(r, &stop_flag);
    if (rc == SS_OK || (rc == SS_ERR_CLOSED && stop_flag))
        status = 0;
    else
        ss_log("stopped: %s", ss_strerror(rc));

    ss_router_stats st;
    ss_router_get_stats(r, &st);
    char auth[64] = "";
    if (o.curve_key)
        snprintf(auth, sizeof auth, ", CurveZMQ handshakes refused %llu",
                 (unsigned long long)st.auth_refused);
    ss_log_info("batches in %llu, out %llu, duplicates %llu, redelivered %llu, refused %llu, "
           "peak held %llu bytes%s", (unsigned long long)st.batches_in,
           (unsigned long long)st.batches_out, (unsigned long long)st.duplicates,
           (unsigned long long)st.redelivered, (unsigned long long)st.refused,
           (unsigned long long)st.bytes_held_max, auth);
out:
    ss_router_destroy(&r);
    if (zctx)
        zmq_ctx_term(zctx);
    return status;
}
