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
 * table); csv.fields first scans the line for commas and quotes sixteen
 * bytes at a time, and a line without quotes is cut at its commas, the
 * columns asked for pushed straight from it; a line with a quote takes the
 * full parser. Fields are pushed straight from the line with lua_pushlstring; only
 * a quoted field containing "" goes through a luaL_Buffer.
 */
#include "lua/lmodules.h"

#include <lauxlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

#define MAX_CUTS 64   /* csv.fields' fast path: columns up to 64 */

/* One pass over a line without quotes: the positions of its first `maxcut`
 * commas into cut[], and the number of all of them; -1 when the line holds
 * a quote (then the full parser is needed). Sixteen bytes at a time with
 * SSE2 where the compiler has it. */
static int scan_commas(const char *s, size_t len, const char **cut, int maxcut)
{
    int n = 0;
    size_t i = 0;
#ifdef __SSE2__
    const __m128i comma = _mm_set1_epi8(','), quote = _mm_set1_epi8('"');
    for (; i + 16 <= len; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)))
            return -1;
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, comma));
        if (n >= maxcut) {
            n += __builtin_popcount(m);
            continue;
        }
        while (m) {
            if (n < maxcut)
                cut[n] = s + i + __builtin_ctz(m);
            n++;
            m &= m - 1;
        }
    }
#endif
    for (; i < len; i++) {
        if (s[i] == '"')
            return -1;
        if (s[i] == ',') {
            if (n < maxcut)
                cut[n] = s + i;
            n++;
        }
    }
    return n;
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
    const char *p = s, *end = s + len;
    if (maxcol <= MAX_CUTS) {
        const char *cut[MAX_CUTS];
        int commas = scan_commas(s, len, cut, maxcol);
        if (commas >= 0) {
            /* no quote anywhere (the common case): field c lies between
             * comma c - 1 and comma c */
            lua_pushinteger(L, commas + 1);
            for (int i = 0; i < nwant; i++) {
                int c = want[i];
                if (c > commas + 1) {
                    lua_pushnil(L);
                    continue;
                }
                const char *b = c == 1 ? s : cut[c - 2] + 1;
                const char *e = c <= commas ? cut[c - 1] : end;
                lua_pushlstring(L, b, (size_t)(e - b));
            }
            return nwant + 1;
        }
    }
    for (int i = 0; i < nwant; i++)
        lua_pushnil(L);
    int col = 1;
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
