/*
 * lnet.c - the `securestreams.net` Lua module: producer and consumer links,
 * batch writers and lineage helpers, for the Lua side of our components
 * (zmq-rx.lua, the stage driver). Events cross in whole batches: a consumer
 * returns one decoded batch per call, a writer collects a batch that one
 * publish sends.
 *
 * Ids are 64-bit and travel as Lua integers (bit patterns; printed in hex).
 * All errors are raised as Lua errors with a message naming the address.
 */
#include "wire/codec.h"
#include "wire/envelope.h"
#include "wire/eos.h"
#include "wire/frame.h"
#include "wire/replay.h"
#include "net/link.h"
#include "lua/lstate.h"

#include <lauxlib.h>
#include <sodium.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define CONSUMER_MT "securestreams.consumer"
#define PRODUCER_MT "securestreams.producer"
#define WRITER_MT "securestreams.writer"
#define KEY_MT "securestreams.key"
#define RAW_MT "securestreams.raw"
#define RECEIPT_RING 256

static void *zctx;

static void *context(lua_State *L)
{
    if (!zctx && !(zctx = zmq_ctx_new()))
        luaL_error(L, "cannot create a ZeroMQ context: %s", zmq_strerror(zmq_errno()));
    return zctx;
}

/* The pipeline id (SS_STREAM); a malformed one is a Lua error naming it. */
static uint32_t stream_from_env(lua_State *L)
{
    uint32_t stream;
    char err[160];
    if (ss_stream_from_env(&stream, err, sizeof err) != SS_OK)
        luaL_error(L, "%s", err);
    return stream;
}

/* Read {name=, id=, stream=, window=} at index idx into o. */
static void read_opts(lua_State *L, int idx, ss_link_opts *o, char *name, size_t namelen)
{
    ss_link_opts_init(o);
    o->stream = stream_from_env(L);
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (lua_getfield(L, idx, "name") == LUA_TSTRING) {
        snprintf(name, namelen, "%s", lua_tostring(L, -1));
        o->name = name;
    }
    if (lua_getfield(L, idx, "id") == LUA_TNUMBER)
        o->id = (uint64_t)lua_tointeger(L, -1);
    if (lua_getfield(L, idx, "stream") == LUA_TNUMBER)
        o->stream = (uint32_t)lua_tointeger(L, -1);
    if (lua_getfield(L, idx, "window") == LUA_TNUMBER)
        o->window = (unsigned)lua_tointeger(L, -1);
    lua_pop(L, 4);
}

/* ---- raw sockets: any ZeroMQ socket, for tools and protocol tests ---- */

typedef struct {
    void *sock;
} lraw;

/* net.raw("router" | "dealer", addr [, identity]) -> socket; '*' binds. */
static int net_raw(lua_State *L)
{
    static const char *const types[] = { "router", "dealer", NULL };
    static const int ztypes[] = { ZMQ_ROUTER, ZMQ_DEALER };
    int t = luaL_checkoption(L, 1, NULL, types);
    const char *addr = luaL_checkstring(L, 2);
    size_t idlen = 0;
    const char *id = luaL_optlstring(L, 3, NULL, &idlen);
    lraw *r = lua_newuserdatauv(L, sizeof *r, 0);
    r->sock = NULL;
    luaL_setmetatable(L, RAW_MT);
    if (!(r->sock = zmq_socket(context(L), ztypes[t])))
        return luaL_error(L, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    int linger = 0;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (id)
        zmq_setsockopt(r->sock, ZMQ_ROUTING_ID, id, idlen);
    if (ss_endpoint_attach(r->sock, addr) != 0)
        return luaL_error(L, "%s: %s", addr, zmq_strerror(zmq_errno()));
    return 1;
}

static lraw *check_raw(lua_State *L)
{
    lraw *r = luaL_checkudata(L, 1, RAW_MT);
    if (!r->sock)
        luaL_error(L, "socket is closed");
    return r;
}

/* s:endpoint() -> the address actually bound */
static int raw_endpoint(lua_State *L)
{
    char buf[256];
    size_t len = sizeof buf;
    if (zmq_getsockopt(check_raw(L)->sock, ZMQ_LAST_ENDPOINT, buf, &len) != 0)
        return luaL_error(L, "zmq_getsockopt: %s", zmq_strerror(zmq_errno()));
    lua_pushstring(L, buf);
    return 1;
}

/* s:send(frame, frame, ...) sends one multipart message */
static int raw_send(lua_State *L)
{
    lraw *r = check_raw(L);
    int n = lua_gettop(L);
    for (int i = 2; i <= n; i++) {
        size_t len;
        const char *f = luaL_checklstring(L, i, &len);
        if (zmq_send(r->sock, f, len, i < n ? ZMQ_SNDMORE : 0) < 0)
            return luaL_error(L, "zmq_send: %s", zmq_strerror(zmq_errno()));
    }
    return 0;
}

/* s:recv(timeout_ms) -> nil | { frames... } */
static int raw_recv(lua_State *L)
{
    lraw *r = check_raw(L);
    zmq_pollitem_t it = { r->sock, 0, ZMQ_POLLIN, 0 };
    if (zmq_poll(&it, 1, (long)luaL_optinteger(L, 2, -1)) <= 0)
        return 0;
    lua_newtable(L);
    zmq_msg_t m;
    zmq_msg_init(&m);
    for (int i = 1;; i++) {
        if (zmq_msg_recv(&m, r->sock, 0) < 0) {
            zmq_msg_close(&m);
            return luaL_error(L, "zmq_msg_recv: %s", zmq_strerror(zmq_errno()));
        }
        lua_pushlstring(L, zmq_msg_data(&m), zmq_msg_size(&m));
        lua_rawseti(L, -2, i);
        if (!zmq_msg_more(&m))
            break;
    }
    zmq_msg_close(&m);
    return 1;
}

static int raw_close(lua_State *L)
{
    lraw *r = luaL_checkudata(L, 1, RAW_MT);
    if (r->sock)
        zmq_close(r->sock);
    r->sock = NULL;
    return 0;
}

/* An end-of-stream payload onto the stack, under the bounds of the
 * router's reader (wire/eos.h): at most SS_EOS_MAX_ELEMENTS values, checked
 * before the codec builds a table for any of them, so a hostile router's
 * 16 MiB of one-byte values costs nothing. */
static ss_err decode_eos(lua_State *L, const void *buf, size_t len, char *why, size_t whylen)
{
    if (ss_msgpack_check(buf, len, SS_MSGPACK_DEPTH, SS_EOS_MAX_ELEMENTS, why, whylen) != 0)
        return SS_ERR_FORMAT;
    if (ss_codec_decode(L, buf, len) != SS_OK) {
        ss_say(why, whylen, "not a MessagePack document");
        return SS_ERR_FORMAT;
    }
    return SS_OK;
}

/* net.decode(s) -> the Lua table of an end-of-stream map (within its bounds) */
static int net_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char why[128];
    if (decode_eos(L, s, len, why, sizeof why) != SS_OK)
        return luaL_error(L, "not an end-of-stream map: %s", why);
    return 1;
}

/* net.encode(v) -> the MessagePack document of a Lua value (as the codec
 * writes a batch's events; tools and tests build protocol maps with it) */
static int net_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    char *buf = NULL;
    size_t len;
    lua_settop(L, 1);
    if (ss_codec_encode(L, 1, &buf, &len) != SS_OK) {
        free(buf);
        return luaL_error(L, "cannot encode this value");
    }
    lua_pushlstring(L, buf, len);
    free(buf);
    return 1;
}

/* ---- data keys ---- */

typedef struct {
    ss_key_t key;
    ss_envelope_t *env;   /* for records (statistics) and open_batch, made on first use:
                             any position, the run of the first batch it opens */
} lkey;

static ss_err key_env(lkey *k)
{
    ss_envelope_opts eo = { .run = NULL, .role = SS_MAKER_WORKER, .pos = SS_ENVELOPE_ANY_POS };
    return k->env ? SS_OK : ss_envelope_new(&k->key, &eo, &k->env);
}

/* Where a link stands in its run, from its options {run = HEX, pos = N,
 * source = true}: run absent adopts the first input's, pos absent likewise
 * (one after its maker's); `source` seals as a source (only zmq-rx's source
 * loop asks for it). run[] is the storage o->run points to. */
static void run_opts(lua_State *L, int idx, ss_envelope_opts *o, uint8_t run[SS_RUN_BYTES])
{
    o->run = NULL;
    o->role = SS_MAKER_WORKER;
    o->pos = -1;
    if (!lua_istable(L, idx))
        return;
    if (lua_getfield(L, idx, "run") == LUA_TSTRING) {
        if (ss_run_parse(lua_tostring(L, -1), run) != SS_OK)
            luaL_error(L, "run: expected 32 hex digits, got \"%s\"", lua_tostring(L, -1));
        o->run = run;
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "run: expected 32 hex digits, got a %s", luaL_typename(L, -1));
    }
    if (lua_getfield(L, idx, "pos") != LUA_TNIL) {
        lua_Integer pos = luaL_checkinteger(L, -1);
        if (pos < 0 || pos > UINT16_MAX)
            luaL_error(L, "pos: %I is not a stage position", pos);
        o->pos = (int)pos;
    }
    if (lua_getfield(L, idx, "source") == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
        o->role = SS_MAKER_SOURCE;
        o->pos = 0;
    }
    lua_pop(L, 3);
}

/* {run = hex, role = name, pos = n}: who made a payload */
static void push_maker(lua_State *L, const ss_maker *m)
{
    char hex[2 * SS_RUN_BYTES + 1];
    ss_run_hex(m->run, hex);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "run");
    lua_pushstring(L, ss_maker_role_name(m->role));
    lua_setfield(L, -2, "role");
    lua_pushinteger(L, m->pos);
    lua_setfield(L, -2, "pos");
}

/* net.key(path) -> a data key; errors name the file (permissions, format). */
static int net_key(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char err[512];
    if (ss_crypto_init() != SS_OK)
        return luaL_error(L, "cannot initialise the crypto library");
    lkey *k = lua_newuserdatauv(L, sizeof *k, 0);
    memset(k, 0, sizeof *k);
    luaL_setmetatable(L, KEY_MT);
    if (ss_key_load(&k->key, path, err, sizeof err) != SS_OK)
        return luaL_error(L, "%s", err);
    return 1;
}

static int key_id(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, KEY_MT);
    char hex[2 * SS_KEY_ID_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, k->key.id, sizeof k->key.id);
    lua_pushstring(L, hex);
    return 1;
}

static int key_gc(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, KEY_MT);
    ss_envelope_destroy(&k->env);
    sodium_memzero(&k->key, sizeof k->key);
    return 0;
}

/* The optional `key` field of a link's options. */
static const ss_key_t *opt_key(lua_State *L, int idx)
{
    const ss_key_t *k = NULL;
    if (lua_istable(L, idx) && lua_getfield(L, idx, "key") != LUA_TNIL) {
        k = &((lkey *)luaL_checkudata(L, -1, KEY_MT))->key;
        lua_pop(L, 1);
    } else if (lua_istable(L, idx)) {
        lua_pop(L, 1);
    }
    return k;
}

/* net.open_record(key, context, sealed, n) -> table, maker | nil, why
 * maker = {run = hex, role = 'source'|'worker', pos = n}, authenticated:
 * what a record of that maker counts for is the caller's decision. */
static int net_open_record(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, KEY_MT);
    const char *context = luaL_checkstring(L, 2);
    size_t len, plen;
    const char *sealed = luaL_checklstring(L, 3, &len);
    uint64_t n = (uint64_t)luaL_checkinteger(L, 4);
    const uint8_t *plain;
    char why[200];
    ss_maker m;
    if (key_env(k) != SS_OK)
        return luaL_error(L, "out of memory");
    if (ss_envelope_open_record(k->env, n, context, sealed, len, &plain, &plen, &m, why,
                                sizeof why) != SS_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    if (ss_codec_decode(L, plain, plen) != SS_OK) {
        lua_pushnil(L);
        lua_pushliteral(L, "authentic but not MessagePack");
        return 2;
    }
    push_maker(L, &m);
    return 2;
}

/* A sealed batch as one string: header (40) | u32 lineage length | lineage |
 * sealed payload. net.seal_batch(key, events, producer, seq, {run = HEX
 * [, pos = N, source = true]}) -> string: sealed as made at that run and
 * position (pos absent: a source, at 0). One sealing session per call: for
 * tools and tests, not a stream's producer. */
static int net_seal_batch(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, KEY_MT);
    luaL_checktype(L, 2, LUA_TTABLE);
    uint64_t producer = (uint64_t)luaL_checkinteger(L, 3), seq = (uint64_t)luaL_checkinteger(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    ss_envelope_opts eo;
    uint8_t run[SS_RUN_BYTES];
    run_opts(L, 5, &eo, run);
    if (!eo.run)
        return luaL_argerror(L, 5, "run expected");
    if (eo.pos <= 0) {
        eo.role = SS_MAKER_SOURCE;
        eo.pos = 0;
    }
    uint32_t stream = stream_from_env(L);   /* may raise: before anything is allocated */
    ss_envelope_t *env;
    if (ss_envelope_new(&k->key, &eo, &env) != SS_OK)
        return luaL_error(L, "out of memory");
    ss_batch_writer w;
    char msg[256];
    if (ss_batch_writer_init(&w, SS_MAX_MESSAGE / 2) != SS_OK) {
        ss_envelope_destroy(&env);
        return luaL_error(L, "out of memory");
    }
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        if (ss_batch_writer_add(&w, L, lua_gettop(L), msg, sizeof msg) != SS_OK) {
            ss_batch_writer_cleanup(&w);
            ss_envelope_destroy(&env);
            return luaL_error(L, "event %d cannot be sealed: %s", (int)i, msg);
        }
        lua_pop(L, 1);
    }
    const char *payload;
    size_t plen, slen;
    ss_batch_writer_finish(&w, &payload, &plen);
    uint8_t lineage[SS_LINEAGE_ENTRY], hdr[SS_HEADER_SIZE], llen[4];
    ss_lineage_put(lineage, 0, (ss_lineage_id){ producer, seq });
    ss_header_t h = { .type = SS_MSG_DATA, .stream = stream, .producer = producer,
                      .seq = seq, .count = w.count };
    const uint8_t *sealed;
    ss_err e = ss_envelope_seal(env, &h, lineage, sizeof lineage, payload, plen, &sealed, &slen);
    ss_batch_writer_cleanup(&w);
    if (e != SS_OK) {
        ss_envelope_destroy(&env);
        return luaL_error(L, "cannot seal: %s", ss_strerror(e));
    }
    ss_header_encode(&h, hdr);
    ss_put_u32(llen, sizeof lineage);
    lua_pushlstring(L, (const char *)hdr, sizeof hdr);   /* no Lua error below can leak env */
    lua_pushlstring(L, (const char *)llen, sizeof llen);
    lua_pushlstring(L, (const char *)lineage, sizeof lineage);
    lua_pushlstring(L, (const char *)sealed, slen);
    ss_envelope_destroy(&env);
    lua_concat(L, 4);
    return 1;
}

/* net.split_batch(s) -> header, lineage, payload (of a net.seal_batch string) */
static int net_split_batch(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (len < SS_HEADER_SIZE + 4)
        return luaL_error(L, "not a sealed batch (too short)");
    size_t llen = ss_get_u32((const uint8_t *)s + SS_HEADER_SIZE);
    if (len < SS_HEADER_SIZE + 4 + llen)
        return luaL_error(L, "not a sealed batch (truncated lineage)");
    lua_pushlstring(L, s, SS_HEADER_SIZE);
    lua_pushlstring(L, s + SS_HEADER_SIZE + 4, llen);
    lua_pushlstring(L, s + SS_HEADER_SIZE + 4 + llen, len - SS_HEADER_SIZE - 4 - llen);
    return 3;
}

/* net.open_batch(key, s) -> events, maker | nil, why: any position, the
 * run of the first batch this key opened (a data owner's tool). */
static int net_open_batch(lua_State *L)
{
    lkey *k = luaL_checkudata(L, 1, KEY_MT);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (key_env(k) != SS_OK)
        return luaL_error(L, "out of memory");
    if (len < SS_HEADER_SIZE + 4)
        return luaL_error(L, "not a sealed batch (too short)");
    size_t llen = ss_get_u32((const uint8_t *)s + SS_HEADER_SIZE);
    if (len < SS_HEADER_SIZE + 4 + llen)
        return luaL_error(L, "not a sealed batch (truncated lineage)");
    const uint8_t *plain;
    size_t plen;
    char why[200];
    ss_open_info info;
    if (ss_envelope_open(k->env, (const uint8_t *)s, s + SS_HEADER_SIZE + 4, llen,
                         s + SS_HEADER_SIZE + 4 + llen, len - SS_HEADER_SIZE - 4 - llen, &plain, &plen,
                         &info, why, sizeof why) != SS_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    ss_batch_reader r;
    if (ss_batch_reader_init(&r, plain, plen) != SS_OK)
        return luaL_error(L, "an authentic batch that is not a MessagePack array");
    lua_createtable(L, (int)r.count, 0);
    for (lua_Integer i = 1;; i++) {
        ss_err e = ss_batch_reader_next(&r, L, why, sizeof why);
        if (e == SS_ERR_CLOSED)
            break;
        if (e != SS_OK)
            return luaL_error(L, "event %d: %s", (int)i, why);
        lua_rawseti(L, -2, i);
    }
    push_maker(L, &info.maker);
    return 2;
}

/* ---- consumer ---- */

static void service_producer(void *arg);

typedef struct {
    ss_consumer_t *c;
    uint64_t id;
    ss_envelope_t *env;   /* set in the encrypted modes: every batch must open */
} lconsumer;

static lconsumer *check_consumer(lua_State *L)
{
    lconsumer *lc = luaL_checkudata(L, 1, CONSUMER_MT);
    if (!lc->c)
        luaL_error(L, "consumer is closed");
    return lc;
}

static int net_consumer(lua_State *L)
{
    const char *addr = luaL_checkstring(L, 1);
    ss_link_opts o;
    char name[128] = "consumer", err[512];
    read_opts(L, 2, &o, name, sizeof name);
    if (!o.id)
        o.id = ss_random_id();
    const ss_key_t *key = opt_key(L, 2);
    ss_envelope_opts eo;
    uint8_t run[SS_RUN_BYTES];
    run_opts(L, 2, &eo, run);
    eo.role = SS_MAKER_WORKER;   /* a consumer seals nothing */
    /* {tick = producer}: keep that producer's router informed while joining */
    if (lua_istable(L, 2) && lua_getfield(L, 2, "tick") != LUA_TNIL) {
        void *lp = luaL_checkudata(L, -1, PRODUCER_MT);
        o.join_tick = service_producer;
        o.join_tick_arg = lp;
        lua_pop(L, 1);
    } else if (lua_istable(L, 2)) {
        lua_pop(L, 1);
    }
    lconsumer *lc = lua_newuserdatauv(L, sizeof *lc, 1);
    lc->c = NULL;
    lc->env = NULL;
    lc->id = o.id;
    luaL_setmetatable(L, CONSUMER_MT);
    if (key && ss_envelope_new(key, &eo, &lc->env) != SS_OK)
        return luaL_error(L, "out of memory");
    ss_err e = ss_consumer_new(context(L), addr, &o, &lc->c, err, sizeof err);
    if (e != SS_OK)
        return luaL_error(L, "%s", err);
    return 1;
}

static int bad_delivery(lua_State *L, int base, uint64_t tag, const char *why)
{
    lua_settop(L, base);
    lua_pushliteral(L, "bad");
    lua_pushinteger(L, (lua_Integer)tag);
    lua_pushstring(L, why);
    return 3;
}

/* A batch that failed authentication: "rejected", tag, why, lineage,
 * origin, flags, producer, seq. */
static int rejected(lua_State *L, int base, const ss_delivery_t *d, const char *why)
{
    lua_settop(L, base);
    lua_pushliteral(L, "rejected");
    lua_pushinteger(L, (lua_Integer)d->tag);
    lua_pushstring(L, why);
    lua_pushlstring(L, (const char *)d->lineage, d->lineage_len);
    lua_pushinteger(L, (lua_Integer)d->header.origin);
    lua_pushinteger(L, d->flags);
    lua_pushinteger(L, (lua_Integer)d->header.producer);
    lua_pushinteger(L, (lua_Integer)d->header.seq);
    return 8;
}

/* A batch sealed with another key: as rejected, kind "foreign", and a ninth
 * value, the key id it names. */
static int foreign(lua_State *L, int base, const ss_delivery_t *d, const char *why,
                   const char *key_id)
{
    rejected(L, base, d, why);
    lua_pushliteral(L, "foreign");
    lua_replace(L, base + 1);
    lua_pushstring(L, key_id);
    return 9;
}

/* c:recv(timeout_ms) -> nil | kind, tag, events|eos|message, lineage, origin, flags, producer, seq
 * kind is "data", "eos", "bad" (payload not decodable: third value is why),
 * "rejected" (a sealed batch that does not authenticate or was made by
 * another run or position, or a plaintext one in the encrypted modes: third
 * value is why) or "foreign" (sealed with another key: a ninth value names
 * its key id). */
static int consumer_recv(lua_State *L)
{
    lconsumer *lc = check_consumer(L);
    int timeout = (int)luaL_optinteger(L, 2, -1);
    ss_delivery_t d;
    ss_err e = ss_consumer_recv(lc->c, timeout, &d);
    if (e == SS_ERR_TIMEOUT)
        return 0;
    if (e != SS_OK)
        return luaL_error(L, "receiving: %s", ss_strerror(e));
    char msg[256];
    int base = lua_gettop(L);
    lua_pushstring(L, d.header.type == SS_MSG_EOS ? "eos" : "data");
    lua_pushinteger(L, (lua_Integer)d.tag);
    if (d.header.type == SS_MSG_EOS) {
        char why[128];
        if (decode_eos(L, d.payload, d.payload_len, why, sizeof why) != SS_OK) {
            snprintf(msg, sizeof msg, "end-of-stream payload refused: %s", why);
            return bad_delivery(L, base, d.tag, msg);
        }
    } else {
        ss_batch_reader r;
        const uint8_t *payload = d.payload;
        size_t plen = d.payload_len;
        if (d.header.flags & SS_HDR_SEALED) {
            char why[200];
            if (!lc->env)
                return rejected(L, base, &d, "a sealed batch, and this component has no data key");
            ss_open_info info;
            if (ss_envelope_open(lc->env, d.header_bytes, d.lineage, d.lineage_len, d.payload,
                                 d.payload_len, &payload, &plen, &info, why, sizeof why) != SS_OK)
                return info.foreign ? foreign(L, base, &d, why, info.key_id)
                                    : rejected(L, base, &d, why);
        } else if (lc->env) {
            return rejected(L, base, &d, "a plaintext batch in the encrypted mode");
        }
        if (ss_batch_reader_init(&r, payload, plen) != SS_OK || r.count != d.header.count) {
            snprintf(msg, sizeof msg, "batch payload is not a MessagePack array of %u events",
                     (unsigned)d.header.count);
            return bad_delivery(L, base, d.tag, msg);
        }
        lua_createtable(L, (int)r.count, 0);
        for (lua_Integer i = 1;; i++) {
            char why[200];
            e = ss_batch_reader_next(&r, L, why, sizeof why);
            if (e == SS_ERR_CLOSED)
                break;
            if (e != SS_OK) {
                snprintf(msg, sizeof msg, "event %d: %s", (int)i, why);
                return bad_delivery(L, base, d.tag, msg);
            }
            lua_rawseti(L, -2, i);
        }
    }
    lua_pushlstring(L, (const char *)d.lineage, d.lineage_len);
    lua_pushinteger(L, (lua_Integer)d.header.origin);
    lua_pushinteger(L, d.flags);
    lua_pushinteger(L, (lua_Integer)d.header.producer);
    lua_pushinteger(L, (lua_Integer)d.header.seq);
    return 8;
}

/* c:recv_raw(timeout_ms) -> nil | tag, header bytes, lineage, payload, flags:
 * the message exactly as the router forwarded it (tools and tests). */
static int consumer_recv_raw(lua_State *L)
{
    lconsumer *lc = check_consumer(L);
    ss_delivery_t d;
    ss_err e = ss_consumer_recv(lc->c, (int)luaL_optinteger(L, 2, -1), &d);
    if (e == SS_ERR_TIMEOUT)
        return 0;
    if (e != SS_OK)
        return luaL_error(L, "receiving: %s", ss_strerror(e));
    lua_pushinteger(L, (lua_Integer)d.tag);
    lua_pushlstring(L, (const char *)d.header_bytes, SS_HEADER_SIZE);
    lua_pushlstring(L, (const char *)d.lineage, d.lineage_len);
    lua_pushlstring(L, (const char *)d.payload, d.payload_len);
    lua_pushinteger(L, d.flags);
    return 5;
}

/* c:ack(tag [, rejected]): acknowledge a delivery; with `rejected` true the
 * batch was not accepted (ACK flagged REJECTED: the router forgets its
 * lineage claims). */
static int consumer_ack(lua_State *L)
{
    lconsumer *lc = check_consumer(L);
    uint64_t tag = (uint64_t)luaL_checkinteger(L, 2);
    ss_err e = lua_toboolean(L, 3) ? ss_consumer_reject(lc->c, tag) : ss_consumer_ack(lc->c, tag);
    if (e != SS_OK)
        return luaL_error(L, "acknowledging: %s", ss_strerror(e));
    return 0;
}

static int consumer_tick(lua_State *L)
{
    ss_consumer_tick(check_consumer(L)->c);
    return 0;
}

/* c:tick_with(producer): keep that producer's router informed while this
 * consumer waits or works through its deliveries (a reducer may publish
 * nothing for many batches). */
static int consumer_tick_with(lua_State *L)
{
    lconsumer *lc = check_consumer(L);
    void *lp = luaL_checkudata(L, 2, PRODUCER_MT);
    ss_consumer_set_tick(lc->c, service_producer, lp);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, 1);
    return 0;
}

/* c:binding() -> run (hex) or nil, position or nil: what this consumer was
 * told or has adopted (nil: not known yet); nil, nil without a key. */
static int consumer_binding(lua_State *L)
{
    lconsumer *lc = luaL_checkudata(L, 1, CONSUMER_MT);
    ss_maker m;
    int run_known = 0, pos_known = 0;
    char hex[2 * SS_RUN_BYTES + 1];
    if (lc->env)
        ss_envelope_self(lc->env, &m, &run_known, &pos_known);
    if (run_known) {
        ss_run_hex(m.run, hex);
        lua_pushstring(L, hex);
    } else {
        lua_pushnil(L);
    }
    if (pos_known)
        lua_pushinteger(L, m.pos);
    else
        lua_pushnil(L);
    return 2;
}

static int consumer_id(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_consumer(L)->id);
    return 1;
}

static int consumer_close(lua_State *L)
{
    lconsumer *lc = luaL_checkudata(L, 1, CONSUMER_MT);
    ss_consumer_destroy(&lc->c);
    ss_envelope_destroy(&lc->env);
    return 0;
}

/* ---- writer ---- */

static ss_batch_writer *check_writer(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, WRITER_MT);
}

static int net_writer(lua_State *L)
{
    lua_Integer limit = luaL_optinteger(L, 1, SS_MAX_MESSAGE - 4096);
    luaL_argcheck(L, limit > 16 && limit <= (lua_Integer)SS_MAX_MESSAGE, 1, "limit out of range");
    ss_batch_writer *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    luaL_setmetatable(L, WRITER_MT);
    if (ss_batch_writer_init(w, (size_t)limit) != SS_OK)
        return luaL_error(L, "cannot allocate a batch writer");
    return 1;
}

static int writer_add(lua_State *L)
{
    ss_batch_writer *w = check_writer(L, 1);
    char msg[256];
    luaL_checkany(L, 2);
    ss_err e = ss_batch_writer_add(w, L, 2, msg, sizeof msg);
    if (e == SS_ERR_TOOBIG)
        return luaL_error(L, "batch would exceed %d bytes", (int)w->limit);
    if (e != SS_OK)
        return luaL_error(L, "cannot send this value: %s", msg);
    return 0;
}

static int writer_count(lua_State *L)
{
    lua_pushinteger(L, check_writer(L, 1)->count);
    return 1;
}

static int writer_bytes(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_writer(L, 1)->len);
    return 1;
}

static int writer_reset(lua_State *L)
{
    ss_batch_writer_reset(check_writer(L, 1));
    return 0;
}

static int writer_gc(lua_State *L)
{
    ss_batch_writer_cleanup(check_writer(L, 1));
    return 0;
}

/* ---- producer ---- */

typedef struct {
    ss_producer_t *p;
    uint64_t id;
    uint32_t stream;
    uint64_t seq;             /* next stream sequence number */
    uint64_t receipted;       /* every pubseq below this is receipted */
    uint8_t ring[RECEIPT_RING];
    ss_consumer_t *tick_consumer;
    ss_envelope_t *env;       /* set in the encrypted modes: every batch is sealed */
    ss_envelope_t **follow;   /* p:follow(c): the consumer's envelope, whose run and
                                 position this one takes (uservalue 2 keeps c alive) */
} lproducer;

static void on_receipt(void *arg, uint64_t pubseq)
{
    lproducer *lp = arg;
    if (pubseq < lp->receipted || pubseq >= lp->receipted + RECEIPT_RING)
        return;
    lp->ring[pubseq % RECEIPT_RING] = 1;
    while (lp->ring[lp->receipted % RECEIPT_RING]) {
        lp->ring[lp->receipted % RECEIPT_RING] = 0;
        lp->receipted++;
    }
}

static void service_producer(void *arg)
{
    lproducer *lp = arg;
    if (lp->p)
        ss_producer_service(lp->p, 0);
}

static void tick_consumer(void *arg)
{
    lproducer *lp = arg;
    if (lp->tick_consumer)
        ss_consumer_tick(lp->tick_consumer);
}

static lproducer *check_producer(lua_State *L)
{
    lproducer *lp = luaL_checkudata(L, 1, PRODUCER_MT);
    if (!lp->p)
        luaL_error(L, "producer is closed");
    return lp;
}

static int net_producer(lua_State *L)
{
    const char *addr = luaL_checkstring(L, 1);
    ss_link_opts o;
    char name[128] = "producer", err[512];
    read_opts(L, 2, &o, name, sizeof name);
    if (!o.id)
        o.id = ss_random_id();
    if (o.window > RECEIPT_RING / 2)
        o.window = RECEIPT_RING / 2;
    const ss_key_t *key = opt_key(L, 2);
    ss_envelope_opts eo;
    uint8_t run[SS_RUN_BYTES];
    run_opts(L, 2, &eo, run);
    lproducer *lp = lua_newuserdatauv(L, sizeof *lp, 2);
    memset(lp, 0, sizeof *lp);
    lp->id = o.id;
    lp->stream = o.stream;
    luaL_setmetatable(L, PRODUCER_MT);
    if (key && ss_envelope_new(key, &eo, &lp->env) != SS_OK)
        return luaL_error(L, "out of memory");
    ss_err e = ss_producer_new(context(L), addr, &o, on_receipt, lp, &lp->p, err, sizeof err);
    if (e != SS_OK)
        return luaL_error(L, "%s", err);
    ss_producer_set_tick(lp->p, tick_consumer, lp);
    return 1;
}

static int publish(lua_State *L, lproducer *lp, ss_header_t *h, const char *lineage, size_t llen,
                   const char *payload, size_t plen)
{
    uint64_t pubseq;
    h->stream = lp->stream;
    h->producer = lp->id;
    h->seq = lp->seq;
    const uint8_t *sealed = (const uint8_t *)payload;
    size_t slen = plen;
    if (lp->env && lp->follow && *lp->follow)
        ss_envelope_follow(lp->env, *lp->follow);
    ss_err se = SS_OK;
    if (lp->env && h->type == SS_MSG_DATA &&
        (se = ss_envelope_seal(lp->env, h, lineage, llen, payload, plen, &sealed, &slen)) != SS_OK)
        return luaL_error(L, "cannot seal a batch: %s", se == SS_ERR_USAGE
                          ? "this worker's run or stage position is not known yet" : ss_strerror(se));
    ss_err e = ss_producer_publish(lp->p, h, lineage, llen, sealed, slen, &pubseq);
    if (e != SS_OK)
        return luaL_error(L, "publishing: %s", ss_strerror(e));
    lp->seq++;
    lua_pushinteger(L, (lua_Integer)pubseq);
    return 1;
}

/* p:publish(writer, lineage [, origin]) -> pubseq; the writer is left as is. */
static int producer_publish(lua_State *L)
{
    lproducer *lp = check_producer(L);
    ss_batch_writer *w = check_writer(L, 2);
    size_t llen;
    const char *lineage = luaL_checklstring(L, 3, &llen);
    size_t n;
    if (ss_lineage_check(lineage, llen, &n) != SS_OK)
        return luaL_argerror(L, 3, "not a sorted lineage");
    ss_header_t h = { .type = SS_MSG_DATA, .count = w->count,
                      .origin = (uint64_t)luaL_optinteger(L, 4, 0) };
    const char *payload;
    size_t plen;
    ss_batch_writer_finish(w, &payload, &plen);
    return publish(L, lp, &h, lineage, llen, payload, plen);
}

/* The members of an EOS table (at idx) as ids, in a userdata left on the
 * stack; raises a Lua error when they are not a list of integers. */
static uint64_t *eos_members(lua_State *L, int idx, size_t *n)
{
    if (lua_getfield(L, idx, SS_EOS_MEMBERS) != LUA_TTABLE)
        luaL_error(L, "end of stream: members must be a list of ids, not %s", luaL_typename(L, -1));
    lua_Integer len = luaL_len(L, -1);
    if (len < 0 || (lua_Unsigned)len > SS_EOS_MAX_BYTES)
        luaL_error(L, "end of stream: %I members is out of range", len);
    uint64_t *ids = lua_newuserdatauv(L, (size_t)(len ? len : 1) * sizeof *ids, 0);
    for (lua_Integer i = 1; i <= len; i++) {
        int isint;
        lua_geti(L, -2, i);
        ids[i - 1] = (uint64_t)lua_tointegerx(L, -1, &isint);
        if (!isint)
            luaL_error(L, "end of stream: members[%I] is not an integer id", i);
        lua_pop(L, 1);
    }
    lua_remove(L, -2);
    *n = (size_t)len;
    return ids;
}

/* Append the entries of the stats table at idx, each key and value encoded
 * as the codec encodes them. Raises no Lua error (raw access only): SS_OK,
 * or the codec's error. */
static ss_err eos_stats(lua_State *L, int idx, ss_eos_writer *w)
{
    ss_err e = SS_OK;
    lua_pushnil(L);
    while (e == SS_OK && lua_next(L, idx)) {
        char *key = NULL, *val = NULL;
        size_t klen, vlen;
        e = ss_codec_encode(L, -2, &key, &klen);
        if (e == SS_OK && (e = ss_codec_encode(L, -1, &val, &vlen)) == SS_OK)
            ss_eos_writer_entry(w, key, klen, val, vlen);
        free(key);
        free(val);
        lua_pop(L, 1);
    }
    if (e != SS_OK)
        lua_pop(L, 1);   /* the key lua_next left */
    return e;
}

/* p:publish_eos(table) -> pubseq; table = {members = {...}, stats = {...}}:
 * the end-of-stream map (wire/eos.h), members first. */
static int producer_publish_eos(lua_State *L)
{
    lproducer *lp = check_producer(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n;
    const uint64_t *ids = eos_members(L, 2, &n);
    int t = lua_getfield(L, 2, SS_EOS_STATS);
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return luaL_error(L, "end of stream: stats must be a table, not %s", luaL_typename(L, -1));
    int stats = lua_gettop(L);
    uint32_t nstats = 0;
    if (t == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, stats)) {
            nstats++;
            lua_pop(L, 1);
        }
    }
    /* From here to the end no Lua error is raised until the writer is released. */
    ss_eos_writer w;
    char why[256];
    const uint8_t *buf;
    size_t len;
    uint64_t pubseq;
    ss_eos_writer_init(&w, 0);
    ss_eos_writer_begin(&w, ids, n, nstats);
    ss_err e = t == LUA_TTABLE ? eos_stats(L, stats, &w) : SS_OK;
    if (e == SS_OK)
        e = ss_eos_writer_finish(&w, &buf, &len, why, sizeof why);
    else
        ss_say(why, sizeof why, "%s", ss_strerror(e));
    ss_err pe = SS_OK;
    if (e == SS_OK) {
        ss_header_t h = { .type = SS_MSG_EOS, .count = (uint32_t)n, .stream = lp->stream,
                          .producer = lp->id, .seq = lp->seq };
        pe = ss_producer_publish(lp->p, &h, "", 0, buf, len, &pubseq);
    }
    ss_eos_writer_cleanup(&w);
    if (e != SS_OK)
        return luaL_error(L, "cannot encode end-of-stream statistics: %s", why);
    if (pe != SS_OK)
        return luaL_error(L, "publishing end of stream: %s", ss_strerror(pe));
    lp->seq++;
    lua_pushinteger(L, (lua_Integer)pubseq);
    return 1;
}

/* p:seal_record(context, table) -> sealed string, n: a record (statistics)
 * sealed under this producer's session with a sequence number of its own. */
static int producer_seal_record(lua_State *L)
{
    lproducer *lp = check_producer(L);
    const char *context = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    if (!lp->env)
        return luaL_error(L, "seal_record needs a producer with a data key");
    char *buf;
    size_t len, slen;
    if (ss_codec_encode(L, 3, &buf, &len) != SS_OK)
        return luaL_error(L, "cannot encode the record");
    const uint8_t *sealed;
    uint64_t n = lp->seq++;
    if (lp->follow && *lp->follow)
        ss_envelope_follow(lp->env, *lp->follow);
    ss_err e = ss_envelope_seal_record(lp->env, n, context, buf, len, &sealed, &slen);
    free(buf);
    if (e != SS_OK)
        return luaL_error(L, "cannot seal the record");
    lua_pushlstring(L, (const char *)sealed, slen);
    lua_pushinteger(L, (lua_Integer)n);
    return 2;
}

/* p:take_seq() -> a sequence number of this producer's stream, used once
 * (for a message an enclave seals on our behalf, or a record) */
static int producer_take_seq(lua_State *L)
{
    lproducer *lp = check_producer(L);
    lua_pushinteger(L, (lua_Integer)lp->seq++);
    return 1;
}

/* p:publish_raw(header, lineage, payload) -> pubseq: a message sealed
 * elsewhere (an enclave), sent exactly as it is; its producer must be ours. */
static int producer_publish_raw(lua_State *L)
{
    lproducer *lp = check_producer(L);
    size_t hlen, llen, plen, n;
    const char *hb = luaL_checklstring(L, 2, &hlen);
    const char *lineage = luaL_checklstring(L, 3, &llen);
    const char *payload = luaL_checklstring(L, 4, &plen);
    ss_header_t h;
    if (ss_header_decode(hb, hlen, &h) != SS_OK || h.producer != lp->id || h.stream != lp->stream)
        return luaL_argerror(L, 2, "not a header of this producer's stream");
    if (ss_lineage_check(lineage, llen, &n) != SS_OK)
        return luaL_argerror(L, 3, "not a sorted lineage");
    uint64_t pubseq;
    ss_err e = ss_producer_publish(lp->p, &h, lineage, llen, payload, plen, &pubseq);
    if (e != SS_OK)
        return luaL_error(L, "publishing: %s", ss_strerror(e));
    lua_pushinteger(L, (lua_Integer)pubseq);
    return 1;
}

static int producer_receipted(lua_State *L)
{
    lproducer *lp = check_producer(L);
    lua_pushinteger(L, (lua_Integer)lp->receipted);
    return 1;
}

static int producer_service(lua_State *L)
{
    lproducer *lp = check_producer(L);
    ss_err e = ss_producer_service(lp->p, (int)luaL_optinteger(L, 2, 0));
    if (e != SS_OK && e != SS_ERR_TIMEOUT)
        return luaL_error(L, "%s", ss_strerror(e));
    return 0;
}

static int producer_drain(lua_State *L)
{
    lproducer *lp = check_producer(L);
    ss_err e = ss_producer_drain(lp->p, (int)luaL_optinteger(L, 2, -1));
    if (e != SS_OK)
        return luaL_error(L, "waiting for the router to receive everything: %s", ss_strerror(e));
    return 0;
}

/* p:tick_with(consumer): keep that consumer's heartbeats going while blocked. */
static int producer_tick_with(lua_State *L)
{
    lproducer *lp = check_producer(L);
    lconsumer *lc = luaL_checkudata(L, 2, CONSUMER_MT);
    lp->tick_consumer = lc->c;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, 1); /* keep the consumer alive as long as we point at it */
    return 0;
}

static int producer_id(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_producer(L)->id);
    return 1;
}

/* p:follow(consumer): seal as the run and position the consumer was told or
 * adopted from its first input (a worker not told them). */
static int producer_follow(lua_State *L)
{
    lproducer *lp = check_producer(L);
    lconsumer *lc = luaL_checkudata(L, 2, CONSUMER_MT);
    lp->follow = &lc->env;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, 2);
    return 0;
}

static int producer_close(lua_State *L)
{
    lproducer *lp = luaL_checkudata(L, 1, PRODUCER_MT);
    lp->tick_consumer = NULL;
    lp->follow = NULL;
    ss_producer_destroy(&lp->p);
    ss_envelope_destroy(&lp->env);
    return 0;
}

/* ---- lineage helpers ---- */

/* net.lineage(source, seq) -> a one-id lineage string */
static int net_lineage(lua_State *L)
{
    uint8_t buf[SS_LINEAGE_ENTRY];
    ss_lineage_id id = { (uint64_t)luaL_checkinteger(L, 1), (uint64_t)luaL_checkinteger(L, 2) };
    ss_lineage_put(buf, 0, id);
    lua_pushlstring(L, (const char *)buf, sizeof buf);
    return 1;
}

/* net.lineage_union({s1, s2, ...}) -> their sorted union. The parts of one
 * partial result cover disjoint source batches (the worker refuses a batch
 * whose lineage overlaps its open group's), so an id named twice is an error,
 * never merged away: merged, it would hide that a batch was counted twice. */
static int net_lineage_union(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer parts = luaL_len(L, 1);
    size_t total = 0;
    for (lua_Integer i = 1; i <= parts; i++) {
        lua_rawgeti(L, 1, i);
        size_t len;
        luaL_checklstring(L, -1, &len);
        if (len % SS_LINEAGE_ENTRY)
            return luaL_error(L, "lineage part %d is not a lineage", (int)i);
        total += len / SS_LINEAGE_ENTRY;
        lua_pop(L, 1);
    }
    ss_lineage_id *ids = lua_newuserdatauv(L, (total ? total : 1) * sizeof *ids, 0);
    size_t n = 0;
    for (lua_Integer i = 1; i <= parts; i++) {
        lua_rawgeti(L, 1, i);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        for (size_t k = 0; k < len / SS_LINEAGE_ENTRY; k++)
            ids[n++] = ss_lineage_get(s, k);
        lua_pop(L, 1);
    }
    size_t distinct = ss_lineage_normalise(ids, n);
    if (distinct != n)
        return luaL_error(L, "lineage union: %d source batch ids named more than once in %d parts "
                          "(overlapping lineages in one partial result)", (int)(n - distinct), (int)parts);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, n * SS_LINEAGE_ENTRY);
    for (size_t k = 0; k < n; k++)
        ss_lineage_put(out, k, ids[k]);
    luaL_pushresultsize(&b, n * SS_LINEAGE_ENTRY);
    return 1;
}

/* Index of id in the sorted lineage s of n ids, or -1. */
static ptrdiff_t lineage_find(const char *s, size_t n, ss_lineage_id id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        ss_lineage_id m = ss_lineage_get(s, mid);
        if (m.source == id.source && m.seq == id.seq)
            return (ptrdiff_t)mid;
        if (m.source < id.source || (m.source == id.source && m.seq < id.seq))
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* net.lineage_overlap(a, b) -> nil | source, seq: the first id of the
 * sorted lineage a (in its order) that b names too. Each id of the shorter
 * one is looked up in the longer, so a one-id batch against a long group
 * costs a binary search. */
static int net_lineage_overlap(lua_State *L)
{
    size_t alen, blen, na, nb;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    if (ss_lineage_check(a, alen, &na) != SS_OK)
        return luaL_argerror(L, 1, "not a sorted lineage");
    if (ss_lineage_check(b, blen, &nb) != SS_OK)
        return luaL_argerror(L, 2, "not a sorted lineage");
    int a_short = na <= nb;
    const char *s = a_short ? a : b, *l = a_short ? b : a;
    size_t ns = a_short ? na : nb, nl = a_short ? nb : na;
    ptrdiff_t first = -1;   /* index in a */
    for (size_t k = 0; k < ns; k++) {
        ptrdiff_t at = lineage_find(l, nl, ss_lineage_get(s, k));
        if (at < 0)
            continue;
        ptrdiff_t ia = a_short ? (ptrdiff_t)k : at;
        if (first < 0 || ia < first)
            first = ia;
        if (a_short)
            break;
    }
    if (first < 0) {
        lua_pushnil(L);
        return 1;
    }
    ss_lineage_id id = ss_lineage_get(a, (size_t)first);
    lua_pushinteger(L, (lua_Integer)id.source);
    lua_pushinteger(L, (lua_Integer)id.seq);
    return 2;
}

/* net.lineage_ids(s) -> { {source, seq}, ... } */
static int net_lineage_ids(lua_State *L)
{
    size_t len, n;
    const char *s = luaL_checklstring(L, 1, &len);
    if (ss_lineage_check(s, len, &n) != SS_OK)
        return luaL_argerror(L, 1, "not a sorted lineage");
    lua_createtable(L, (int)n, 0);
    for (size_t k = 0; k < n; k++) {
        ss_lineage_id id = ss_lineage_get(s, k);
        lua_createtable(L, 2, 0);
        lua_pushinteger(L, (lua_Integer)id.source);
        lua_rawseti(L, -2, 1);
        lua_pushinteger(L, (lua_Integer)id.seq);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    return 1;
}

/* net.ready(): tell the process that started us (SS_READY_FD) that our
 * links are up, once; a no-op without SS_READY_FD. */
static int net_ready(lua_State *L)
{
    const char *fd = getenv("SS_READY_FD");
    if (fd && *fd) {
        uint64_t v;
        if (ss_parse_u64(fd, 10, SS_NUM_PLAIN, INT32_MAX, &v) != 0)
            return luaL_error(L, "SS_READY_FD=%s: not a file descriptor", fd);
        int n = (int)v;
        if (write(n, "ready\n", 6) != 6)
            return luaL_error(L, "cannot report readiness on fd %d", n);
        close(n);
        unsetenv("SS_READY_FD");
    }
    return 0;
}

static int net_new_id(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)ss_random_id());
    return 1;
}

/* net.new_run() -> a fresh run id, 32 hex digits */
static int net_new_run(lua_State *L)
{
    uint8_t run[SS_RUN_BYTES];
    char hex[2 * SS_RUN_BYTES + 1];
    if (ss_crypto_init() != SS_OK)
        return luaL_error(L, "cannot initialise the crypto library");
    ss_run_new(run);
    ss_run_hex(run, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int net_hex(lua_State *L)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)luaL_checkinteger(L, 1));
    lua_pushstring(L, buf);
    return 1;
}

/* Wall-clock seconds: comparable between the processes of a run. */
static int net_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* ---- replay windows (wire/replay.h) ---- */

#define REPLAY_MT "securestreams.replay"

typedef struct {
    ss_replay_t *r;
} lreplay;

/* net.replay() -> a replay window over any number of producers */
static int net_replay(lua_State *L)
{
    lreplay *lr = lua_newuserdatauv(L, sizeof *lr, 0);
    lr->r = NULL;
    luaL_setmetatable(L, REPLAY_MT);
    if (ss_replay_new(0, &lr->r) != SS_OK)
        return luaL_error(L, "cannot make a replay window: out of memory");
    return 1;
}

/* w:check(producer, seq) -> true when the batch is new (and now remembered),
 * or false and why (a replay, or too old to tell) */
static int replay_check(lua_State *L)
{
    lreplay *lr = luaL_checkudata(L, 1, REPLAY_MT);
    uint64_t producer = (uint64_t)luaL_checkinteger(L, 2);
    uint64_t seq = (uint64_t)luaL_checkinteger(L, 3);
    if (!lr->r)
        return luaL_error(L, "the replay window is closed");
    char why[256];
    int fresh = ss_replay_check(lr->r, producer, seq, why, sizeof why);
    if (fresh < 0)
        return luaL_error(L, "%s", why);
    lua_pushboolean(L, fresh);
    if (fresh)
        return 1;
    lua_pushstring(L, why);
    return 2;
}

static int replay_close(lua_State *L)
{
    lreplay *lr = luaL_checkudata(L, 1, REPLAY_MT);
    ss_replay_destroy(&lr->r);
    return 0;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
}

int luaopen_securestreams_net(lua_State *L)
{
    static const luaL_Reg consumer_m[] = {
        { "recv", consumer_recv }, { "recv_raw", consumer_recv_raw }, { "ack", consumer_ack },
        { "tick_with", consumer_tick_with }, { "tick", consumer_tick },
        { "id", consumer_id }, { "binding", consumer_binding }, { "close", consumer_close },
        { NULL, NULL } };
    static const luaL_Reg producer_m[] = {
        { "publish", producer_publish }, { "publish_eos", producer_publish_eos },
        { "receipted", producer_receipted }, { "service", producer_service },
        { "seal_record", producer_seal_record }, { "take_seq", producer_take_seq },
        { "publish_raw", producer_publish_raw },
        { "drain", producer_drain }, { "tick_with", producer_tick_with },
        { "id", producer_id }, { "follow", producer_follow }, { "close", producer_close },
        { NULL, NULL } };
    static const luaL_Reg writer_m[] = {
        { "add", writer_add }, { "count", writer_count }, { "bytes", writer_bytes },
        { "reset", writer_reset }, { NULL, NULL } };
    static const luaL_Reg funcs[] = {
        { "consumer", net_consumer }, { "producer", net_producer }, { "writer", net_writer },
        { "lineage", net_lineage }, { "lineage_union", net_lineage_union },
        { "lineage_overlap", net_lineage_overlap },
        { "lineage_ids", net_lineage_ids }, { "new_id", net_new_id }, { "hex", net_hex },
        { "new_run", net_new_run },
        { "now", net_now }, { "ready", net_ready }, { "key", net_key },
        { "open_record", net_open_record }, { "raw", net_raw }, { "decode", net_decode },
        { "encode", net_encode },
        { "seal_batch", net_seal_batch }, { "open_batch", net_open_batch },
        { "split_batch", net_split_batch }, { "replay", net_replay }, { NULL, NULL } };
    new_class(L, CONSUMER_MT, consumer_m, consumer_close);
    new_class(L, PRODUCER_MT, producer_m, producer_close);
    new_class(L, WRITER_MT, writer_m, writer_gc);
    static const luaL_Reg key_m[] = { { "id", key_id }, { NULL, NULL } };
    new_class(L, KEY_MT, key_m, key_gc);
    static const luaL_Reg raw_m[] = { { "send", raw_send }, { "recv", raw_recv },
                                      { "endpoint", raw_endpoint }, { "close", raw_close },
                                      { NULL, NULL } };
    new_class(L, RAW_MT, raw_m, raw_close);
    static const luaL_Reg replay_m[] = { { "check", replay_check }, { NULL, NULL } };
    new_class(L, REPLAY_MT, replay_m, replay_close);
    luaL_newlib(L, funcs);
    lua_pushinteger(L, SS_BATCH_BYTES);
    lua_setfield(L, -2, "BATCH_BYTES");
    lua_pushinteger(L, SS_LINK_REDELIVERED);
    lua_setfield(L, -2, "REDELIVERED");
    lua_pushinteger(L, SS_LINK_LATE);
    lua_setfield(L, -2, "LATE");
    lua_pushinteger(L, SS_MSG_EOS);
    lua_setfield(L, -2, "MSG_EOS");
    return 1;
}
