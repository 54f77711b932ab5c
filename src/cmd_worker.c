/*
 * cmd_worker.c - the `worker` and `sink` commands. Options become the SS_*
 * environment settings zmq-rx.lua reads (so a hand-started seed-style
 * script and a worker started by `run` behave the same), then the embedded
 * ss-stage module runs the script.
 *
 * Lua is entered only through protected calls: loading ss-stage, building
 * its arguments and running the stage happen inside one lua_pcall, so a
 * script's error, or memory running out, comes back here as a message that
 * names the script, never as a panic.
 */
#include "cli.h"

#include "base/common.h"
#include "lua/lstate.h"
#include "pipeline/spec.h"
#include "wire/envelope.h"
#include "wire/frame.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOT_GIVEN UINT64_MAX   /* a number option left unset */

/* One run of ss-stage, and what it reported. */
typedef struct {
    const char *role;        /* "worker" or "sink" */
    const char *from, *to;   /* to: "" for a sink */
    const char **scripts;
    int nscripts;
    int incomplete;          /* sink: a source batch unaccounted for */
    int failed;              /* zmq-rx was stopped by on_error = fail */
} stage_run;

/* Lua: require('ss-stage')(role, scripts, from, to); the light userdata
 * argument is the stage_run. */
static int run_stage(lua_State *L)
{
    stage_run *r = lua_touserdata(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ss-stage");
    lua_call(L, 1, 1);
    lua_pushstring(L, r->role);
    lua_createtable(L, r->nscripts, 0);
    for (int i = 0; i < r->nscripts; i++) {
        lua_pushstring(L, r->scripts[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushstring(L, r->from);
    lua_pushstring(L, r->to);
    lua_call(L, 4, 1);
    if (!strcmp(r->role, "sink") && lua_istable(L, -1)) {
        lua_getfield(L, -1, "complete");
        r->incomplete = !lua_toboolean(L, -1);
    }
    return 0;
}

/* Lua: whether zmq-rx stopped by the error policy (package.loaded['zmq-rx'].failed). */
static int read_failed(lua_State *L)
{
    stage_run *r = lua_touserdata(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "zmq-rx");
    r->failed = lua_istable(L, -1) && lua_getfield(L, -1, "failed") == LUA_TBOOLEAN && lua_toboolean(L, -1);
    return 0;
}

/* Call f(r) protected, with a traceback; LUA_OK or the error on the stack. */
static int protected(lua_State *L, lua_CFunction f, stage_run *r)
{
    lua_pushcfunction(L, f);
    lua_pushlightuserdata(L, r);
    return ss_lua_pcall(L, 1, 0);
}

/* Whether msg already names one of the scripts. */
static int names_a_script(const char *msg, const stage_run *r)
{
    for (int i = 0; i < r->nscripts; i++)
        if (strstr(msg, r->scripts[i]))
            return 1;
    return 0;
}

/* Report a stage's error: "NAME: SCRIPT: message", the name left out when
 * it is the command's own and the script when the message names it. */
static int script_error(const ss_cli *cli, int status, const char *name, const stage_run *r,
                        const char *msg)
{
    char list[512] = "";
    size_t len = 0;
    if (strcmp(name, cli->name) != 0)
        len = (size_t)snprintf(list, sizeof list, "%s: ", name);
    if (!names_a_script(msg, r)) {
        for (int i = 0; i < r->nscripts && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? "+" : "", r->scripts[i]);
        if (len < sizeof list)
            snprintf(list + len, sizeof list - len, ": ");
    }
    return ss_cli_fail(cli, status, "%s%s", list, msg);
}

/* Run the stage in a new Lua state; the exit status. */
static int run(const ss_cli *cli, const char *name, stage_run *r)
{
    lua_State *L = ss_lua_new();
    if (!L)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot create a Lua state: out of memory");
    int rc = SS_EXIT_OK;
    if (protected(L, run_stage, r) != LUA_OK) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(no message)";
        if (protected(L, read_failed, r) != LUA_OK)
            lua_pop(L, 1);
        rc = script_error(cli, r->failed ? SS_EXIT_POLICY : SS_EXIT_ERROR, name, r, msg);
    } else if (r->incomplete) {
        rc = SS_EXIT_INCOMPLETE;
    }
    ss_lua_close(L);
    return rc;
}

/* setenv unless the variable already holds value (it gave the default). */
static void export(const char *var, const char *value)
{
    const char *now = getenv(var);
    if (value && (!now || strcmp(now, value) != 0))
        setenv(var, value, 1);
}

static void export_u64(const char *var, uint64_t v)
{
    char text[24];
    if (v == NOT_GIVEN)
        return;
    snprintf(text, sizeof text, "%llu", (unsigned long long)v);
    export(var, text);
}

static const char *const on_error_modes[] = { "skip", "fail", NULL };

static int run_component(const char *role, int argc, char **argv)
{
    int sink = !strcmp(role, "sink");
    const char *from = NULL, *to = NULL, *name = role, *stage = NULL, *on_error = NULL, *key = NULL;
    const char *run_id = NULL;
    const char *scripts[SS_MAX_STAGES];
    ss_optlist script_list = { scripts, 0 };
    uint64_t stream = NOT_GIVEN, pos = NOT_GIVEN, ready_fd = NOT_GIVEN;
    /* one table for both; a sink's starts after --to */
    const ss_opt opts[] = {
        { "--to", 0, SS_OPT_STRING, &to, "ADDR", "router to send to", .env = "TO" },
        { "--from", 0, SS_OPT_STRING, &from, "ADDR", "router to receive from", .env = "FROM" },
        { "--script", 0, SS_OPT_LIST, &script_list, "FILE",
          sink ? "returns function(stream) that subscribes to the stream"
               : "returns function(stream) that returns the output stream\n"
                 "(a worker given several runs them fused, in order, in one process)",
          .max = SS_MAX_STAGES },
        { "--name", 0, SS_OPT_STRING, &name, "NAME", sink ? "name in logs and statistics (default sink)"
                                                          : "name in logs and statistics (default worker)",
          .env = "SS_NAME" },
        { "--stage", 0, SS_OPT_STRING, &stage, "NAME", "stage name in the statistics", .env = "SS_STAGE" },
        { "--on-error", 0, SS_OPT_CHOICE, &on_error, "MODE", "skip (count and log bad records) or fail (stop)",
          .env = "SS_ON_ERROR", .choices = on_error_modes },
        { "--stream", 0, SS_OPT_UINT, &stream, "ID", "pipeline id shared by every component (default\n"
                                                     "$SS_STREAM, else 0x53530001)",
          .max = UINT32_MAX, .flags = SS_OPTF_HEX },
        { "--pos", 0, SS_OPT_UINT, &pos, "N", "the stage's position in the pipeline", .env = "SS_POS",
          .max = 65535, .flags = SS_OPTF_HIDDEN },
        { "--ready-fd", 0, SS_OPT_UINT, &ready_fd, "FD", "write \"ready\" to FD once joined to the router(s)",
          .env = "SS_READY_FD", .max = 1u << 20 },
        { "--key", 0, SS_OPT_STRING, &key, "FILE", "data key: the encrypted mode", .env = "SS_KEY_FILE" },
        { "--run", 0, SS_OPT_STRING, &run_id, "HEX", "the run id (32 hex digits) every batch must belong to\n"
                                                     "(default $SS_RUN, else the first batch's)",
          .env = "SS_RUN" },
        { NULL },
    };
    const ss_cli cli = {
        .name = role, .opts = sink ? opts + 1 : opts,
        .synopsis = sink ? "--from ADDR --script FILE [options]" : "--from ADDR --to ADDR --script FILE [options]",
        .about = sink ? "Receive the end of a pipeline and run the sink script's callbacks;\n"
                        "prints a summary to stderr. Exit 4 when a source batch is unaccounted for."
                      : "Run one stage script on every batch from the upstream router and send\n"
                        "the results to the downstream router.",
    };
    int rc = ss_cli_parse(&cli, argc, argv, NULL, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!from || script_list.n == 0 || (!sink && !to))
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--from%s and --script are required", sink ? "" : ", --to");
    uint32_t stream_id;
    char err[256];
    if (stream == NOT_GIVEN && ss_stream_from_env(&stream_id, err, sizeof err) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "%s", err);
    uint8_t run_bytes[SS_RUN_BYTES];
    if (run_id && *run_id && ss_run_parse(run_id, run_bytes) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--run %s: a run id is 32 hex digits", run_id);

    export("SS_NAME", name);
    export("SS_STAGE", stage);
    export("SS_ON_ERROR", on_error);
    export("SS_KEY_FILE", key);
    export("SS_RUN", run_id);
    export_u64("SS_STREAM", stream);
    export_u64("SS_POS", pos);
    export_u64("SS_READY_FD", ready_fd);
    ss_log_init(name);
    stage_run r = { .role = role, .from = from, .to = sink ? "" : to, .scripts = scripts,
                    .nscripts = script_list.n };
    return run(&cli, name, &r);
}

/* securestreams worker --from ADDR --to ADDR --script FILE [options].
 * Exit status: 0 at the end of the stream, 1 error, 2 usage, 3 stopped by
 * on_error = fail. */
int ss_cmd_worker(int argc, char **argv)
{
    return run_component("worker", argc, argv);
}

/* securestreams sink --from ADDR --script FILE [options]. Exit status as a
 * worker's, and 4 when a source batch is unaccounted for. */
int ss_cmd_sink(int argc, char **argv)
{
    return run_component("sink", argc, argv);
}
