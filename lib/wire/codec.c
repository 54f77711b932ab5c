/*
 * codec.c - Lua values to MessagePack and back (the batch payload of
 * docs/protocol.md).
 *
 * Writing goes through msgpack-c's msgpack_packer, whose write callback
 * appends to the writer's own buffer: the buffer grows geometrically up to
 * the writer's hard limit and is kept across batches, so a steady stream of
 * events costs no allocation. A value that does not fit, or that cannot be
 * encoded, is rolled back (len and count restored): the batch stays valid.
 * The writer walks tables with raw access only (lua_next, lua_rawgeti,
 * lua_rawlen), none of which can raise a Lua error, so it needs no protected
 * call.
 *
 * Reading is a small hand-written MessagePack parser rather than
 * msgpack_unpack_next: that API builds a msgpack_object tree in a zone for
 * every value (an allocation per event, then a second walk to reach Lua) and
 * refuses nesting deeper than its fixed stack (32), while our writer emits up
 * to 64 levels. Ours walks the payload in place and pushes straight onto the
 * Lua stack. Pushing allocates in Lua, which may raise (the memory cap), so
 * each event is decoded inside lua_pcall; a malformed payload is not a Lua
 * error but an SS_ERR_FORMAT with a message naming the byte offset.
 *
 * Invariants: len <= limit at all times; the reader never reads past len and
 * never trusts a length field before checking it against the bytes left.
 * Tables are pre-sized from their declared lengths only up to a budget of
 * one slot per byte of the payload, shared by every container in it: nested
 * containers that each declare as many elements as there are bytes left
 * cannot make the reader allocate more than a small multiple of the
 * payload's size before their elements are actually read.
 *
 * Beyond codec.h: the light userdata NULL (json.null) is encoded as nil, so
 * decoded JSON can flow through a pipeline; msgpack uint64 values above
 * INT64_MAX decode to the Lua integer with the same bits (as Lua's own hex
 * literals do); a trailing byte after the last event of a batch is
 * SS_ERR_FORMAT.
 */
#include "wire/codec.h"
#include "wire/frame.h"

#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64                 /* nesting bound on tables, both ways */
#define HEADER_RESERVE 5             /* array32: 0xdd + 4 bytes */
#define FIRST_CAP (64u << 10)        /* initial storage of a writer */

/* ---- writing ---------------------------------------------------------- */

typedef struct {
    ss_batch_writer *w;
    lua_State *L;
    ss_err err;                      /* first error, SS_OK while none */
    char *msg;                       /* caller's message buffer, may be NULL */
    size_t msglen;
    int depth;                       /* tables currently open */
    const void *open[MAX_DEPTH];     /* those tables, outermost first */
} packer_ctx;

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
{
    if (!msg || msglen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

static int pack_fail(packer_ctx *c, ss_err err)
{
    if (c->err == SS_OK)
        c->err = err;
    return -1;
}

/* msgpack_packer callback: append to the writer within its limit. */
static int pack_write(void *data, const char *buf, size_t n)
{
    packer_ctx *c = data;
    ss_batch_writer *w = c->w;
    if (n > w->limit - w->len) {
        set_msg(c->msg, c->msglen, "event does not fit: batch limit is %zu bytes", w->limit);
        return pack_fail(c, SS_ERR_TOOBIG);
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap = cap > w->limit / 2 ? w->limit : cap * 2;
        if (cap > w->limit)
            cap = w->limit;
        char *p = realloc(w->data, cap);
        if (!p) {
            set_msg(c->msg, c->msglen, "out of memory growing a batch to %zu bytes", cap);
            return pack_fail(c, SS_ERR_NOMEM);
        }
        w->data = p;
        w->cap = cap;
    }
    memcpy(w->data + w->len, buf, n);
    w->len += n;
    return 0;
}

static int pack_value(packer_ctx *c, msgpack_packer *pk, int idx);

/* Keys exactly 1..n with n >= 1 make an array; count all keys for a map. */
static int table_shape(lua_State *L, int idx, size_t *nkeys)
{
    lua_Unsigned n = lua_rawlen(L, idx);
    size_t total = 0;
    int array = n > 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        total++;
        if (array) {
            lua_Integer k = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
            array = k >= 1 && (lua_Unsigned)k <= n;
        }
        lua_pop(L, 1);
    }
    *nkeys = total;
    return array && total == n;
}

/* A table without a border (rawlen 0: no key 1) is a map, or empty: its
 * pairs are written in one walk. The header's size depends on the count,
 * known only at the end, so one byte is reserved (fixmap, up to 15 pairs)
 * and the pairs moved up when map16 or map32 is needed. */
static int pack_map_one_pass(packer_ctx *c, msgpack_packer *pk, int idx)
{
    lua_State *L = c->L;
    ss_batch_writer *w = c->w;
    if (pack_write(c, "\x80", 1) != 0)
        return -1;
    size_t at = w->len - 1;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (pack_value(c, pk, -2) != 0 || pack_value(c, pk, -1) != 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
        n++;
    }
    uint8_t *h = (uint8_t *)w->data + at;
    if (n <= 15) {
        *h = (uint8_t)(0x80 | n);
        return 0;
    }
    size_t extra = n <= 0xffff ? 2 : 4;
    static const char pad[4];
    if (pack_write(c, pad, extra) != 0)
        return -1;
    h = (uint8_t *)w->data + at;   /* the storage may have moved */
    memmove(h + 1 + extra, h + 1, w->len - extra - (at + 1));
    if (extra == 2) {
        h[0] = 0xde;
        h[1] = (uint8_t)(n >> 8);
        h[2] = (uint8_t)n;
    } else {
        h[0] = 0xdf;
        h[1] = (uint8_t)(n >> 24);
        h[2] = (uint8_t)(n >> 16);
        h[3] = (uint8_t)(n >> 8);
        h[4] = (uint8_t)n;
    }
    return 0;
}

static int pack_table(packer_ctx *c, msgpack_packer *pk, int idx)
{
    lua_State *L = c->L;
    const void *self = lua_topointer(L, idx);
    for (int i = 0; i < c->depth; i++) {
        if (c->open[i] == self) {
            set_msg(c->msg, c->msglen, "cannot encode a table that contains itself (cycle)");
            return pack_fail(c, SS_ERR_FORMAT);
        }
    }
    if (c->depth == MAX_DEPTH) {
        set_msg(c->msg, c->msglen, "tables nested deeper than %d levels", MAX_DEPTH);
        return pack_fail(c, SS_ERR_FORMAT);
    }
    if (!lua_checkstack(L, 4)) {
        set_msg(c->msg, c->msglen, "out of Lua stack space encoding a table");
        return pack_fail(c, SS_ERR_NOMEM);
    }
    c->open[c->depth++] = self;

    size_t n;
    int rc = 0;
    if (lua_rawlen(L, idx) == 0) {
        rc = pack_map_one_pass(c, pk, idx);
    } else if (table_shape(L, idx, &n)) {
        rc = msgpack_pack_array(pk, n);
        for (size_t i = 1; rc == 0 && i <= n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            rc = pack_value(c, pk, -1);
            lua_pop(L, 1);
        }
    } else {
        rc = msgpack_pack_map(pk, n);
        if (rc == 0) {
            lua_pushnil(L);
            while (lua_next(L, idx)) {
                if (pack_value(c, pk, -2) != 0 || pack_value(c, pk, -1) != 0) {
                    lua_pop(L, 2);
                    rc = -1;
                    break;
                }
                lua_pop(L, 1);
            }
        }
    }
    c->depth--;
    return rc;
}

static int pack_value(packer_ctx *c, msgpack_packer *pk, int idx)
{
    lua_State *L = c->L;
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return msgpack_pack_nil(pk);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return msgpack_pack_int64(pk, (int64_t)lua_tointeger(L, idx));
        return msgpack_pack_double(pk, (double)lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len > UINT32_MAX) {
            set_msg(c->msg, c->msglen, "string of %zu bytes is too long", len);
            return pack_fail(c, SS_ERR_TOOBIG);
        }
        if (msgpack_pack_str(pk, len) != 0)
            return -1;
        return msgpack_pack_str_body(pk, s, len);
    }
    case LUA_TTABLE:
        return pack_table(c, pk, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)   /* json.null */
            return msgpack_pack_nil(pk);
        break;
    default:
        break;
    }
    set_msg(c->msg, c->msglen, "cannot encode a value of type %s", luaL_typename(L, idx));
    return pack_fail(c, SS_ERR_FORMAT);
}

/* Append one value; on failure restore w->len. */
static ss_err append_value(ss_batch_writer *w, lua_State *L, int idx, char *msg, size_t msglen)
{
    packer_ctx c = {.w = w, .L = L, .err = SS_OK, .msg = msg, .msglen = msglen};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c, pack_write);
    size_t saved = w->len;
    if (pack_value(&c, &pk, idx) != 0) {
        w->len = saved;
        return c.err != SS_OK ? c.err : SS_ERR_FORMAT;
    }
    return SS_OK;
}

/*
 * Writer storage starts at min(limit, 64 KiB) and doubles up to limit.
 * Errors: SS_ERR_USAGE when limit leaves no room for an event after the
 * reserved header, SS_ERR_NOMEM.
 */
ss_err ss_batch_writer_init(ss_batch_writer *w, size_t limit)
{
    memset(w, 0, sizeof *w);
    if (limit <= HEADER_RESERVE)
        return SS_ERR_USAGE;
    w->cap = limit < FIRST_CAP ? limit : FIRST_CAP;
    w->data = malloc(w->cap);
    if (!w->data) {
        w->cap = 0;
        return SS_ERR_NOMEM;
    }
    w->limit = limit;
    w->body = HEADER_RESERVE;
    w->len = HEADER_RESERVE;
    return SS_OK;
}

/* Frees the storage; safe on a zeroed or already cleaned-up writer. */
void ss_batch_writer_cleanup(ss_batch_writer *w)
{
    free(w->data);
    memset(w, 0, sizeof *w);
}

void ss_batch_writer_reset(ss_batch_writer *w)
{
    w->len = w->body;
    w->count = 0;
}

/*
 * Errors: SS_ERR_TOOBIG (the limit, or 2^32-1 events), SS_ERR_FORMAT (a
 * function, userdata, thread, a cycle, nesting deeper than 64), SS_ERR_NOMEM.
 * The batch is unchanged on any error.
 */
ss_err ss_batch_writer_add(ss_batch_writer *w, lua_State *L, int idx, char *msg, size_t msglen)
{
    if (w->count == UINT32_MAX) {
        set_msg(msg, msglen, "batch already holds %u events", w->count);
        return SS_ERR_TOOBIG;
    }
    ss_err err = append_value(w, L, idx, msg, msglen);
    if (err == SS_OK)
        w->count++;
    return err;
}

/* Errors: SS_ERR_TOOBIG, SS_ERR_NOMEM; the batch is unchanged on error. */
ss_err ss_batch_writer_add_string(ss_batch_writer *w, const char *s, size_t len)
{
    if (w->count == UINT32_MAX || len > UINT32_MAX)
        return SS_ERR_TOOBIG;
    packer_ctx c = {.w = w, .err = SS_OK};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c, pack_write);
    size_t saved = w->len;
    if (msgpack_pack_str(&pk, len) != 0 || msgpack_pack_str_body(&pk, s, len) != 0) {
        w->len = saved;
        return c.err;
    }
    w->count++;
    return SS_OK;
}

/* Writes the smallest array header that holds count just before the body. */
void ss_batch_writer_finish(ss_batch_writer *w, const char **out, size_t *len)
{
    uint8_t *body = (uint8_t *)w->data + w->body;
    uint8_t *h;
    uint32_t n = w->count;
    if (n <= 15) {
        h = body - 1;
        h[0] = (uint8_t)(0x90 | n);
    } else if (n <= 0xffff) {
        h = body - 3;
        h[0] = 0xdc;
        h[1] = (uint8_t)(n >> 8);
        h[2] = (uint8_t)n;
    } else {
        h = body - 5;
        h[0] = 0xdd;
        h[1] = (uint8_t)(n >> 24);
        h[2] = (uint8_t)(n >> 16);
        h[3] = (uint8_t)(n >> 8);
        h[4] = (uint8_t)n;
    }
    *out = (const char *)h;
    *len = w->len - (size_t)((char *)h - w->data);
}

/*
 * Standalone document: a writer without reserved header, limited to the
 * 16 MiB message size. *out is malloc'd, the caller frees it; nothing is
 * allocated on error.
 */
ss_err ss_codec_encode(lua_State *L, int idx, char **out, size_t *len)
{
    ss_batch_writer w = {.limit = SS_MAX_MESSAGE};   /* a document fits in a message */
    ss_err err = append_value(&w, L, idx, NULL, 0);
    if (err != SS_OK) {
        free(w.data);
        return err;
    }
    *out = w.data;
    *len = w.len;
    return SS_OK;
}

/* ---- reading ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t len;
    size_t pos;
    size_t presize;   /* table slots that may still be pre-allocated */
    ss_err err;
    char *msg;
    size_t msglen;
} unpacker;

/* How many of a container's n declared elements to pre-allocate. */
static int presize(unpacker *u, uint64_t n)
{
    uint64_t hint = n < u->presize ? n : u->presize;
    if (hint > INT_MAX)
        hint = INT_MAX;
    u->presize -= hint;
    return (int)hint;
}

static int unpack_fail(unpacker *u, size_t at, const char *what)
{
    set_msg(u->msg, u->msglen, "malformed MessagePack at byte %zu: %s", at, what);
    u->err = SS_ERR_FORMAT;
    return -1;
}

/* Big-endian unsigned of n bytes at u->pos; fails when truncated. */
static int take_be(unpacker *u, size_t n, uint64_t *v)
{
    if (u->len - u->pos < n)
        return unpack_fail(u, u->pos, "truncated value");
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = (x << 8) | u->p[u->pos + i];
    u->pos += n;
    *v = x;
    return 0;
}

static int push_value(lua_State *L, unpacker *u, int depth);

static int push_bytes(lua_State *L, unpacker *u, size_t n, size_t at)
{
    if (u->len - u->pos < n)
        return unpack_fail(u, at, "string runs past the end of the payload");
    lua_pushlstring(L, (const char *)u->p + u->pos, n);
    u->pos += n;
    return 0;
}

static int push_container(lua_State *L, unpacker *u, int depth, uint64_t n, int map, size_t at)
{
    if (depth >= MAX_DEPTH)
        return unpack_fail(u, at, "nested deeper than 64 levels");
    /* every element takes at least one byte: bounds n before allocating */
    if (n > (u->len - u->pos) / (map ? 2 : 1))
        return unpack_fail(u, at, map ? "map longer than the payload" : "array longer than the payload");
    luaL_checkstack(L, 3, "decoding MessagePack");
    int hint = presize(u, n);
    if (!map) {
        lua_createtable(L, hint, 0);
        for (uint64_t i = 1; i <= n; i++) {
            if (push_value(L, u, depth + 1) != 0)
                return -1;
            lua_rawseti(L, -2, (lua_Integer)i);
        }
        return 0;
    }
    lua_createtable(L, 0, hint);
    for (uint64_t i = 0; i < n; i++) {
        size_t key_at = u->pos;
        if (push_value(L, u, depth + 1) != 0)
            return -1;
        if (lua_isnil(L, -1))
            return unpack_fail(u, key_at, "nil map key");
        if (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1)))
            return unpack_fail(u, key_at, "NaN map key");
        if (push_value(L, u, depth + 1) != 0)
            return -1;
        lua_rawset(L, -3);
    }
    return 0;
}

/* Push one value; on a format error return -1 with u->err set (the stack
 * may hold partial results: the protected caller restores it). */
static int push_value(lua_State *L, unpacker *u, int depth)
{
    size_t at = u->pos;
    if (u->pos >= u->len)
        return unpack_fail(u, at, "truncated value");
    uint8_t b = u->p[u->pos++];
    uint64_t v;

    if (b <= 0x7f) {
        lua_pushinteger(L, b);
        return 0;
    }
    if (b >= 0xe0) {
        lua_pushinteger(L, (int8_t)b);
        return 0;
    }
    if ((b & 0xf0) == 0x80)
        return push_container(L, u, depth, b & 0x0f, 1, at);
    if ((b & 0xf0) == 0x90)
        return push_container(L, u, depth, b & 0x0f, 0, at);
    if ((b & 0xe0) == 0xa0)
        return push_bytes(L, u, b & 0x1f, at);

    switch (b) {
    case 0xc0:
        lua_pushnil(L);
        return 0;
    case 0xc2:
        lua_pushboolean(L, 0);
        return 0;
    case 0xc3:
        lua_pushboolean(L, 1);
        return 0;
    case 0xc4: case 0xd9:   /* bin8, str8 */
    case 0xc5: case 0xda:   /* bin16, str16 */
    case 0xc6: case 0xdb: { /* bin32, str32 */
        size_t w = (b == 0xc4 || b == 0xd9) ? 1 : (b == 0xc5 || b == 0xda) ? 2 : 4;
        if (take_be(u, w, &v) != 0)
            return -1;
        return push_bytes(L, u, (size_t)v, at);
    }
    case 0xc7: case 0xc8: case 0xc9:
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        return unpack_fail(u, at, "extension types are not supported");
    case 0xca: {
        if (take_be(u, 4, &v) != 0)
            return -1;
        uint32_t bits = (uint32_t)v;
        float f;
        memcpy(&f, &bits, sizeof f);
        lua_pushnumber(L, (lua_Number)f);
        return 0;
    }
    case 0xcb: {
        if (take_be(u, 8, &v) != 0)
            return -1;
        double d;
        memcpy(&d, &v, sizeof d);
        lua_pushnumber(L, (lua_Number)d);
        return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        if (take_be(u, (size_t)1 << (b - 0xcc), &v) != 0)
            return -1;
        lua_pushinteger(L, (lua_Integer)v);   /* above INT64_MAX: same bits */
        return 0;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        size_t n = (size_t)1 << (b - 0xd0);
        if (take_be(u, n, &v) != 0)
            return -1;
        int64_t s = n == 1 ? (int8_t)v : n == 2 ? (int16_t)v : n == 4 ? (int32_t)v : (int64_t)v;
        lua_pushinteger(L, (lua_Integer)s);
        return 0;
    }
    case 0xdc: case 0xdd: case 0xde: case 0xdf:
        if (take_be(u, (b == 0xdc || b == 0xde) ? 2 : 4, &v) != 0)
            return -1;
        return push_container(L, u, depth, v, b >= 0xde, at);
    default:   /* 0xc1 */
        return unpack_fail(u, at, "byte 0xc1 is not a MessagePack type");
    }
}

static int push_protected(lua_State *L)
{
    unpacker *u = lua_touserdata(L, 1);
    if (push_value(L, u, 0) != 0)
        return 0;
    return 1;
}

/*
 * Decode one value at u->pos onto L, inside lua_pcall. On success exactly one
 * value is pushed; on error nothing is, u->err says why.
 */
static ss_err decode_one(lua_State *L, unpacker *u)
{
    if (!lua_checkstack(L, 3)) {
        set_msg(u->msg, u->msglen, "out of Lua stack space");
        return SS_ERR_NOMEM;
    }
    int top = lua_gettop(L);
    u->err = SS_OK;
    lua_pushcfunction(L, push_protected);
    lua_pushlightuserdata(L, u);
    int status = lua_pcall(L, 1, 1, 0);
    if (status != LUA_OK) {
        set_msg(u->msg, u->msglen, "decoding an event: %s",
                lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "Lua error");
        lua_settop(L, top);
        return status == LUA_ERRMEM ? SS_ERR_NOMEM : SS_ERR_LUA;
    }
    if (u->err != SS_OK) {
        lua_settop(L, top);
        return u->err;
    }
    return SS_OK;
}

/* Reads the array header; count must be possible given the bytes left. */
ss_err ss_batch_reader_init(ss_batch_reader *r, const void *payload, size_t len)
{
    const uint8_t *p = payload;
    memset(r, 0, sizeof *r);
    if (len == 0)
        return SS_ERR_FORMAT;
    size_t pos = 1;
    uint32_t n;
    if ((p[0] & 0xf0) == 0x90) {
        n = p[0] & 0x0f;
    } else if (p[0] == 0xdc && len >= 3) {
        n = (uint32_t)p[1] << 8 | p[2];
        pos = 3;
    } else if (p[0] == 0xdd && len >= 5) {
        n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        pos = 5;
    } else {
        return SS_ERR_FORMAT;
    }
    if (n > len - pos)
        return SS_ERR_FORMAT;
    r->data = payload;
    r->len = len;
    r->pos = pos;
    r->count = n;
    r->next = 0;
    r->presize = len;
    return SS_OK;
}

/*
 * After an error the rest of the batch cannot be located: the reader is
 * marked finished and later calls return SS_ERR_CLOSED.
 * Errors: SS_ERR_FORMAT (message names the byte offset), SS_ERR_NOMEM or
 * SS_ERR_LUA when Lua could not allocate.
 */
ss_err ss_batch_reader_next(ss_batch_reader *r, lua_State *L, char *msg, size_t msglen)
{
    if (r->next >= r->count) {
        if (r->pos != r->len) {
            set_msg(msg, msglen, "malformed MessagePack at byte %zu: %zu bytes after the last event",
                    r->pos, r->len - r->pos);
            r->pos = r->len;
            return SS_ERR_FORMAT;
        }
        return SS_ERR_CLOSED;
    }
    unpacker u = {.p = (const uint8_t *)r->data, .len = r->len, .pos = r->pos,
                  .presize = r->presize, .msg = msg, .msglen = msglen};
    ss_err err = decode_one(L, &u);
    r->presize = u.presize;
    if (err != SS_OK) {
        r->next = r->count;
        r->pos = r->len;
        return err;
    }
    r->pos = u.pos;
    r->next++;
    return SS_OK;
}

/* Pushes one value on success, nothing on error (SS_ERR_FORMAT when buf is
 * not exactly one MessagePack value). */
ss_err ss_codec_decode(lua_State *L, const void *buf, size_t len)
{
    unpacker u = {.p = buf, .len = len, .presize = len};
    ss_err err = decode_one(L, &u);
    if (err != SS_OK)
        return err;
    if (u.pos != len) {
        lua_pop(L, 1);
        return SS_ERR_FORMAT;
    }
    return SS_OK;
}
