/*
 * lstate.c - Lua states with our modules preloaded, protected calls with
 * tracebacks, and the `securestreams lua SCRIPT` command (the seed's
 * `lua mapper.lua` entry point).
 */
#include "lua/lstate.h"

#include "base/common.h"
#include "lua/lmodules.h"
#include "enclave/lpool.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

/* package.preload loader for an embedded Lua source: upvalue 1 is the index
 * into ss_lua_sources. */
static int load_embedded(lua_State *L)
{
    const ss_lua_embedded *m = &ss_lua_sources[lua_tointeger(L, lua_upvalueindex(1))];
    char chunk[128];
    snprintf(chunk, sizeof chunk, "=[securestreams]/%s.lua", m->name);
    if (luaL_loadbufferx(L, m->source, m->len, chunk, "t") != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

static int open_all(lua_State *L)
{
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_csv);
    lua_setfield(L, -2, "csv");
    lua_pushcfunction(L, luaopen_json);
    lua_setfield(L, -2, "json");
    lua_pushcfunction(L, luaopen_securestreams_net);
    lua_setfield(L, -2, "securestreams.net");
    lua_pushcfunction(L, luaopen_securestreams_enclave);
    lua_setfield(L, -2, "securestreams.enclave");
    for (lua_Integer i = 0; ss_lua_sources[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, ss_lua_sources[i].name);
    }
    lua_pop(L, 1);
    return 0;
}

static int panic(lua_State *L)
{
    fprintf(stderr, "securestreams: Lua panic: %s\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string");
    return 0;   /* then abort */
}

/* Warnings as the stand-alone interpreter has them: off until "@on", each
 * message (its pieces joined) on stderr. One flag per process: a component
 * runs one state. */
static int warn_on;
static int warn_cont;

static void warnf(void *ud, const char *msg, int tocont)
{
    (void)ud;
    if (!warn_cont && !tocont && *msg == '@') {
        if (!strcmp(msg, "@on"))
            warn_on = 1;
        else if (!strcmp(msg, "@off"))
            warn_on = 0;
        return;
    }
    if (warn_on) {
        fprintf(stderr, "%s%s%s", warn_cont ? "" : "Lua warning: ", msg, tocont ? "" : "\n");
        fflush(stderr);
    }
    warn_cont = tocont;
}

lua_State *ss_lua_new(void)
{
    ss_pool *pool = ss_pool_new(0);
    lua_State *L = pool ? lua_newstate(ss_pool_alloc, pool) : NULL;
    if (!L) {
        ss_pool_close(pool);
        return NULL;
    }
    lua_atpanic(L, panic);
    lua_setwarnf(L, warnf, NULL);
    lua_pushcfunction(L, open_all);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "securestreams: cannot set up Lua: %s\n", lua_tostring(L, -1));
        ss_lua_close(L);
        return NULL;
    }
    return L;
}

void ss_lua_close(lua_State *L)
{
    if (!L)
        return;
    void *pool;
    lua_getallocf(L, &pool);
    lua_close(L);
    ss_pool_close(pool);
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int ss_lua_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

typedef struct {
    const char *path;
    int argc;
    char **argv;
} script_run;

/* Protected part of ss_lua_run_file: `arg`, load, run. Returns nothing, or
 * the message of a script that does not load (no traceback: the message
 * says where). */
static int run_script(lua_State *L)
{
    const script_run *r = lua_touserdata(L, 1);
    lua_settop(L, 0);
    luaL_checkstack(L, r->argc + 3, "too many arguments for the script");
    lua_createtable(L, r->argc, 1);
    lua_pushstring(L, r->path);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < r->argc; i++) {
        lua_pushstring(L, r->argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    if (luaL_loadfilex(L, r->path, "t") != LUA_OK)
        return 1;
    for (int i = 0; i < r->argc; i++)
        lua_pushstring(L, r->argv[i]);
    lua_call(L, r->argc, 0);
    return 0;
}

ss_err ss_lua_run_file(lua_State *L, const char *path, int argc, char **argv, char *err,
                       size_t errlen)
{
    script_run r = { path, argc, argv };
    int top = lua_gettop(L);
    lua_pushcfunction(L, run_script);
    lua_pushlightuserdata(L, &r);
    int status = ss_lua_pcall(L, 1, 1);
    if (status != LUA_OK || !lua_isnil(L, -1)) {
        const char *msg = lua_tostring(L, -1);
        ss_say(err, errlen, "%s", msg ? msg : "(error object is not a string)");
        lua_settop(L, top);
        return SS_ERR_LUA;
    }
    lua_settop(L, top);
    return SS_OK;
}
