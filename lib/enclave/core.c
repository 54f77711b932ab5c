/*
 * core.c - the stage core (core.h): one stage in a restricted Lua state,
 * on sealed batches.
 *
 * A batch goes through phases, each a function below: its header, stream
 * and lineage checked; opened with the data key; its (producer, seq)
 * checked against the replay window (after authentication, so a forged
 * batch cannot fill the window); its payload checked to be a batch of the
 * events the header counts; its events run through the chain (l_call under
 * drive); the output sealed, or, for a stateful stage, its lineage added to
 * the open group that ss_core_flush seals. A stateful stage rejects, before
 * its events run, a batch whose lineage overlaps the open group's: a partial
 * covers each source batch once. A batch refused at any phase is
 * counted and said in the reply, and leaves the core as it was.
 *
 * Invariants: the output writer's storage is allocated at its limit and
 * never grows (a batch that emits too much fails like a Lua error); the
 * associated data of an output (header || lineage) is built in c->ad, the
 * core's own memory; c->buf holds the input copy during a call and the
 * sealed output after it.
 */
#include "enclave/core.h"

#include "crypto/crypto.h"
#include "enclave/lsandbox.h"
#include "lua/lmodules.h"
#include "wire/codec.h"
#include "wire/envelope.h"
#include "wire/pack.h"
#include "wire/replay.h"
#include "base/file.h"

#include <lauxlib.h>
#include <limits.h>
#include <msgpack.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITER_LIMIT (SS_MAX_MESSAGE - SS_HEADER_SIZE - SS_SEAL_OVERHEAD - SS_LINEAGE_ENTRY)
#define AD_FIRST (SS_HEADER_SIZE + 4096 * SS_LINEAGE_ENTRY)
#define IDS_FIRST 4096
#define REPLAY_PRODUCERS 256   /* producers upstream of one enclave */
#define STATS_BYTES 1024       /* the statistics record, before sealing */

struct ss_core {
    char stage[128], name[128];
    int fail;
    uint64_t producer;
    uint32_t stream;
    size_t heap;
    uint64_t budget_ms;

    ss_envelope_t *env;                 /* opens input; knows this core's run and position */
    ss_sealer_t *sealer;                /* seals output and records: made before lockdown */
    int bound;                          /* the sealer seals as the envelope's run and position */
    ss_batch_writer writer;             /* the output batch, storage at its limit */
    uint8_t *buf;                       /* SS_CORE_BUF_BYTES: input copy, then the sealed output */
    uint8_t *ad;                        /* output header || lineage */
    size_t adcap;
    ss_lineage_id *ids;                 /* the open group's lineage, sorted, each id once */
    size_t nids, capids;
    ss_replay_t *replay;                /* REPLAY_PRODUCERS, allocated before lockdown */

    lua_State *L;
    int batch_ref, init_ref, chunk_ref; /* M.batch, M.init, the stage chunk */
    char chunk_name[256];
    int stateful;
    int group_open;                     /* a stateful group has batches */
    int group_alone;                    /* ... opened by a redelivered batch */

    struct {                            /* the call in progress (l_call) */
        ss_batch_reader reader;
        int has_events, open, close;
        uint64_t producer, seq, origin, source;
        size_t nids;
        ss_err decode_err;
        int decoding;                   /* a Lua error now is the decoder's */
        uint32_t skipped;
        int failed;
        char text[1024];
        char failure[1024];
        char why[256];
    } call;

    struct {
        uint64_t in, out, skipped, refused, rejected, batches;
        uint64_t foreign;               /* batches sealed with another key */
        uint64_t redelivered;           /* batches given with the redelivered flag */
    } stats;
    char measurement[65];
};

int ss_core_stateful(const ss_core_t *c)
{
    return c->stateful;
}

const char *ss_core_measurement(const ss_core_t *c)
{
    return c->measurement;
}

uint8_t *ss_core_buffer(ss_core_t *c)
{
    return c->buf;
}

const uint8_t *ss_core_head(const ss_core_t *c)
{
    return c->ad;
}

/* ---- set-up ------------------------------------------------------------------ */

static int l_emit(lua_State *L)
{
    ss_core_t *c = lua_touserdata(L, lua_upvalueindex(1));
    char msg[256] = "";
    lua_settop(L, 1);
    ss_err e = ss_batch_writer_add(&c->writer, L, 1, msg, sizeof msg);
    if (e != SS_OK)
        return luaL_error(L, "cannot send this value downstream: %s", *msg ? msg : ss_strerror(e));
    return 0;
}

/* Protected: load ss-enclave.lua with its host table, keep M.init and
 * M.batch (argument 1: the core). */
static int l_setup(lua_State *L)
{
    ss_core_t *c = lua_touserdata(L, 1);
    const ss_lua_embedded *m = ss_lua_sources;
    while (m->name && strcmp(m->name, "ss-enclave") != 0)
        m++;
    if (!m->name)
        return luaL_error(L, "ss-enclave.lua is not built in");
    if (luaL_loadbufferx(L, m->source, m->len, "=[securestreams]/ss-enclave.lua", "t") != LUA_OK)
        return lua_error(L);
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, ss_sandbox_run);
    lua_setfield(L, -2, "run");
    lua_pushlightuserdata(L, c);
    lua_pushcclosure(L, l_emit, 1);
    lua_setfield(L, -2, "emit");
    lua_pushstring(L, c->stage);
    lua_setfield(L, -2, "stage");
    lua_pushboolean(L, c->fail);
    lua_setfield(L, -2, "fail");
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
        return luaL_error(L, "ss-enclave.lua did not return its table");
    lua_getfield(L, -1, "batch");
    c->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "init");
    c->init_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

void ss_core_destroy(ss_core_t **cp)
{
    if (!cp || !*cp)
        return;
    ss_core_t *c = *cp;
    ss_sandbox_close(c->L);
    ss_envelope_destroy(&c->env);
    ss_sealer_destroy(&c->sealer);
    ss_batch_writer_cleanup(&c->writer);
    if (c->buf)
        sodium_memzero(c->buf, SS_CORE_BUF_BYTES);
    free(c->buf);
    free(c->ad);
    free(c->ids);
    ss_replay_destroy(&c->replay);
    free(c);
    *cp = NULL;
}

/* The data key: an envelope to open input, a sealer for output. Both as a
 * worker, whatever the start-up request says; run and position from it, or
 * adopted from the first input. */
static ss_err load_key(ss_core_t *c, const ss_core_opts *o, char *err, size_t errlen)
{
    ss_key_t key;
    if (!o->key_file || !*o->key_file) {
        ss_say(err, errlen, "the enclave needs a data key file");
        return SS_ERR_USAGE;
    }
    if (o->pos < 0 || o->pos > UINT16_MAX) {
        ss_say(err, errlen, "stage position %d is out of range", o->pos);
        return SS_ERR_USAGE;
    }
    ss_err rc = ss_key_load(&key, o->key_file, err, errlen);
    if (rc != SS_OK)
        return rc;
    ss_envelope_opts eo = { .run = o->run_given ? o->run : NULL, .role = SS_MAKER_WORKER,
                            .pos = o->pos > 0 ? o->pos : -1 };
    ss_maker self;
    rc = ss_envelope_new(&key, &eo, &c->env);
    if (rc == SS_OK) {
        int run_known, pos_known;
        ss_envelope_self(c->env, &self, &run_known, &pos_known);
        c->bound = run_known && pos_known;
        rc = ss_sealer_new(&key, ss_crypto_default_cipher(), &self, &c->sealer);
    }
    ss_key_cleanup(&key);
    if (rc != SS_OK)
        ss_say(err, errlen, "cannot set up the data key: %s", ss_strerror(rc));
    return rc;
}

/* Every buffer at the size it keeps after the lockdown. */
static ss_err make_buffers(ss_core_t *c, char *err, size_t errlen)
{
    char *w = NULL;
    if (ss_batch_writer_init(&c->writer, WRITER_LIMIT) == SS_OK
        && (w = realloc(c->writer.data, WRITER_LIMIT)) != NULL) {   /* never grows later */
        c->writer.data = w;
        c->writer.cap = WRITER_LIMIT;
    }
    c->buf = malloc(SS_CORE_BUF_BYTES);
    c->adcap = AD_FIRST;
    c->ad = malloc(c->adcap);
    c->capids = IDS_FIRST;
    c->ids = malloc(c->capids * sizeof *c->ids);
    if (!w || !c->buf || !c->ad || !c->ids
        || ss_replay_new(REPLAY_PRODUCERS, &c->replay) != SS_OK) {
        ss_say(err, errlen, "out of memory setting up the enclave");
        return SS_ERR_NOMEM;
    }
    return SS_OK;
}

/* The Lua state with the driver, and the stage code compiled (not run). */
static ss_err load_code(ss_core_t *c, const char *text, size_t len, char *err, size_t errlen)
{
    if (!(c->L = ss_sandbox_new(c->heap, (unsigned)c->budget_ms, err, errlen)))
        return SS_ERR_NOMEM;
    lua_pushcfunction(c->L, l_setup);
    lua_pushlightuserdata(c->L, c);
    if (lua_pcall(c->L, 1, 0, 0) != LUA_OK) {
        ss_say(err, errlen, "setting up the enclave's driver: %s", lua_tostring(c->L, -1));
        return SS_ERR_LUA;
    }
    if (luaL_loadbufferx(c->L, text, len, c->chunk_name, "t") != LUA_OK) {
        ss_say(err, errlen, "%s", lua_tostring(c->L, -1));
        return SS_ERR_LUA;
    }
    c->chunk_ref = luaL_ref(c->L, LUA_REGISTRYINDEX);
    return SS_OK;
}

ss_err ss_core_prepare(const ss_core_opts *o, ss_core_t **out, char *err, size_t errlen)
{
    *out = NULL;
    char *code = NULL;
    size_t code_len = 0;
    ss_err rc;
    ss_core_t *c = calloc(1, sizeof *c);
    if (!c) {
        ss_say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    c->batch_ref = c->init_ref = c->chunk_ref = LUA_NOREF;
    snprintf(c->stage, sizeof c->stage, "%s", o->stage && *o->stage ? o->stage : "stage");
    snprintf(c->name, sizeof c->name, "%s", o->name && *o->name ? o->name : c->stage);
    c->fail = o->fail;
    c->producer = o->producer;
    c->stream = o->stream;
    c->heap = o->heap;
    c->budget_ms = o->budget_ms;

    if ((rc = load_key(c, o, err, errlen)) != SS_OK
        || (rc = make_buffers(c, err, errlen)) != SS_OK)
        goto out;
    if (o->is_code) {
        code_len = strlen(o->code);
        snprintf(c->chunk_name, sizeof c->chunk_name, "%s%s",
                 o->code_name && (*o->code_name == '=' || *o->code_name == '@') ? "" : "=",
                 o->code_name && *o->code_name ? o->code_name : "stage code");
    } else {
        if ((rc = ss_file_read(o->code, SS_CORE_MAX_CODE, 0, &code, &code_len, NULL, err,
                               errlen)) != SS_OK)
            goto out;
        snprintf(c->chunk_name, sizeof c->chunk_name, "@%s", o->code);
    }
    const char *text = o->is_code ? o->code : code;
    if ((rc = ss_enclave_measure_code(text, code_len, c->measurement, err, errlen)) != SS_OK)
        goto out;
    rc = load_code(c, text, code_len, err, errlen);
out:
    if (code)
        sodium_memzero(code, code_len);
    ss_file_free(code, code_len, 0);
    if (rc != SS_OK)
        ss_core_destroy(&c);
    *out = c;
    return rc;
}

ss_err ss_core_start(ss_core_t *c, char *err, size_t errlen)
{
    lua_State *L = c->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->init_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->chunk_ref);
    const char *display = c->chunk_name[0] == '@' || c->chunk_name[0] == '=' ? c->chunk_name + 1
                                                                             : c->chunk_name;
    lua_pushstring(L, display);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        ss_say(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error loading the stage");
        lua_pop(L, 1);
        return SS_ERR_LUA;
    }
    c->stateful = lua_toboolean(L, -1);
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, c->chunk_ref);
    c->chunk_ref = LUA_NOREF;
    lua_gc(L, LUA_GCCOLLECT);
    return SS_OK;
}

/* ---- running the chain ------------------------------------------------------- */

/* Protected: decode the batch (if any) into a table, call M.batch, keep its
 * results in c->call. */
static int l_call(lua_State *L)
{
    ss_core_t *c = lua_touserdata(L, 1);
    lua_settop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->batch_ref);
    lua_Integer n = 0;
    if (c->call.has_events) {
        c->call.decoding = 1;
        uint32_t count = c->call.reader.count;
        lua_createtable(L, count > INT_MAX ? INT_MAX : (int)count, 0);
        for (;;) {
            ss_err e = ss_batch_reader_next(&c->call.reader, L, c->call.why, sizeof c->call.why);
            if (e == SS_ERR_CLOSED)
                break;
            if (e != SS_OK) {
                c->call.decode_err = e;
                return 0;
            }
            lua_rawseti(L, -2, ++n);
        }
        c->call.decoding = 0;
        lua_pushinteger(L, n);
        lua_createtable(L, 0, 5);
        lua_pushinteger(L, (lua_Integer)c->call.producer);
        lua_setfield(L, -2, "producer");
        lua_pushinteger(L, (lua_Integer)c->call.seq);
        lua_setfield(L, -2, "seq");
        lua_pushinteger(L, (lua_Integer)c->call.origin);
        lua_setfield(L, -2, "origin");
        lua_pushinteger(L, (lua_Integer)c->call.source);
        lua_setfield(L, -2, "source");
        lua_pushinteger(L, (lua_Integer)c->call.nids);
        lua_setfield(L, -2, "nids");
    } else {
        lua_pushnil(L);
        lua_pushinteger(L, 0);
        lua_pushnil(L);
    }
    lua_pushboolean(L, c->call.open);
    lua_pushboolean(L, c->call.close);
    lua_call(L, 5, 3);
    lua_Integer skipped = lua_tointeger(L, -3);
    c->call.skipped = skipped < 0 ? 0 : skipped > UINT32_MAX ? UINT32_MAX : (uint32_t)skipped;
    snprintf(c->call.text, sizeof c->call.text, "%s", lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
    if (lua_type(L, -1) == LUA_TSTRING) {
        c->call.failed = 1;
        snprintf(c->call.failure, sizeof c->call.failure, "%s", lua_tostring(L, -1));
    }
    return 0;
}

/* Run l_call; a Lua error that escapes the driver (out of memory where no
 * record runs) is reported in rep. */
static ss_err drive(ss_core_t *c, ss_channel_reply *rep)
{
    c->call.decode_err = SS_OK;
    c->call.decoding = 0;
    c->call.skipped = 0;
    c->call.failed = 0;
    c->call.text[0] = c->call.failure[0] = 0;
    lua_pushcfunction(c->L, l_call);
    lua_pushlightuserdata(c->L, c);
    int status = lua_pcall(c->L, 1, 0, 0);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(c->L, -1);
        if (c->call.decoding) {
            c->call.decode_err = status == LUA_ERRMEM ? SS_ERR_NOMEM : SS_ERR_LUA;
            ss_say(c->call.why, sizeof c->call.why, "%s", msg ? msg : "error");
            lua_pop(c->L, 1);
            return SS_OK;
        }
        ss_say(rep->message, sizeof rep->message,
               "stage %s: the enclave's driver failed: %s (heap %zu of %zu bytes in use)",
               c->stage, msg ? msg : "error", ss_sandbox_used(c->L), c->heap);
        lua_pop(c->L, 1);
        return SS_ERR_LUA;
    }
    return SS_OK;
}

/* Append to rep->message, "; "-separated. */
static void note(ss_channel_reply *rep, const char *text)
{
    size_t n = strlen(rep->message);
    if (!*text || n + 3 >= sizeof rep->message)
        return;
    ss_say(rep->message + n, sizeof rep->message - n, "%s%s", n ? "; " : "", text);
}

/* The records' outcome under the error policy. */
static ss_err policy_result(ss_core_t *c, ss_channel_reply *rep)
{
    rep->skipped += c->call.skipped;
    c->stats.skipped += c->call.skipped;
    if (c->call.failed) {
        ss_say(rep->message, sizeof rep->message, "stopped by the error policy (on_error = fail): %s",
               c->call.failure);
        return SS_ERR_LUA;
    }
    note(rep, c->call.text);
    return SS_OK;
}

/* ---- sealing ----------------------------------------------------------------- */

/* Seal the writer's batch with the lineage at c->ad + 40. Output in c->ad
 * (header, lineage) and c->buf (payload). */
static ss_err seal_output(ss_core_t *c, uint64_t seq, size_t lineage_len, uint64_t origin,
                          ss_channel_reply *rep)
{
    const char *payload;
    size_t plen, sealed_len;
    ss_batch_writer_finish(&c->writer, &payload, &plen);
    if (SS_HEADER_SIZE + lineage_len + plen + SS_SEAL_OVERHEAD > SS_MAX_MESSAGE) {
        ss_say(rep->message, sizeof rep->message,
               "stage %s: the output (%zu bytes, lineage %zu) exceeds the message limit", c->stage,
               plen, lineage_len);
        ss_batch_writer_reset(&c->writer);
        return SS_ERR_TOOBIG;
    }
    ss_header_t h = {
        .type = SS_MSG_DATA, .flags = SS_HDR_SEALED, .stream = c->stream, .producer = c->producer,
        .seq = seq, .count = c->writer.count, .origin = origin,
    };
    ss_header_encode(&h, c->ad);
    ss_err rc = ss_seal(c->sealer, seq, c->ad, SS_HEADER_SIZE + lineage_len, payload, plen, c->buf,
                        &sealed_len);
    uint32_t count = c->writer.count;
    ss_batch_writer_reset(&c->writer);
    if (rc != SS_OK) {
        ss_say(rep->message, sizeof rep->message, "stage %s: cannot seal output %llu: %s%s", c->stage,
               (unsigned long long)seq, ss_strerror(rc),
               rc == SS_ERR_USAGE ? " (sequence number not above the last one)" : "");
        return rc;
    }
    rep->has_output = 1;
    rep->out = count;
    rep->lineage_len = lineage_len;
    rep->payload_len = sealed_len;
    c->stats.out += count;
    return SS_OK;
}

static ss_err need_ad(ss_core_t *c, size_t lineage_len)
{
    if (SS_HEADER_SIZE + lineage_len <= c->adcap)
        return SS_OK;
    if (lineage_len > SS_MAX_MESSAGE)
        return SS_ERR_TOOBIG;
    uint8_t *p = realloc(c->ad, SS_HEADER_SIZE + lineage_len);
    if (!p)
        return SS_ERR_NOMEM;
    c->ad = p;
    c->adcap = SS_HEADER_SIZE + lineage_len;
    return SS_OK;
}

/* ---- a batch, phase by phase ------------------------------------------------- */

static void reject(ss_core_t *c, ss_channel_reply *rep, uint64_t producer, uint64_t seq,
                   const char *why)
{
    rep->rejected = 1;
    c->stats.rejected++;
    ss_say(rep->message, sizeof rep->message, "stage %s: rejected batch %llu of producer %016llx: %s",
           c->stage, (unsigned long long)seq, (unsigned long long)producer, why);
}

static void refuse(ss_core_t *c, ss_channel_reply *rep, const ss_header_t *h, const char *why)
{
    rep->refused = 1;
    c->stats.refused++;
    ss_say(rep->message, sizeof rep->message, "stage %s: refused batch %llu of producer %016llx: %s",
           c->stage, (unsigned long long)h->seq, (unsigned long long)h->producer, why);
}

/* The header: a sealed DATA message of our stream, with a lineage. 1, or 0
 * when rejected. */
static int check_header(ss_core_t *c, const uint8_t *hdr, const uint8_t *lineage, size_t llen,
                        ss_header_t *h, size_t *nids, ss_channel_reply *rep)
{
    char why[256];
    if (ss_header_decode(hdr, SS_HEADER_SIZE, h) != SS_OK) {
        reject(c, rep, 0, 0, "malformed header");
        return 0;
    }
    if (h->type != SS_MSG_DATA) {
        reject(c, rep, h->producer, h->seq, "not a DATA message");
        return 0;
    }
    if (!(h->flags & SS_HDR_SEALED)) {
        reject(c, rep, h->producer, h->seq,
               "not sealed (plaintext batches are refused in the enclave mode)");
        return 0;
    }
    if (h->stream != c->stream) {
        ss_say(why, sizeof why, "of another pipeline (stream %08x, expected %08x)", h->stream,
               c->stream);
        reject(c, rep, h->producer, h->seq, why);
        return 0;
    }
    if (ss_lineage_check(lineage, llen, nids) != SS_OK || *nids == 0) {
        reject(c, rep, h->producer, h->seq, "malformed lineage");
        return 0;
    }
    return 1;
}

/* Open the payload, then check it is no replay, then that it is a batch of
 * h->count events (the reader set up in c->call). 1, or 0 when rejected or
 * refused. */
static int open_input(ss_core_t *c, const uint8_t *hdr, const uint8_t *lineage, size_t llen,
                      const uint8_t *payload, size_t plen, const ss_header_t *h,
                      ss_channel_reply *rep)
{
    char why[256];
    const uint8_t *plain;
    size_t plain_len;
    ss_open_info info;
    if (ss_envelope_open(c->env, hdr, lineage, llen, payload, plen, &plain, &plain_len, &info, why,
                         sizeof why) != SS_OK) {
        if (info.foreign) {
            /* never a reason to stop: counted, said, acknowledged by the host */
            rep->foreign = 1;
            c->stats.foreign++;
            ss_say(rep->message, sizeof rep->message,
                   "stage %s: batch %llu of producer %016llx: %s", c->stage,
                   (unsigned long long)h->seq, (unsigned long long)h->producer, why);
            return 0;
        }
        reject(c, rep, h->producer, h->seq, why);
        return 0;
    }
    if (!c->bound) {
        /* the first input fixed the run and position: seal as that from now on */
        ss_maker self;
        ss_envelope_self(c->env, &self, NULL, NULL);
        if (ss_sealer_bind(c->sealer, &self) != SS_OK) {
            reject(c, rep, h->producer, h->seq, "cannot bind the sealer to the run");
            return 0;
        }
        c->bound = 1;
    }
    if (ss_replay_check(c->replay, h->producer, h->seq, why, sizeof why) != 1) {
        reject(c, rep, h->producer, h->seq, why);
        return 0;
    }
    if (ss_batch_reader_init(&c->call.reader, plain, plain_len) != SS_OK
        || c->call.reader.count != h->count) {
        ss_say(why, sizeof why, "not a MessagePack array of %u events", h->count);
        refuse(c, rep, h, why);
        return 0;
    }
    return 1;
}

/* Room for the output's lineage (stateless) or the group's (stateful). */
static ss_err make_room(ss_core_t *c, size_t llen, size_t nids, ss_channel_reply *rep)
{
    if (!c->stateful && need_ad(c, llen) != SS_OK) {
        ss_say(rep->message, sizeof rep->message, "stage %s: out of memory for a lineage of %zu bytes",
               c->stage, llen);
        return SS_ERR_NOMEM;
    }
    if (c->stateful && c->nids + nids > c->capids) {
        size_t cap = c->capids;
        while (cap < c->nids + nids)
            cap *= 2;
        ss_lineage_id *p = cap > SS_MAX_MESSAGE / SS_LINEAGE_ENTRY ? NULL
                                                                  : realloc(c->ids, cap * sizeof *p);
        if (!p) {
            ss_say(rep->message, sizeof rep->message,
                   "stage %s: the group's lineage is too long: flush sooner", c->stage);
            return SS_ERR_TOOBIG;
        }
        c->ids = p;
        c->capids = cap;
    }
    return SS_OK;
}

/* The events through the chain. *ran is 1 when they went through; 0 when
 * the batch was refused (not decodable) or its events skipped (they do not
 * fit in the heap). */
static ss_err run_chain(ss_core_t *c, const ss_header_t *h, const uint8_t *lineage, size_t nids,
                        int *ran, ss_channel_reply *rep)
{
    *ran = 0;
    c->call.has_events = 1;
    c->call.open = !c->stateful || !c->group_open;
    c->call.close = !c->stateful;
    c->call.producer = h->producer;
    c->call.seq = h->seq;
    c->call.origin = h->origin;
    c->call.source = ss_lineage_get(lineage, 0).source;
    c->call.nids = nids;
    ss_err rc = drive(c, rep);
    if (rc != SS_OK)
        return rc;
    if (c->call.decode_err == SS_ERR_FORMAT) {
        refuse(c, rep, h, c->call.why);
        return SS_OK;
    }
    if (c->call.decode_err != SS_OK) {
        /* the batch does not fit in the heap: its records fail */
        rep->skipped = h->count;
        c->stats.skipped += h->count;
        ss_say(rep->message, sizeof rep->message,
               "stage %s: skipped the %u events of batch %llu of producer %016llx: decoding them: %s (enclave heap %zu bytes)",
               c->stage, h->count, (unsigned long long)h->seq, (unsigned long long)h->producer,
               c->call.why, c->heap);
        if (c->fail) {
            char msg[sizeof rep->message];
            ss_say(msg, sizeof msg, "stopped by the error policy (on_error = fail): %s", rep->message);
            memcpy(rep->message, msg, sizeof msg);
            return SS_ERR_LUA;
        }
        return SS_OK;
    }
    *ran = 1;
    return SS_OK;
}

/* ---- the open group's lineage ----------------------------------------------- */

static int id_less(ss_lineage_id a, ss_lineage_id b)
{
    return a.source < b.source || (a.source == b.source && a.seq < b.seq);
}

/* Is id in the open group (c->ids, kept sorted)? */
static int group_has(const ss_core_t *c, ss_lineage_id id)
{
    size_t lo = 0, hi = c->nids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (id_less(c->ids[mid], id))
            lo = mid + 1;
        else if (id_less(id, c->ids[mid]))
            hi = mid;
        else
            return 1;
    }
    return 0;
}

/* A batch whose lineage overlaps the open group's would be counted twice in
 * one partial result, and merging the lineages would hide it from every
 * router and the sink: rejected before its events run. An honest router
 * never delivers one (docs/protocol.md, rules 3 and 5). 1, or 0 when
 * rejected. */
static int check_group(ss_core_t *c, const ss_header_t *h, const uint8_t *lineage, size_t nids,
                       ss_channel_reply *rep)
{
    if (!c->stateful || !c->group_open)
        return 1;
    for (size_t i = 0; i < nids; i++) {
        ss_lineage_id id = ss_lineage_get(lineage, i);
        if (group_has(c, id)) {
            char why[128];
            ss_say(why, sizeof why, "lineage %016llx#%llu already in this partial",
                   (unsigned long long)id.source, (unsigned long long)id.seq);
            reject(c, rep, h->producer, h->seq, why);
            return 0;
        }
    }
    return 1;
}

/* Merge the batch's sorted lineage into the group's, from the back (room
 * made by make_room; check_group made sure no id is in both). */
static void group_add(ss_core_t *c, const uint8_t *lineage, size_t nids)
{
    size_t i = c->nids, j = nids, k = c->nids + nids;
    while (j > 0) {
        ss_lineage_id b = ss_lineage_get(lineage, j - 1);
        if (i > 0 && id_less(b, c->ids[i - 1])) {
            c->ids[--k] = c->ids[--i];
        } else {
            c->ids[--k] = b;
            j--;
        }
    }
    c->nids += nids;
}

/* After the chain: count the batch, then seal its output (stateless) or
 * add its lineage to the open group (stateful). */
static ss_err take_output(ss_core_t *c, const ss_header_t *h, const uint8_t *lineage, size_t llen,
                          size_t nids, uint64_t seq, int redelivered, ss_channel_reply *rep)
{
    rep->in = h->count;
    c->stats.in += h->count;
    c->stats.batches++;
    ss_err rc = policy_result(c, rep);
    if (rc != SS_OK) {
        ss_batch_writer_reset(&c->writer);
        return rc;
    }
    if (!c->stateful) {
        memcpy(c->ad + SS_HEADER_SIZE, lineage, llen);
        return seal_output(c, seq, llen, h->origin, rep);
    }
    group_add(c, lineage, nids);
    c->group_open = 1;
    c->group_alone = redelivered;
    return SS_OK;
}

ss_err ss_core_batch(ss_core_t *c, const uint8_t *hdr, const uint8_t *lineage, size_t llen,
                     const uint8_t *payload, size_t plen, uint64_t seq, int redelivered,
                     ss_channel_reply *rep)
{
    if (c->stateful && c->group_open && (redelivered || c->group_alone)) {
        ss_say(rep->message, sizeof rep->message, "stage %s: flush the open group %s", c->stage,
               redelivered ? "before a redelivered batch" : "after a redelivered batch");
        return SS_ERR_USAGE;
    }
    if (redelivered)
        c->stats.redelivered++;
    ss_header_t h;
    size_t nids;
    if (!check_header(c, hdr, lineage, llen, &h, &nids, rep)
        || !open_input(c, hdr, lineage, llen, payload, plen, &h, rep)
        || !check_group(c, &h, lineage, nids, rep))
        return SS_OK;
    int ran;
    ss_err rc = make_room(c, llen, nids, rep);
    if (rc == SS_OK)
        rc = run_chain(c, &h, lineage, nids, &ran, rep);
    if (rc != SS_OK || !ran)
        return rc;
    return take_output(c, &h, lineage, llen, nids, seq, redelivered, rep);
}

ss_err ss_core_flush(ss_core_t *c, uint64_t seq, ss_channel_reply *rep)
{
    if (!c->stateful || !c->group_open)
        return SS_OK;
    c->call.has_events = 0;
    c->call.open = 0;
    c->call.close = 1;
    ss_err rc = drive(c, rep);
    c->group_open = c->group_alone = 0;
    size_t n = ss_lineage_normalise(c->ids, c->nids), named = c->nids;
    c->nids = 0;
    if (rc != SS_OK)
        return rc;
    if (n != named) {
        /* check_group keeps ids apart: merged away, a batch counted twice would pass unseen */
        ss_say(rep->message, sizeof rep->message,
               "stage %s: the group's lineage names %zu source batches more than once", c->stage,
               named - n);
        ss_batch_writer_reset(&c->writer);
        return SS_ERR_FORMAT;
    }
    if ((rc = policy_result(c, rep)) != SS_OK) {
        ss_batch_writer_reset(&c->writer);
        return rc;
    }
    if (need_ad(c, n * SS_LINEAGE_ENTRY) != SS_OK) {
        ss_say(rep->message, sizeof rep->message, "stage %s: out of memory for a lineage of %zu entries",
               c->stage, n);
        ss_batch_writer_reset(&c->writer);
        return SS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        ss_lineage_put(c->ad + SS_HEADER_SIZE, i, c->ids[i]);
    return seal_output(c, seq, n * SS_LINEAGE_ENTRY, 0, rep);
}

ss_err ss_core_finish(ss_core_t *c, const char *id, uint64_t seq, ss_channel_reply *rep)
{
    uint8_t storage[STATS_BYTES];
    ss_fixbuf b;
    msgpack_packer pk;
    ss_fixbuf_init(&b, &pk, storage, sizeof storage);
    ss_maker self;
    ss_envelope_self(c->env, &self, NULL, NULL);
    msgpack_pack_map(&pk, 11);
    ss_pack_str(&pk, "stage");
    ss_pack_str(&pk, c->stage);
    ss_pack_str(&pk, "name");
    ss_pack_str(&pk, c->name);
    ss_pack_str(&pk, "pos");
    msgpack_pack_int64(&pk, self.pos);
    ss_pack_kv_u64(&pk, "in", c->stats.in);
    ss_pack_kv_u64(&pk, "out", c->stats.out);
    ss_pack_kv_u64(&pk, "skipped", c->stats.skipped);
    ss_pack_kv_u64(&pk, "refused", c->stats.refused);
    ss_pack_kv_u64(&pk, "rejected", c->stats.rejected);
    ss_pack_kv_u64(&pk, "foreign", c->stats.foreign);
    ss_pack_kv_u64(&pk, "batches", c->stats.batches);
    ss_pack_kv_u64(&pk, "redelivered", c->stats.redelivered);
    if (b.over) {
        ss_say(rep->message, sizeof rep->message, "stage %s: the statistics record exceeds %d bytes",
               c->stage, STATS_BYTES);
        return SS_ERR_TOOBIG;
    }
    char ad[256];
    int n = snprintf(ad, sizeof ad, "%s%s", SS_RECORD_AD, id);
    size_t adlen = n < 0 ? 0 : (size_t)n < sizeof ad ? (size_t)n : sizeof ad - 1;
    size_t sealed_len;
    ss_err rc = ss_seal(c->sealer, seq, ad, adlen, b.data, b.len, c->buf, &sealed_len);
    if (rc != SS_OK) {
        ss_say(rep->message, sizeof rep->message, "stage %s: cannot seal the statistics record %llu: %s",
               c->stage, (unsigned long long)seq, ss_strerror(rc));
        return rc;
    }
    rep->payload_len = sealed_len;
    return SS_OK;
}

__attribute__((noinline)) ss_err ss_core_ping(ss_core_t *c, ss_channel_reply *rep)
{
    __asm__ volatile("" : : "r"(c) : "memory");
    memset(rep, 0, offsetof(ss_channel_reply, measurement));
    return SS_OK;
}
