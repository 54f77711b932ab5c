/*
 * fuzz_lua.c - the csv and json modules (lib/lua/lcsv.c, ljson.c) on any
 * line, as a stage script calls them on input it did not write: csv.parse,
 * csv.fields and json.decode, each in a protected call.
 */
#include "fuzz.h"
#include "lua/lmodules.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static lua_State *state(void)
{
    static lua_State *L;
    if (L)
        return L;
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "csv", luaopen_csv, 0);
    luaL_requiref(L, "json", luaopen_json, 0);
    lua_settop(L, 0);
    if (luaL_dostring(L, "local csv, json = ...\n") != LUA_OK)
        lua_settop(L, 0);
    return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = state();
    static const char *const calls[] = {
        "local s = ... return require('csv').parse(s)",
        "local s = ... return require('csv').fields(s, 1, 3, 9, 29)",
        "local s = ... return require('json').decode(s)",
        ("local s = ... local ok, v = pcall(require('json').decode, s)"
         " if ok then return require('json').encode(v) end"),
    };
    for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
        if (luaL_loadstring(L, calls[i]) != LUA_OK)
            return 0;
        lua_pushlstring(L, (const char *)data, size);
        (void)lua_pcall(L, 1, 0, 0);
        lua_settop(L, 0);
    }
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
