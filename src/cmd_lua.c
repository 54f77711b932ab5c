/*
 * cmd_lua.c - `securestreams lua`: a Lua 5.4 interpreter with the
 * SecureStreams modules.
 *
 * Options end at the script's name: what follows it is the script's own
 * arguments (its `arg` table), even when they look like options.
 */
#include "cli.h"
#include "base/common.h"
#include "lua/lstate.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHUNKS 16   /* -e options */

/* securestreams lua [-e CODE] [SCRIPT [ARGS...]]. 0 done (or --help), 1 a
 * script error, 2 usage. */
int ss_cmd_lua(int argc, char **argv)
{
    const char *chunks[MAX_CHUNKS];
    ss_optlist code = { chunks, 0 };
    int nargs;
    const ss_opt opts[] = {
        { "--execute", 'e', SS_OPT_LIST, &code, "CODE",
          "run CODE (each -e in order, before SCRIPT when one is given)", .max = MAX_CHUNKS },
        { NULL },
    };
    const ss_cli cli = {
        .name = "lua", .synopsis = "SCRIPT [ARGS...]\n       securestreams lua -e CODE", .opts = opts,
        .about = "Run a Lua 5.4 script with the SecureStreams modules available to require:\n"
                 "  rx, zmq-rx, csv, json. Stage scripts read FROM and TO from the\n"
                 "  environment, as in a Compose file. Exit status 1 on a script error.",
        .min_args = 0, .max_args = argc, .options_first = 1,
    };
    char **args = calloc((size_t)argc, sizeof *args);   /* the script and its arguments */
    if (!args)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "out of memory");
    int rc = ss_cli_parse(&cli, argc, argv, args, &nargs);
    if (rc == SS_CLI_GO && code.n == 0 && nargs == 0)
        rc = ss_cli_fail(&cli, SS_EXIT_USAGE, "which script? give SCRIPT or -e CODE");
    if (rc != SS_CLI_GO)
        goto out;

    ss_log_init("lua");
    lua_State *L = ss_lua_new();
    if (!L) {
        rc = ss_cli_fail(&cli, SS_EXIT_ERROR, "cannot create a Lua state: out of memory");
        goto out;
    }
    rc = SS_EXIT_OK;
    for (int i = 0; i < code.n && rc == SS_EXIT_OK; i++)
        if (luaL_loadbuffer(L, code.items[i], strlen(code.items[i]), "=(command line)") != LUA_OK
            || ss_lua_pcall(L, 0, 0) != LUA_OK)
            rc = ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", lua_tostring(L, -1));
    char err[4096];
    if (rc == SS_EXIT_OK && nargs > 0
        && ss_lua_run_file(L, args[0], nargs - 1, args + 1, err, sizeof err) != SS_OK)
        rc = ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", err);
    ss_lua_close(L);
out:
    free(args);
    return rc;
}
