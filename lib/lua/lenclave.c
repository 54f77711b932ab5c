/*
 * lenclave.c - the `securestreams.enclave` Lua module: the host side of an
 * enclave for zmq-rx.lua's enclave worker and sgx-rx. Everything that
 * crosses is ciphertext: sealed batches in, sealed batches and a sealed
 * statistics record out.
 */
#include "enclave/enclave.h"
#include "lua/lstate.h"
#include "wire/envelope.h"

#include <lauxlib.h>
#include <string.h>

#define ENCLAVE_MT "securestreams.enclave"


typedef struct {
    ss_enclave_t *e;
} lenclave;

/* enclave.new{ backend=, script= | code=, name=, key_file=, stage=, fail=,
 *              producer=, stream=, heap=, budget_ms=, pos=, run= } -> enclave
 * run: the run id as 32 hex digits (absent: the first input's). There is no
 * role: an enclave always seals as a worker. */
static int net_enclave(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ss_enclave_opts o;
    char err[1024];
    if (ss_enclave_opts_init(&o, err, sizeof err) != SS_OK)
        return luaL_error(L, "%s", err);
    if (lua_getfield(L, 1, "backend") == LUA_TSTRING) o.backend = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "script") == LUA_TSTRING) o.script = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "code") == LUA_TSTRING) o.code = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "name") == LUA_TSTRING) o.code_name = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "key_file") == LUA_TSTRING) o.key_file = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "stage") == LUA_TSTRING) o.stage = lua_tostring(L, -1);
    if (lua_getfield(L, 1, "fail") == LUA_TBOOLEAN) o.fail_on_error = lua_toboolean(L, -1);
    if (lua_getfield(L, 1, "producer") == LUA_TNUMBER) o.producer = (uint64_t)lua_tointeger(L, -1);
    if (lua_getfield(L, 1, "stream") == LUA_TNUMBER) o.stream = (uint32_t)lua_tointeger(L, -1);
    if (lua_getfield(L, 1, "heap") == LUA_TNUMBER) o.heap_bytes = (size_t)lua_tointeger(L, -1);
    if (lua_getfield(L, 1, "budget_ms") == LUA_TNUMBER) o.budget_ms = (uint64_t)lua_tointeger(L, -1);
    if (lua_getfield(L, 1, "pos") == LUA_TNUMBER) o.pos = (int)lua_tointeger(L, -1);
    uint8_t run[SS_RUN_BYTES];
    if (lua_getfield(L, 1, "run") == LUA_TSTRING) {
        if (ss_run_parse(lua_tostring(L, -1), run) != SS_OK)
            return luaL_error(L, "run: expected 32 hex digits, got \"%s\"", lua_tostring(L, -1));
        o.run = run;
    }
    lenclave *le = lua_newuserdatauv(L, sizeof *le, 0);
    le->e = NULL;
    luaL_setmetatable(L, ENCLAVE_MT);
    if (ss_enclave_new(&o, &le->e, err, sizeof err) != SS_OK)
        return luaL_error(L, "%s", err);
    return 1;
}

static lenclave *check_enclave(lua_State *L)
{
    lenclave *le = luaL_checkudata(L, 1, ENCLAVE_MT);
    if (!le->e)
        luaL_error(L, "the enclave is closed");
    return le;
}

/* The outcome of a call as a table reused by the caller:
 * {output = bool, header, lineage, payload, in, out, skipped, rejected, foreign, message} */
static int push_result(lua_State *L, const ss_ecall_result *r)
{
    lua_createtable(L, 0, 9);
    lua_pushboolean(L, r->has_output);
    lua_setfield(L, -2, "output");
    if (r->has_output) {
        lua_pushlstring(L, (const char *)r->header, SS_HEADER_SIZE);
        lua_setfield(L, -2, "header");
        lua_pushlstring(L, (const char *)r->lineage, r->lineage_len);
        lua_setfield(L, -2, "lineage");
        lua_pushlstring(L, (const char *)r->payload, r->payload_len);
        lua_setfield(L, -2, "payload");
    }
    lua_pushinteger(L, r->in);
    lua_setfield(L, -2, "in");
    lua_pushinteger(L, r->out);
    lua_setfield(L, -2, "out");
    lua_pushinteger(L, r->skipped);
    lua_setfield(L, -2, "skipped");
    lua_pushboolean(L, r->rejected);
    lua_setfield(L, -2, "rejected");
    lua_pushboolean(L, r->foreign);
    lua_setfield(L, -2, "foreign");
    lua_pushstring(L, r->message);
    lua_setfield(L, -2, "message");
    return 1;
}

static int enclave_failed(lua_State *L, ss_err e, const ss_ecall_result *r)
{
    if (e == SS_ERR_LUA)
        return luaL_error(L, "%s", r->message);
    return luaL_error(L, "the enclave failed: %s%s%s", ss_strerror(e), r->message[0] ? ": " : "",
                      r->message);
}

/* e:batch(header, lineage, payload, seq, redelivered) -> result */
static int enclave_batch(lua_State *L)
{
    lenclave *le = check_enclave(L);
    size_t hlen, llen, plen;
    const char *h = luaL_checklstring(L, 2, &hlen);
    const char *l = luaL_checklstring(L, 3, &llen);
    const char *p = luaL_checklstring(L, 4, &plen);
    luaL_argcheck(L, hlen == SS_HEADER_SIZE, 2, "a 40-byte header expected");
    ss_ecall_result r;
    memset(&r, 0, sizeof r);
    ss_err e = ss_enclave_batch(le->e, (const uint8_t *)h, (const uint8_t *)l, llen,
                                (const uint8_t *)p, plen, (uint64_t)luaL_checkinteger(L, 5),
                                lua_toboolean(L, 6), &r);
    if (e != SS_OK)
        return enclave_failed(L, e, &r);
    return push_result(L, &r);
}

/* e:flush(seq) -> result */
static int enclave_flush(lua_State *L)
{
    lenclave *le = check_enclave(L);
    ss_ecall_result r;
    memset(&r, 0, sizeof r);
    ss_err e = ss_enclave_flush(le->e, (uint64_t)luaL_checkinteger(L, 2), &r);
    if (e != SS_OK)
        return enclave_failed(L, e, &r);
    return push_result(L, &r);
}

/* e:finish(id, seq) -> sealed statistics record */
static int enclave_finish(lua_State *L)
{
    lenclave *le = check_enclave(L);
    const uint8_t *rec;
    size_t len;
    ss_err e = ss_enclave_finish(le->e, luaL_checkstring(L, 2), (uint64_t)luaL_checkinteger(L, 3),
                                 &rec, &len);
    if (e != SS_OK)
        return luaL_error(L, "the enclave failed at the end of stream: %s", ss_strerror(e));
    lua_pushlstring(L, (const char *)rec, len);
    return 1;
}

static int enclave_stateful(lua_State *L)
{
    lua_pushboolean(L, ss_enclave_stateful(check_enclave(L)->e));
    return 1;
}

static int enclave_backend(lua_State *L)
{
    lua_pushstring(L, ss_enclave_backend(check_enclave(L)->e));
    return 1;
}

static int enclave_pid(lua_State *L)
{
    lua_pushinteger(L, ss_enclave_pid(check_enclave(L)->e));
    return 1;
}

static int enclave_close(lua_State *L)
{
    lenclave *le = luaL_checkudata(L, 1, ENCLAVE_MT);
    ss_enclave_destroy(&le->e);
    return 0;
}


int luaopen_securestreams_enclave(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "batch", enclave_batch }, { "flush", enclave_flush }, { "finish", enclave_finish },
        { "stateful", enclave_stateful }, { "backend", enclave_backend }, { "pid", enclave_pid },
        { "close", enclave_close }, { NULL, NULL } };
    luaL_newmetatable(L, ENCLAVE_MT);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, enclave_close);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, net_enclave);
    lua_setfield(L, -2, "new");
    return 1;
}
