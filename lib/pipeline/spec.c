/*
 * spec.c - loading a pipeline spec. The file is Lua run with no libraries
 * but string, table and math (it describes, it does not act); every field is
 * checked and unknown fields are refused, so a typo never goes unnoticed.
 *
 * The table the spec returns is read with raw accesses only, inside a
 * protected call: a metatable on it (an __index or __len that raises or
 * loops) runs no code while it is read, and any Lua error while reading is
 * an error naming the spec, never a panic.
 */
#include "pipeline/spec.h"

#include "wire/frame.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    lua_State *L;
    const char *path;
    char *err;
    size_t errlen;
    char *dir;
} ctx;

static ss_err fail(ctx *c, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(c->err, c->errlen, "%s: ", c->path);
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < c->errlen)
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return SS_ERR_USAGE;
}

/* Resolve a path relative to the spec's directory (copied, caller frees). */
static char *resolve(ctx *c, const char *p)
{
    if (p[0] == '/' || !c->dir[0])
        return strdup(p);
    size_t n = strlen(c->dir) + strlen(p) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", c->dir, p);
    return s;
}

/* t[key] without metamethods; pushes the value and returns its type. */
static int rawfield(lua_State *L, int idx, const char *key)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, key);
    return lua_rawget(L, idx);
}

/* Check that the table at idx has only the given keys. */
static ss_err only_keys(ctx *c, int idx, const char *where, const char *const *keys)
{
    lua_pushnil(c->L);
    while (lua_next(c->L, idx)) {
        lua_pop(c->L, 1);
        if (lua_type(c->L, -1) != LUA_TSTRING) {
            lua_pop(c->L, 1);
            return fail(c, "%s: keys must be names", where);
        }
        const char *k = lua_tostring(c->L, -1);
        int known = 0;
        for (const char *const *p = keys; *p; p++)
            known |= !strcmp(*p, k);
        if (!known) {
            ss_err e = fail(c, "%s: unknown field '%s'", where, k);
            lua_pop(c->L, 1);
            return e;
        }
    }
    return SS_OK;
}

/* Check that the table at idx is a list: keys 1..n and nothing else. */
static ss_err only_list(ctx *c, int idx, lua_Integer n)
{
    lua_pushnil(c->L);
    while (lua_next(c->L, idx)) {
        lua_pop(c->L, 1);
        if (!lua_isinteger(c->L, -1) || lua_tointeger(c->L, -1) < 1 || lua_tointeger(c->L, -1) > n) {
            ss_err e = lua_type(c->L, -1) == LUA_TSTRING
                ? fail(c, "stages: unknown field '%s' (stages is a list: { { name = ..., script = ... }, ... })",
                       lua_tostring(c->L, -1))
                : fail(c, "stages: a list from 1 to %d expected, with no other keys", (int)n);
            lua_pop(c->L, 1);
            return e;
        }
    }
    return SS_OK;
}

static ss_err get_string(ctx *c, int idx, const char *key, const char *where, int required,
                         const char *dflt, char **out)
{
    int t = rawfield(c->L, idx, key);
    ss_err e = SS_OK;
    if (t == LUA_TNIL) {
        if (required)
            e = fail(c, "%s: missing field '%s'", where, key);
        else if (dflt && !(*out = strdup(dflt)))
            e = SS_ERR_NOMEM;
    } else if (t != LUA_TSTRING) {
        e = fail(c, "%s.%s: expected a string, got %s", where, key, lua_typename(c->L, t));
    } else if (!(*out = strdup(lua_tostring(c->L, -1)))) {
        e = SS_ERR_NOMEM;
    }
    lua_pop(c->L, 1);
    return e;
}

static ss_err get_int(ctx *c, int idx, const char *key, const char *where, long lo, long hi,
                      long dflt, long *out)
{
    int t = rawfield(c->L, idx, key);
    ss_err e = SS_OK;
    *out = dflt;
    if (t != LUA_TNIL) {
        if (!lua_isinteger(c->L, -1))
            e = fail(c, "%s.%s: expected an integer", where, key);
        else if ((*out = (long)lua_tointeger(c->L, -1)) < lo || *out > hi)
            e = fail(c, "%s.%s: must be between %ld and %ld", where, key, lo, hi);
    }
    lua_pop(c->L, 1);
    return e;
}

static ss_err get_bool(ctx *c, int idx, const char *key, const char *where, int dflt, int *out)
{
    int t = rawfield(c->L, idx, key);
    ss_err e = SS_OK;
    *out = dflt;
    if (t == LUA_TBOOLEAN)
        *out = lua_toboolean(c->L, -1);
    else if (t != LUA_TNIL)
        e = fail(c, "%s.%s: expected true or false", where, key);
    lua_pop(c->L, 1);
    return e;
}

static ss_err parse(ctx *c, ss_spec *s)
{
    lua_State *L = c->L;
    static const char *const top_keys[] = { "name", "source", "stages", "sink", "security",
                                            "on_error", "key", "fuse", NULL };
    static const char *const source_keys[] = { "file", "header", "batch_bytes", NULL };
    static const char *const stage_keys[] = { "name", "script", "workers", "enclave", NULL };
    static const char *const sink_keys[] = { "script", NULL };
    int top = lua_gettop(L);
    ss_err e;
    if (!lua_istable(L, top))
        return fail(c, "the spec must return a table, got %s", luaL_typename(L, top));
    if ((e = only_keys(c, top, "spec", top_keys)) != SS_OK ||
        (e = get_string(c, top, "name", "spec", 0, "pipeline", &s->name)) != SS_OK ||
        (e = get_string(c, top, "security", "spec", 0, "plain", &s->security)) != SS_OK ||
        (e = get_string(c, top, "on_error", "spec", 0, "skip", &s->on_error)) != SS_OK)
        return e;
    char *key = NULL;
    if ((e = get_string(c, top, "key", "spec", 0, NULL, &key)) != SS_OK ||
        (e = get_bool(c, top, "fuse", "spec", 0, &s->fuse)) != SS_OK) {
        free(key);
        return e;
    }
    if (key) {
        s->key = resolve(c, key);
        free(key);
    }

    if (rawfield(L, top, "source") != LUA_TTABLE)
        return fail(c, "missing table 'source' (source = { file = ... })");
    int src = lua_gettop(L);
    char *file = NULL;
    if ((e = only_keys(c, src, "source", source_keys)) != SS_OK ||
        (e = get_string(c, src, "file", "source", 0, NULL, &file)) != SS_OK ||
        (e = get_bool(c, src, "header", "source", 1, &s->header)) != SS_OK ||
        (e = get_int(c, src, "batch_bytes", "source", 64, SS_BATCH_BYTES_MAX, SS_BATCH_BYTES, &s->batch_bytes)) != SS_OK) {
        free(file);
        return e;
    }
    if (file) {
        s->input = resolve(c, file);
        free(file);
    }
    lua_pop(L, 1);

    if (rawfield(L, top, "stages") != LUA_TTABLE)
        return fail(c, "missing table 'stages' (stages = { { name = ..., script = ... }, ... })");
    int stages = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, stages);
    if (n < 1 || n > SS_MAX_STAGES)
        return fail(c, "stages: between 1 and %d stages expected, got %d", SS_MAX_STAGES, (int)n);
    if ((e = only_list(c, stages, n)) != SS_OK)
        return e;
    for (lua_Integer i = 1; i <= n; i++) {
        char where[32];
        snprintf(where, sizeof where, "stages[%d]", (int)i);
        if (lua_rawgeti(L, stages, i) != LUA_TTABLE)
            return fail(c, "%s: expected a table", where);
        int st = lua_gettop(L);
        ss_stage_spec *g = &s->stages[s->nstages++];
        char *script = NULL;
        long workers;
        if ((e = only_keys(c, st, where, stage_keys)) != SS_OK ||
            (e = get_string(c, st, "script", where, 1, NULL, &script)) != SS_OK ||
            (e = get_int(c, st, "workers", where, 1, SS_MAX_WORKERS, 1, &workers)) != SS_OK ||
            (e = get_bool(c, st, "enclave", where, 0, &g->enclave)) != SS_OK) {
            free(script);
            return e;
        }
        g->script = resolve(c, script);
        free(script);
        g->workers = (int)workers;
        if ((e = get_string(c, st, "name", where, 0, NULL, &g->name)) != SS_OK)
            return e;
        if (!g->name) {
            char dflt[32];
            snprintf(dflt, sizeof dflt, "stage%d", (int)i);
            g->name = strdup(dflt);
        }
        for (int k = 0; k < s->nstages - 1; k++)
            if (!strcmp(s->stages[k].name, g->name))
                return fail(c, "%s: stage name '%s' is used twice", where, g->name);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    if (rawfield(L, top, "sink") != LUA_TTABLE)
        return fail(c, "missing table 'sink' (sink = { script = ... })");
    int sk = lua_gettop(L);
    char *script = NULL;
    if ((e = only_keys(c, sk, "sink", sink_keys)) != SS_OK ||
        (e = get_string(c, sk, "script", "sink", 1, NULL, &script)) != SS_OK)
        return e;
    s->sink_script = resolve(c, script);
    free(script);
    lua_pop(L, 1);

    if (strcmp(s->security, "plain") && strcmp(s->security, "encrypted") && strcmp(s->security, "enclave"))
        return fail(c, "security: expected \"plain\", \"encrypted\" or \"enclave\", got \"%s\"", s->security);
    if (strcmp(s->on_error, "skip") && strcmp(s->on_error, "fail"))
        return fail(c, "on_error: expected \"skip\" or \"fail\", got \"%s\"", s->on_error);
    return SS_OK;
}

typedef struct {
    ctx *c;
    ss_spec *s;
    ss_err e;
} parse_call;

/* parse, called through lua_pcall with the spec's table and a parse_call. */
static int parse_protected(lua_State *L)
{
    parse_call *p = lua_touserdata(L, 2);
    lua_settop(L, 1);
    p->e = parse(p->c, p->s);
    return 0;
}

ss_err ss_spec_load(const char *path, ss_spec *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    ctx c = { .path = path, .err = err, .errlen = errlen };
    ss_err e = SS_ERR_NOMEM;
    if (!(s->path = strdup(path)) || !(c.dir = strdup(path)))
        goto out;
    char *slash = strrchr(c.dir, '/');
    if (slash)
        *slash = '\0';
    else
        c.dir[0] = '\0';
    if (!(c.L = luaL_newstate()))
        goto out;
    luaL_requiref(c.L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(c.L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(c.L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(c.L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_settop(c.L, 0);
    for (const char *const *g = (const char *const[]){ "dofile", "loadfile", "load", "require", NULL }; *g; g++) {
        lua_pushnil(c.L);
        lua_setglobal(c.L, *g);
    }
    int loaded = luaL_loadfilex(c.L, path, "t");
    if (loaded != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(c.L, -1));   /* always a string */
        e = loaded == LUA_ERRFILE ? SS_ERR_IO : SS_ERR_USAGE;
        goto out;
    }
    if (lua_pcall(c.L, 0, 1, 0) != LUA_OK) {
        const char *msg = lua_tostring(c.L, -1);
        if (msg)
            snprintf(err, errlen, "%s", msg);
        else
            fail(&c, "the spec raised an error that is not a string (a %s)", luaL_typename(c.L, -1));
        e = SS_ERR_USAGE;
        goto out;
    }
    parse_call pc = { &c, s, SS_ERR_USAGE };
    lua_pushcfunction(c.L, parse_protected);
    lua_insert(c.L, 1);
    lua_pushlightuserdata(c.L, &pc);
    int status = lua_pcall(c.L, 2, 0, 0);
    e = pc.e;
    if (status == LUA_ERRMEM) {
        e = SS_ERR_NOMEM;
    } else if (status != LUA_OK) {
        const char *msg = lua_tostring(c.L, -1);
        e = fail(&c, "cannot read the spec's table: %s", msg ? msg : "(error object is not a string)");
    }
out:
    if (e == SS_ERR_NOMEM)
        snprintf(err, errlen, "%s: out of memory", path);
    if (c.L)
        lua_close(c.L);
    free(c.dir);
    if (e != SS_OK)
        ss_spec_cleanup(s);
    return e;
}

void ss_spec_cleanup(ss_spec *s)
{
    free(s->path);
    free(s->name);
    free(s->input);
    for (int i = 0; i < s->nstages; i++) {
        free(s->stages[i].name);
        free(s->stages[i].script);
    }
    free(s->sink_script);
    free(s->security);
    free(s->key);
    free(s->on_error);
    memset(s, 0, sizeof *s);
}
