/*
 * ljson.c - the `json` Lua module: json.encode(value), json.decode(text),
 * json.null.
 *
 * Mapping. json.null is a light userdata (NULL pointer) standing for JSON
 * null inside tables, where nil cannot be stored: decode turns every null
 * into json.null (a top-level "null" too), encode writes both nil and
 * json.null as null. Tables whose keys are exactly 1..n (n >= 1) are arrays;
 * any other table is an object, the empty table included ("{}"). Object keys
 * must be strings or numbers (numbers are written as strings). Integers are
 * written exactly; floats with a round-trip precision, and with ".0" when
 * integral so they stay floats to a reader that cares. Decoding follows
 * cJSON, which keeps every number as a double: a number that is integral
 * and fits in an int64 becomes a Lua integer (so 1.0 decodes as 1, and
 * integers beyond 2^53 lose precision); other numbers are floats.
 *
 * Decoding uses cJSON (it reports the byte where the input went wrong).
 * Encoding writes straight into one growing buffer instead of building a
 * cJSON tree: a tree costs an allocation per value and prints numbers only
 * as doubles, losing int64 precision and the float/integer distinction.
 *
 * Errors (functions, userdata, cycles, nesting deeper than 64, NaN or
 * infinity, malformed input) are raised in Lua with a message starting with
 * "json: ". Both directions hold their C-heap memory (the text being built,
 * the cJSON tree) in a guard userdata whose __gc frees it, so a Lua error
 * raised midway (out of memory) cannot leak it.
 */
#include "lua/lmodules.h"

#include <cJSON.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_TEXT (64u << 20)     /* bound on encoded text */
#define GUARD_META "securestreams.json.guard"

typedef struct {
    char *text;      /* encode: the output being built (malloc) */
    size_t len, cap;
    cJSON *tree;     /* decode: the parsed document */
} guard;

static int guard_gc(lua_State *L)
{
    guard *g = luaL_checkudata(L, 1, GUARD_META);
    free(g->text);
    cJSON_Delete(g->tree);
    g->text = NULL;
    g->tree = NULL;
    return 0;
}

static guard *guard_new(lua_State *L)
{
    guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    memset(g, 0, sizeof *g);
    luaL_setmetatable(L, GUARD_META);
    return g;
}

/* ---- encode ----------------------------------------------------------- */

typedef struct {
    lua_State *L;
    guard *g;
    int depth;                      /* tables currently open */
    const void *open[MAX_DEPTH];    /* those tables, for the cycle check */
    char err[128];                  /* set when a function returns -1 */
} encoder;

static int fail(encoder *e, const char *msg)
{
    snprintf(e->err, sizeof e->err, "json: %s", msg);
    return -1;
}

static int reserve(encoder *e, size_t n)
{
    guard *g = e->g;
    if (n <= g->cap - g->len)
        return 0;
    if (n > MAX_TEXT - g->len)
        return fail(e, "encoded text exceeds 64 MiB");
    size_t cap = g->cap ? g->cap : 256;
    while (cap < g->len + n)
        cap *= 2;
    char *p = realloc(g->text, cap);
    if (!p)
        return fail(e, "out of memory");
    g->text = p;
    g->cap = cap;
    return 0;
}

static int put(encoder *e, const char *s, size_t n)
{
    if (reserve(e, n) != 0)
        return -1;
    memcpy(e->g->text + e->g->len, s, n);
    e->g->len += n;
    return 0;
}

static int put_string(encoder *e, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* worst case: every byte becomes \u00XX */
    if (reserve(e, n * 6 + 2) != 0)
        return -1;
    char *o = e->g->text + e->g->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    e->g->len = (size_t)(o - e->g->text);
    return 0;
}

/* A number's text: integers exact, floats round-trip, ".0" when integral. */
static int format_number(encoder *e, int idx, char *out, size_t size)
{
    lua_State *L = e->L;
    if (lua_isinteger(L, idx))
        return snprintf(out, size, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    double d = (double)lua_tonumber(L, idx);
    if (!isfinite(d))
        return fail(e, "cannot encode NaN or infinity");
    int n = snprintf(out, size, "%.15g", d);
    if (strtod(out, NULL) != d)
        n = snprintf(out, size, "%.17g", d);
    for (int i = 0; i < n; i++)
        if (out[i] == ',')   /* a locale's decimal comma */
            out[i] = '.';
    if (strspn(out, "-0123456789") == (size_t)n && n + 2 < (int)size) {
        memcpy(out + n, ".0", 3);
        n += 2;
    }
    return n;
}

static int encode_value(encoder *e, int idx);

static int encode_key(encoder *e, int idx)
{
    lua_State *L = e->L;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return put_string(e, s, n);
    }
    if (lua_type(L, idx) == LUA_TNUMBER) {
        char num[64];
        int n = format_number(e, idx, num, sizeof num);
        return n < 0 ? -1 : put_string(e, num, (size_t)n);
    }
    snprintf(e->err, sizeof e->err, "json: cannot encode a table key of type %s",
             luaL_typename(L, idx));
    return -1;
}

/* Keys exactly 1..n with n >= 1. */
static int is_array(lua_State *L, int idx, lua_Unsigned *len)
{
    lua_Unsigned n = lua_rawlen(L, idx), total = 0;
    if (n == 0)
        return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        total++;
        if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1 ||
            (lua_Unsigned)lua_tointeger(L, -2) > n) {
            lua_pop(L, 2);
            return 0;
        }
        lua_pop(L, 1);
    }
    *len = n;
    return total == n;
}

static int encode_table(encoder *e, int idx)
{
    lua_State *L = e->L;
    const void *self = lua_topointer(L, idx);
    for (int i = 0; i < e->depth; i++)
        if (e->open[i] == self)
            return fail(e, "cannot encode a table that contains itself (cycle)");
    if (e->depth == MAX_DEPTH)
        return fail(e, "tables nested deeper than 64 levels");
    if (!lua_checkstack(L, 4))
        return fail(e, "out of Lua stack space");
    e->open[e->depth++] = self;

    lua_Unsigned n;
    int rc = 0;
    if (is_array(L, idx, &n)) {
        rc = put(e, "[", 1);
        for (lua_Unsigned i = 1; rc == 0 && i <= n; i++) {
            if (i > 1)
                rc = put(e, ",", 1);
            lua_rawgeti(L, idx, (lua_Integer)i);
            if (rc == 0)
                rc = encode_value(e, -1);
            lua_pop(L, 1);
        }
        if (rc == 0)
            rc = put(e, "]", 1);
    } else {
        int first = 1;
        rc = put(e, "{", 1);
        lua_pushnil(L);
        while (rc == 0 && lua_next(L, idx)) {
            if ((!first && put(e, ",", 1) != 0) || encode_key(e, -2) != 0 ||
                put(e, ":", 1) != 0 || encode_value(e, -1) != 0) {
                lua_pop(L, 2);
                rc = -1;
                break;
            }
            first = 0;
            lua_pop(L, 1);
        }
        if (rc == 0)
            rc = put(e, "}", 1);
    }
    e->depth--;
    return rc;
}

static int encode_value(encoder *e, int idx)
{
    lua_State *L = e->L;
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return put(e, "null", 4);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5);
    case LUA_TNUMBER: {
        char num[64];
        int n = format_number(e, idx, num, sizeof num);
        return n < 0 ? -1 : put(e, num, (size_t)n);
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return put_string(e, s, n);
    }
    case LUA_TTABLE:
        return encode_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return put(e, "null", 4);
        break;
    default:
        break;
    }
    snprintf(e->err, sizeof e->err, "json: cannot encode a value of type %s",
             luaL_typename(L, idx));
    return -1;
}

/* json.encode(value) -> string */
static int json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    encoder e = {.L = L, .g = guard_new(L)};
    if (encode_value(&e, 1) != 0) {
        free(e.g->text);
        e.g->text = NULL;
        return luaL_error(L, "%s", e.err);
    }
    lua_pushlstring(L, e.g->text, e.g->len);
    free(e.g->text);
    e.g->text = NULL;
    return 1;
}

/* ---- decode ----------------------------------------------------------- */

static void push_json(lua_State *L, const cJSON *v)
{
    luaL_checkstack(L, 3, "json: document nested too deeply");
    if (cJSON_IsObject(v)) {
        int n = cJSON_GetArraySize(v);
        lua_createtable(L, 0, n);
        for (const cJSON *c = v->child; c; c = c->next) {
            lua_pushstring(L, c->string ? c->string : "");
            push_json(L, c);
            lua_rawset(L, -3);
        }
    } else if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        lua_createtable(L, n, 0);
        lua_Integer i = 1;
        for (const cJSON *c = v->child; c; c = c->next) {
            push_json(L, c);
            lua_rawseti(L, -2, i++);
        }
    } else if (cJSON_IsString(v)) {
        lua_pushstring(L, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        /* -2^63 <= d < 2^63, both bounds exact in a double */
        if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, (lua_Number)d);
    } else if (cJSON_IsBool(v)) {
        lua_pushboolean(L, cJSON_IsTrue(v));
    } else {
        lua_pushlightuserdata(L, NULL);   /* null: json.null */
    }
}

/* json.decode(text) -> value; the whole text must be one JSON value. */
static int json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (len == 0)
        return luaL_error(L, "json: cannot decode an empty string");
    guard *g = guard_new(L);
    const char *end = NULL;
    g->tree = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    size_t at = end ? (size_t)(end - s) : 0;
    if (g->tree) {
        while (at < len && s[at] != '\0' && strchr(" \t\r\n", s[at]))
            at++;
        if (at < len) {
            cJSON_Delete(g->tree);
            g->tree = NULL;
            return luaL_error(L, "json: unexpected text after the value at byte %I",
                              (LUAI_UACINT)at);
        }
    }
    if (!g->tree) {
        if (at > len)
            at = len;
        size_t show = len - at < 16 ? len - at : 16;
        return luaL_error(L, "json: malformed input at byte %I near '%s'", (LUAI_UACINT)at,
                          lua_pushlstring(L, s + at, show));
    }
    push_json(L, g->tree);
    cJSON_Delete(g->tree);
    g->tree = NULL;
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", json_encode},
    {"decode", json_decode},
    {NULL, NULL},
};

int luaopen_json(lua_State *L)
{
    if (luaL_newmetatable(L, GUARD_META)) {
        lua_pushcfunction(L, guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, json_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
