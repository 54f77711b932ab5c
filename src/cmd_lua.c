/*
 * cmd_lua.c - `securestreams lua`: a Lua 5.4 interpreter with the SecureStreams modules.
 */
#include "base/common.h"
#include <lauxlib.h>
#include "cli.h"
#include "lua/lstate.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: securestreams lua SCRIPT [ARGS...]\n"
            "       securestreams lua -e CODE\n"
            "Run a Lua 5.4 script with the SecureStreams modules available to require:\n"
            "  rx, zmq-rx, csv, json. Stage scripts read FROM and TO from the\n"
            "  environment, as in a Compose file. Exit status 1 on a script error.\n");
}

int ss_cmd_lua(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    ss_log_init("lua");
    lua_State *L = ss_lua_new();
    if (!L)
        return 1;
    int rc;
    if (!strcmp(argv[1], "-e")) {
        if (argc < 3) {
            usage(stderr);
            ss_lua_close(L);
            return 2;
        }
        rc = luaL_loadstring(L, argv[2]) != LUA_OK || ss_lua_pcall(L, 0, 0) != LUA_OK;
        if (rc)
            fprintf(stderr, "securestreams lua: %s\n", lua_tostring(L, -1));
    } else {
        rc = ss_lua_run_file(L, argv[1], argc - 2, argv + 2);
    }
    ss_lua_close(L);
    return rc;
}
