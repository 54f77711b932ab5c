/*
 * lcsv.c - the `csv` Lua module: csv.parse(line [, sep]) -> array of strings.
 *
 * RFC 4180 fields: a field is either unquoted (no quote character in it) or
 * quoted ("..." with "" standing for one quote; separators and newlines may
 * appear inside). One trailing "\n", then one trailing "\r", are removed from
 * the line first. An empty line is one empty field; "a," is two fields.
 *
 * Anything else is an error raised in Lua, naming the 1-based column and the
 * problem, e.g. "csv: unterminated quoted field starting at column 3"; the
 * caller (a mapper) decides whether to skip the line.
 *
 * csv.fields(line, i, j, ...) returns the number of fields and only the
 * columns asked for: a mapper that reads two of 29 columns makes two strings.
 *
 * The parser makes one pass over the line (plus a counting pass to size the
 * table); csv.fields first looks for a quote, and a line without one is cut
 * at commas with memchr up to the last column asked for, the rest counted. Fields are pushed straight from the line with lua_pushlstring; only
 * a quoted field containing "" goes through a luaL_Buffer.
 */
#include "lmodules.h"

#include <lauxlib.h>
#include <string.h>

/* Push the quoted field body [b, e), which holds `""` escapes. */
static void push_unescaped(lua_State *L, const char *b, const char *e)
{
    luaL_Buffer buf;
    luaL_buffinitsize(L, &buf, (size_t)(e - b));
    const char *q;
    while ((q = memchr(b, '"', (size_t)(e - b))) != NULL) {
        luaL_addlstring(&buf, b, (size_t)(q - b) + 1);   /* keep one quote */
        b = q + 2;
    }
    luaL_addlstring(&buf, b, (size_t)(e - b));
    luaL_pushresult(&buf);
}

/* One field starting at *pp: sets [*b, *e) to its body (without quotes),
 * *escaped when it holds "" escapes, and *pp past its separator; returns 1
 * when more fields follow, 0 at the end of the line. Raises the errors the
 * module promises. */
static int next_field(lua_State *L, const char **pp, const char *end, char sep, int col,
                      const char **b, const char **e, int *escaped)
{
    const char *p = *pp;
    *escaped = 0;
    if (p < end && *p == '"') {
        const char *body = ++p;
        for (;;) {
            const char *q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return luaL_error(L, "csv: unterminated quoted field starting at column %d", col);
            if (q + 1 < end && q[1] == '"') {
                *escaped = 1;
                p = q + 2;
                continue;
            }
            p = q;
            break;
        }
        *b = body;
        *e = p;
        p++;   /* the closing quote */
        if (p == end) {
            *pp = p;
            return 0;
        }
        if (*p != sep)
            return luaL_error(L, "csv: unexpected character after the closing quote of column %d", col);
        *pp = p + 1;
        return 1;
    }
    const char *field = p;
    while (p < end && *p != sep) {
        if (*p == '"')
            return luaL_error(L, "csv: quote inside unquoted field at column %d", col);
        p++;
    }
    *b = field;
    *e = p;
    if (p == end) {
        *pp = p;
        return 0;
    }
    *pp = p + 1;
    return 1;
}

static void push_field(lua_State *L, const char *b, const char *e, int escaped)
{
    if (escaped)
        push_unescaped(L, b, e);
    else
        lua_pushlstring(L, b, (size_t)(e - b));
}

/* The line without one trailing "\n", then one trailing "\r". */
static const char *check_line(lua_State *L, int idx, size_t *len)
{
    const char *s = luaL_checklstring(L, idx, len);
    if (*len > 0 && s[*len - 1] == '\n')
        (*len)--;
    if (*len > 0 && s[*len - 1] == '\r')
        (*len)--;
    return s;
}

static int csv_parse(lua_State *L)
{
    size_t len, seplen;
    const char *s = check_line(L, 1, &len);
    const char *seps = luaL_optlstring(L, 2, ",", &seplen);
    luaL_argcheck(L, seplen == 1 && seps[0] != '"' && seps[0] != '\r' && seps[0] != '\n', 2,
                  "separator must be one character, not a quote or a newline");
    const char sep = seps[0];
    const char *p = s, *end = s + len;

    int nfields = 1;   /* an upper bound: separators inside quotes count too */
    for (const char *q = s; q < end; q++)
        nfields += *q == sep;
    lua_createtable(L, nfields, 0);

    for (int col = 1;; col++) {
        const char *b, *e;
        int escaped;
        int more = next_field(L, &p, end, sep, col, &b, &e, &escaped);
        push_field(L, b, e, escaped);
        lua_rawseti(L, -2, col);
        if (!more)
            break;
    }
    return 1;
}

/* csv.fields(line, i, j, ...) -> n, field i, field j, ...: the number of
 * fields and only the columns asked for (nil past the last one), checking
 * the whole line like parse but making no table and no string for the other
 * columns. Comma-separated. */
static int csv_fields(lua_State *L)
{
    size_t len;
    const char *s = check_line(L, 1, &len);
    int nwant = lua_gettop(L) - 1, want[32], maxcol = 0;
    luaL_argcheck(L, nwant <= 32, 34, "at most 32 columns");
    luaL_checkstack(L, nwant + 2, "too many columns asked for");
    for (int i = 0; i < nwant; i++) {
        lua_Integer c = luaL_checkinteger(L, i + 2);
        luaL_argcheck(L, c >= 1 && c <= 1000000, i + 2, "column numbers start at 1");
        want[i] = (int)c;
        if (want[i] > maxcol)
            maxcol = want[i];
    }
    int base = lua_gettop(L);
    for (int i = 0; i < nwant; i++)
        lua_pushnil(L);
    const char *p = s, *end = s + len;
    int col = 1;
    if (!memchr(s, '"', len)) {
        /* no quote anywhere (the common case): fields lie between commas,
         * and past the last column asked for only the commas are counted */
        for (;; col++) {
            const char *c = memchr(p, ',', (size_t)(end - p));
            const char *e = c ? c : end;
            for (int i = 0; i < nwant; i++)
                if (want[i] == col) {
                    lua_pushlstring(L, p, (size_t)(e - p));
                    lua_replace(L, base + 1 + i);
                }
            if (!c)
                break;
            p = c + 1;
            if (col == maxcol) {
                int commas = 0;
                for (const char *q = p; q < end; q++)
                    commas += *q == ',';
                col += commas + 1;
                break;
            }
        }
        lua_pushinteger(L, col);
        lua_insert(L, base + 1);
        return nwant + 1;
    }
    for (;; col++) {
        const char *b, *e;
        int escaped;
        int more = next_field(L, &p, end, ',', col, &b, &e, &escaped);
        if (col <= maxcol)
            for (int i = 0; i < nwant; i++)
                if (want[i] == col) {
                    push_field(L, b, e, escaped);
                    lua_replace(L, base + 1 + i);
                }
        if (!more)
            break;
    }
    lua_pushinteger(L, col);
    lua_insert(L, base + 1);
    return nwant + 1;
}

static const luaL_Reg csv_funcs[] = {
    {"parse", csv_parse},
    {"fields", csv_fields},
    {NULL, NULL},
};

int luaopen_csv(lua_State *L)
{
    luaL_newlib(L, csv_funcs);
    return 1;
}
