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
 * The parser makes one pass over the line (plus a counting pass to size the
 * table). Fields are pushed straight from the line with lua_pushlstring; only
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

static int csv_parse(lua_State *L)
{
    size_t len, seplen;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *seps = luaL_optlstring(L, 2, ",", &seplen);
    luaL_argcheck(L, seplen == 1 && seps[0] != '"' && seps[0] != '\r' && seps[0] != '\n', 2,
                  "separator must be one character, not a quote or a newline");
    const char sep = seps[0];

    if (len > 0 && s[len - 1] == '\n')
        len--;
    if (len > 0 && s[len - 1] == '\r')
        len--;
    const char *p = s, *end = s + len;

    int nfields = 1;   /* an upper bound: separators inside quotes count too */
    for (const char *q = s; q < end; q++)
        nfields += *q == sep;
    lua_createtable(L, nfields, 0);

    for (int col = 1;; col++) {
        if (p < end && *p == '"') {
            const char *body = ++p;
            int escaped = 0;
            for (;;) {
                const char *q = memchr(p, '"', (size_t)(end - p));
                if (!q)
                    return luaL_error(L, "csv: unterminated quoted field starting at column %d", col);
                if (q + 1 < end && q[1] == '"') {
                    escaped = 1;
                    p = q + 2;
                    continue;
                }
                p = q;
                break;
            }
            if (escaped)
                push_unescaped(L, body, p);
            else
                lua_pushlstring(L, body, (size_t)(p - body));
            lua_rawseti(L, -2, col);
            p++;   /* the closing quote */
            if (p == end)
                break;
            if (*p != sep)
                return luaL_error(L, "csv: unexpected character after the closing quote of column %d", col);
            p++;
        } else {
            const char *field = p;
            while (p < end && *p != sep) {
                if (*p == '"')
                    return luaL_error(L, "csv: quote inside unquoted field at column %d", col);
                p++;
            }
            lua_pushlstring(L, field, (size_t)(p - field));
            lua_rawseti(L, -2, col);
            if (p == end)
                break;
            p++;
        }
    }
    return 1;
}

static const luaL_Reg csv_funcs[] = {
    {"parse", csv_parse},
    {NULL, NULL},
};

int luaopen_csv(lua_State *L)
{
    luaL_newlib(L, csv_funcs);
    return 1;
}
