/*
 * component.c - the `worker` and `sink` commands. Options become the SS_*
 * environment settings zmq-rx.lua reads (so a hand-started seed-style
 * script and a worker started by `run` behave the same), then the embedded
 * ss-stage module runs the script.
 */
#include "cli.h"

#include "base/common.h"
#include "lua/lstate.h"

#include <getopt.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f, const char *role)
{
    int sink = !strcmp(role, "sink");
    fprintf(f,
            "usage: securestreams %s --from ADDR%s --script FILE [options]\n"
            "%s\n"
            "  --from ADDR       router to receive from (env FROM)\n"
            "%s"
            "  --script FILE     %s\n"
            "                    (a worker given several runs them fused, in order, in one process)\n"
            "  --name NAME       name in logs and statistics (default %s)\n"
            "  --stage NAME      stage name in the statistics\n"
            "  --on-error MODE   skip (count and log bad records) or fail (stop)\n"
            "  --stream ID       pipeline id shared by every component\n"
            "  --ready-fd FD     write \"ready\" to FD once joined to the router(s)\n"
            "  --key FILE        data key: the encrypted mode (env SS_KEY_FILE)\n",
            role, sink ? "" : " --to ADDR",
            sink ? "Receive the end of a pipeline and run the sink script's callbacks;\n"
                   "prints a summary to stderr. Exit 4 when a source batch is unaccounted for."
                 : "Run one stage script on every batch from the upstream router and send\n"
                   "the results to the downstream router.",
            sink ? "" : "  --to ADDR         router to send to (env TO)\n",
            sink ? "returns function(stream) that subscribes to the stream"
                 : "returns function(stream) that returns the output stream",
            role);
}

static int run_component(const char *role, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "from", required_argument, 0, 'f' }, { "to", required_argument, 0, 't' },
        { "script", required_argument, 0, 's' }, { "name", required_argument, 0, 'n' },
        { "stage", required_argument, 0, 'g' }, { "on-error", required_argument, 0, 'e' },
        { "stream", required_argument, 0, 'S' }, { "pos", required_argument, 0, 'p' },
        { "ready-fd", required_argument, 0, 'r' }, { "key", required_argument, 0, 'k' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 } };
    const char *from = getenv("FROM"), *to = getenv("TO"), *script = NULL, *name = role;
    const char *scripts[16];
    int nscripts = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': from = optarg; break;
        case 't': to = optarg; break;
        case 's':
            if (nscripts == (int)(sizeof scripts / sizeof scripts[0])) {
                fprintf(stderr, "securestreams %s: at most 16 scripts\n", role);
                return SS_EXIT_USAGE;
            }
            script = scripts[nscripts++] = optarg;
            break;
        case 'n': name = optarg; setenv("SS_NAME", optarg, 1); break;
        case 'g': setenv("SS_STAGE", optarg, 1); break;
        case 'e': setenv("SS_ON_ERROR", optarg, 1); break;
        case 'S': setenv("SS_STREAM", optarg, 1); break;
        case 'p': setenv("SS_POS", optarg, 1); break;
        case 'r': setenv("SS_READY_FD", optarg, 1); break;
        case 'k': setenv("SS_KEY_FILE", optarg, 1); break;
        case 'h': usage(stdout, role); return SS_EXIT_OK;
        default:
            fprintf(stderr, "securestreams %s: unknown option %s\n", role, argv[optind - 1]);
            usage(stderr, role);
            return SS_EXIT_USAGE;
        }
    }
    int sink = !strcmp(role, "sink");
    if (!from || !script || (!sink && !to)) {
        fprintf(stderr, "securestreams %s: --from%s and --script are required\n", role,
                sink ? "" : ", --to");
        usage(stderr, role);
        return SS_EXIT_USAGE;
    }
    if (!getenv("SS_NAME"))
        setenv("SS_NAME", name, 1);
    ss_log_init(name);

    lua_State *L = ss_lua_new();
    if (!L)
        return SS_EXIT_ERROR;
    int rc = SS_EXIT_OK;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ss-stage");
    lua_call(L, 1, 1);
    lua_pushstring(L, role);
    lua_createtable(L, nscripts, 0);
    for (int i = 0; i < nscripts; i++) {
        lua_pushstring(L, scripts[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushstring(L, from);
    lua_pushstring(L, to ? to : "");
    if (ss_lua_pcall(L, 4, 1) != LUA_OK) {
        ss_log("error: %s", lua_tostring(L, -1));
        rc = SS_EXIT_ERROR;
        lua_getglobal(L, "package");
        lua_getfield(L, -1, "loaded");
        lua_getfield(L, -1, "zmq-rx");
        if (lua_istable(L, -1) && lua_getfield(L, -1, "failed") == LUA_TBOOLEAN && lua_toboolean(L, -1))
            rc = SS_EXIT_POLICY;
    } else if (sink && lua_istable(L, -1)) {
        lua_getfield(L, -1, "complete");
        if (!lua_toboolean(L, -1))
            rc = SS_EXIT_INCOMPLETE;
    }
    ss_lua_close(L);
    return rc;
}

int ss_cmd_worker(int argc, char **argv)
{
    return run_component("worker", argc, argv);
}

int ss_cmd_sink(int argc, char **argv)
{
    return run_component("sink", argc, argv);
}
