/*
 * enclave.c - the enclave: stage code on sealed batches, behind one
 * interface with two backends (enclave.h, docs/enclave.md).
 *
 * Both backends run the same core: it opens each input batch with the data
 * key (envelope.h), checks the stream, the lineage and replays, decodes the
 * events into the restricted Lua state (lsandbox.h) where ss-enclave.lua
 * runs the stage chain, and seals what the chain emitted. `inprocess` calls
 * the core directly. `isolated` runs it in a child: fork, then exec of this
 * very program (`securestreams enclave-child`) with two descriptors, fd 3 a
 * socketpair end (the doorbell, one byte each way) and fd 4 a memfd (the
 * channel: a control block, an input area and an output area). The child
 * loads the key and the stage code, fixes its heap, locks itself down
 * (seccomp), then answers one request per doorbell.
 *
 * Invariants: the core reads a request only from its own memory (the child
 * copies the input out of the shared area before looking at it, and builds
 * the associated data of what it seals in private memory), so a host that
 * rewrites the shared area during a call cannot make the enclave open one
 * message and act on another, or seal something it did not produce. The
 * host trusts no length the child writes back: each is checked against the
 * area. The sealer is created before the lockdown (it needs randomness and
 * sodium_malloc, which need system calls); after it, the child makes no
 * system call but read and write on fd 3 (and the exits).
 */
#include "enclave/enclave.h"

#include "wire/codec.h"
#include "crypto/crypto.h"
#include "wire/envelope.h"
#include "lua/lmodules.h"
#include "enclave/lsandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_HEAP ((size_t)64 << 20)
#define MIN_HEAP ((size_t)1 << 20)
#define MAX_HEAP ((size_t)1 << 40)
#define DEFAULT_BUDGET 1000u       /* CPU milliseconds per record */
#define MIN_BUDGET 10u
#define MAX_BUDGET 86400000u       /* a day */

#define MAX_CODE (SS_MAX_MESSAGE / 2)  /* stage code, script file or text */
#define WRITER_LIMIT (SS_MAX_MESSAGE - SS_HEADER_SIZE - SS_SEAL_OVERHEAD - SS_LINEAGE_ENTRY)
#define BUF_BYTES SS_MAX_MESSAGE      /* input copy, then sealed output */
#define AD_FIRST (SS_HEADER_SIZE + 4096 * SS_LINEAGE_ENTRY)
#define IDS_FIRST 4096
#define REPLAY_WINDOW 16384           /* sequence numbers remembered below a producer's newest */
#define REPLAY_PRODUCERS 256
/* what the child's core allocates besides the Lua heap (fixed buffers,
 * replay table) and room for growth of the small ones */
#define CORE_FIXED ((size_t)3 * SS_MAX_MESSAGE + ((size_t)8 << 20))

#define CTL_BYTES 8192
#define AREA_BYTES SS_MAX_MESSAGE
#define CHANNEL_BYTES (CTL_BYTES + 2 * (size_t)AREA_BYTES)
#define CHANNEL_MAGIC 0x53534543u     /* "SSEC" */
#define CHILD_DOORBELL 3
#define CHILD_MEMORY 4
#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 2000
#define SPIN_NS 30000                 /* spin this long for the other side before sleeping */

enum { OP_INIT = 1, OP_BATCH, OP_FLUSH, OP_FINISH, OP_PING, OP_QUIT };

/* ---- the channel ------------------------------------------------------------ */

typedef struct {
    uint32_t op;
    uint32_t redelivered;
    uint64_t seq;
    uint64_t lineage_len;      /* input: header (40) | lineage | payload in the in area */
    uint64_t payload_len;
    char id[256];              /* OP_FINISH: the record's context */
} request_t;

typedef struct {
    int32_t status;            /* ss_err */
    uint32_t has_output;
    uint32_t in, out, skipped, rejected, refused;
    uint32_t stateful;         /* OP_INIT */
    uint64_t lineage_len;      /* output: header (40) | lineage | payload in the out area */
    uint64_t payload_len;
    char measurement[65];
    char message[1024];
} reply_t;

/* The control block at the start of the shared memory. The counters let
 * each side spin briefly before sleeping on the doorbell: a side that is
 * about to sleep says so (`*_waiting`), then looks once more; the other side
 * rings only when it sees that flag. Both use sequentially consistent
 * atomics, so at least one of them sees the other's store (a stray byte is
 * harmless: a woken side always re-checks its counter). */
typedef struct {
    uint32_t magic;
    request_t req;
    reply_t rep;
    _Atomic uint64_t posted;            /* requests the host has posted */
    _Atomic uint64_t answered;          /* requests the enclave has answered */
    _Atomic uint32_t host_waiting;
    _Atomic uint32_t enclave_waiting;
    uint32_t spin;                      /* both sides may spin (set by the host at start) */
} channel_ctl;

_Static_assert(sizeof(channel_ctl) <= CTL_BYTES, "control block too large");

/* A waiter's spinning policy: spin while spinning pays. After 4 waits in a
 * row that spun in vain (the other side takes longer than SPIN_NS, as a
 * batch of real work does), spin only on every 16th wait, to notice when
 * calls get short again. */
typedef struct {
    int enabled;      /* more than one CPU, SS_ENCLAVE_SPIN not 0 */
    unsigned misses;  /* consecutive waits where spinning did not pay */
    unsigned waits;
} spinner;

/* OP_INIT: this, then the strings, at the start of the in area. */
typedef struct {
    uint64_t heap, budget_ms, producer;
    uint32_t stream, fail, pos, is_code;
    uint32_t off[5], len[5];            /* code/script, code_name, key_file, stage, name */
} init_wire;

enum { S_CODE, S_CODE_NAME, S_KEY_FILE, S_STAGE, S_NAME, S_COUNT };

/* ---- the core: one stage in a restricted Lua state ---------------------- */

typedef struct {
    uint64_t producer;
    uint64_t top;                       /* newest seq seen + 1 */
    uint64_t bits[REPLAY_WINDOW / 64];  /* seen, for top - REPLAY_WINDOW .. top - 1 */
} replay_slot;

typedef struct {
    char stage[128], name[128];
    int pos, fail;
    uint64_t producer;
    uint32_t stream;
    size_t heap;
    uint64_t budget_ms;

    ss_envelope_t *env;                 /* opens input */
    ss_sealer_t *sealer;                /* seals output and records: made before lockdown */
    ss_batch_writer writer;             /* the output batch, storage at its limit */
    uint8_t *buf;                       /* BUF_BYTES: input copy, then the sealed output */
    uint8_t *ad;                        /* output header || lineage */
    size_t adcap;
    ss_lineage_id *ids;                 /* the open group's lineage */
    size_t nids, capids;
    replay_slot *slots;
    size_t nslots;

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
    } stats;
    char measurement[65];
} core;

static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void say(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* ---- measurement -------------------------------------------------------- */

static ss_err hash_file(crypto_generichash_state *st, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int en = errno;
        say(err, errlen, "%s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    static uint8_t block[1 << 16];
    ss_err rc = SS_OK;
    for (;;) {
        ssize_t n = read(fd, block, sizeof block);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            say(err, errlen, "%s: %s", path, strerror(en));
            rc = SS_ERR_IO;
            break;
        }
        if (n == 0)
            break;
        crypto_generichash_update(st, block, (size_t)n);
    }
    close(fd);
    return rc;
}

static ss_err measure_bytes(const void *code, size_t len, char out[65], char *err, size_t errlen)
{
    crypto_generichash_state st;
    uint8_t h[32];
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    ss_err rc = hash_file(&st, "/proc/self/exe", err, errlen);
    if (rc != SS_OK)
        return rc;
    crypto_generichash_update(&st, code, len);
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(out, 65, h, sizeof h);
    return SS_OK;
}

/* Read a whole file of at most `max` bytes into a malloc'd buffer. */
static ss_err read_file(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int en = errno;
        say(err, errlen, "%s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    ss_err rc = buf ? SS_OK : SS_ERR_NOMEM;
    while (rc == SS_OK) {
        if (n == cap) {
            if (cap >= max) {
                say(err, errlen, "%s: larger than %zu bytes", path, max);
                rc = SS_ERR_TOOBIG;
                break;
            }
            cap = cap * 2 > max ? max : cap * 2;
            char *p = realloc(buf, cap);
            if (!p) {
                rc = SS_ERR_NOMEM;
                break;
            }
            buf = p;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int en = errno;
            say(err, errlen, "%s: %s", path, strerror(en));
            rc = SS_ERR_IO;
        } else if (r == 0) {
            break;
        } else {
            n += (size_t)r;
        }
    }
    close(fd);
    if (rc != SS_OK) {
        if (rc == SS_ERR_NOMEM)
            say(err, errlen, "%s: out of memory reading it", path);
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return SS_OK;
}

ss_err ss_enclave_measure(const char *script_or_code, int is_code, char out[65], char *err,
                          size_t errlen)
{
    if (ss_crypto_init() != SS_OK) {
        say(err, errlen, "cannot start libsodium");
        return SS_ERR_CRYPTO;
    }
    if (is_code)
        return measure_bytes(script_or_code, strlen(script_or_code), out, err, errlen);
    char *code;
    size_t len;
    ss_err rc = read_file(script_or_code, MAX_CODE, &code, &len, err, errlen);
    if (rc != SS_OK)
        return rc;
    rc = measure_bytes(code, len, out, err, errlen);
    free(code);
    return rc;
}

/* ---- options ------------------------------------------------------------ */

void ss_enclave_opts_init(ss_enclave_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backend = "isolated";
    const char *s = getenv("SS_STREAM");
    o->stream = s && *s ? (uint32_t)strtoul(s, NULL, 0) : SS_DEFAULT_STREAM;
}

/* SS_ENCLAVE_BUDGET: CPU time, "500" or "500ms" (milliseconds) or "2s",
 * "1.5s" (seconds). */
static int parse_ms(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0))
        return -1;
    if (!strcmp(end, "s"))
        v *= 1000;
    else if (*end && strcmp(end, "ms"))
        return -1;
    if (v > MAX_BUDGET || v != (double)(uint64_t)v)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static ss_err resolve(const ss_enclave_opts *o, size_t *heap, uint64_t *budget, char *err, size_t errlen)
{
    const char *s;
    *heap = o->heap_bytes;
    uint64_t h;
    if (*heap == 0 && (s = getenv("SS_ENCLAVE_HEAP")) && *s) {
        if (ss_parse_u64(s, 10, SS_NUM_BYTES, MAX_HEAP, &h) != 0) {
            say(err, errlen, "SS_ENCLAVE_HEAP=%s: expected bytes, or a number with K, M or G", s);
            return SS_ERR_USAGE;
        }
        *heap = (size_t)h;
    }
    if (*heap == 0)
        *heap = DEFAULT_HEAP;
    if (*heap < MIN_HEAP || *heap > MAX_HEAP) {
        say(err, errlen, "enclave heap of %zu bytes: expected 1 MiB to 1 TiB", *heap);
        return SS_ERR_USAGE;
    }
    *budget = o->budget_ms;
    if (*budget == 0 && (s = getenv("SS_ENCLAVE_BUDGET")) && *s && parse_ms(s, budget) != 0) {
        say(err, errlen, "SS_ENCLAVE_BUDGET=%s: expected CPU time per record, like 500ms or 2s", s);
        return SS_ERR_USAGE;
    }
    if (*budget == 0)
        *budget = DEFAULT_BUDGET;
    if (*budget < MIN_BUDGET || *budget > MAX_BUDGET) {
        say(err, errlen, "enclave budget of %llu ms: expected %u ms to %u ms (a day)",
            (unsigned long long)*budget, MIN_BUDGET, MAX_BUDGET);
        return SS_ERR_USAGE;
    }
    return SS_OK;
}

/* ---- the core: set-up ----------------------------------------------------- */

typedef struct {
    const char *code;        /* code text, or script path when !is_code */
    int is_code;
    const char *code_name, *key_file, *stage, *name;
    size_t heap;
    uint64_t budget_ms;
    int fail, pos;
    uint64_t producer;
    uint32_t stream;
} core_opts;

static int l_emit(lua_State *L)
{
    core *c = lua_touserdata(L, lua_upvalueindex(1));
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
    core *c = lua_touserdata(L, 1);
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

static void core_destroy(core **cp)
{
    if (!cp || !*cp)
        return;
    core *c = *cp;
    ss_sandbox_close(c->L);
    ss_envelope_destroy(&c->env);
    ss_sealer_destroy(&c->sealer);
    ss_batch_writer_cleanup(&c->writer);
    if (c->buf)
        sodium_memzero(c->buf, BUF_BYTES);
    free(c->buf);
    free(c->ad);
    free(c->ids);
    free(c->slots);
    free(c);
    *cp = NULL;
}

/* Everything before the lockdown: key, crypto, buffers at their final size,
 * the Lua state with the driver, the stage code compiled but not run, the
 * measurement. */
static ss_err core_prepare(const core_opts *o, core **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_key_t key;
    char *code = NULL;
    size_t code_len = 0;
    ss_err rc = SS_ERR_NOMEM;
    core *c = calloc(1, sizeof *c);
    if (!c) {
        say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    c->batch_ref = c->init_ref = c->chunk_ref = LUA_NOREF;
    snprintf(c->stage, sizeof c->stage, "%s", o->stage && *o->stage ? o->stage : "stage");
    snprintf(c->name, sizeof c->name, "%s", o->name && *o->name ? o->name : c->stage);
    c->pos = o->pos;
    c->fail = o->fail;
    c->producer = o->producer;
    c->stream = o->stream;
    c->heap = o->heap;
    c->budget_ms = o->budget_ms;

    if (!o->key_file || !*o->key_file) {
        say(err, errlen, "the enclave needs a data key file");
        rc = SS_ERR_USAGE;
        goto out;
    }
    if ((rc = ss_key_load(&key, o->key_file, err, errlen)) != SS_OK)
        goto out;
    rc = ss_envelope_new(&key, &c->env);
    if (rc == SS_OK)
        rc = ss_sealer_new(&key, ss_crypto_default_cipher(), &c->sealer);
    ss_key_cleanup(&key);
    if (rc != SS_OK) {
        say(err, errlen, "cannot set up the data key: %s", ss_strerror(rc));
        goto out;
    }

    rc = SS_ERR_NOMEM;
    char *w = NULL;
    if (ss_batch_writer_init(&c->writer, WRITER_LIMIT) == SS_OK
        && (w = realloc(c->writer.data, WRITER_LIMIT)) != NULL) {   /* never grows later */
        c->writer.data = w;
        c->writer.cap = WRITER_LIMIT;
    }
    c->buf = malloc(BUF_BYTES);
    c->adcap = AD_FIRST;
    c->ad = malloc(c->adcap);
    c->capids = IDS_FIRST;
    c->ids = malloc(c->capids * sizeof *c->ids);
    c->slots = calloc(REPLAY_PRODUCERS, sizeof *c->slots);
    if (!w || !c->buf || !c->ad || !c->ids || !c->slots) {
        say(err, errlen, "out of memory setting up the enclave");
        goto out;
    }

    if (o->is_code) {
        code_len = strlen(o->code);
        snprintf(c->chunk_name, sizeof c->chunk_name, "%s%s",
                 o->code_name && (*o->code_name == '=' || *o->code_name == '@') ? "" : "=",
                 o->code_name && *o->code_name ? o->code_name : "stage code");
    } else {
        if ((rc = read_file(o->code, MAX_CODE, &code, &code_len, err, errlen)) != SS_OK)
            goto out;
        snprintf(c->chunk_name, sizeof c->chunk_name, "@%s", o->code);
    }
    const char *text = o->is_code ? o->code : code;
    if ((rc = measure_bytes(text, code_len, c->measurement, err, errlen)) != SS_OK)
        goto out;

    if (!(c->L = ss_sandbox_new(c->heap, (unsigned)c->budget_ms, err, errlen))) {
        rc = SS_ERR_NOMEM;
        goto out;
    }
    lua_pushcfunction(c->L, l_setup);
    lua_pushlightuserdata(c->L, c);
    if (lua_pcall(c->L, 1, 0, 0) != LUA_OK) {
        say(err, errlen, "setting up the enclave's driver: %s", lua_tostring(c->L, -1));
        rc = SS_ERR_LUA;
        goto out;
    }
    if (luaL_loadbufferx(c->L, text, code_len, c->chunk_name, "t") != LUA_OK) {
        say(err, errlen, "%s", lua_tostring(c->L, -1));
        rc = SS_ERR_LUA;
        goto out;
    }
    c->chunk_ref = luaL_ref(c->L, LUA_REGISTRYINDEX);
    rc = SS_OK;
out:
    if (code)
        sodium_memzero(code, code_len);
    free(code);
    if (rc != SS_OK)
        core_destroy(&c);
    *out = c;
    return rc;
}

/* After the lockdown: run the stage code and the stage function. */
static ss_err core_start(core *c, char *err, size_t errlen)
{
    lua_State *L = c->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->init_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->chunk_ref);
    const char *display = c->chunk_name[0] == '@' || c->chunk_name[0] == '=' ? c->chunk_name + 1
                                                                             : c->chunk_name;
    lua_pushstring(L, display);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        say(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error loading the stage");
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

/* ---- the core: calls -------------------------------------------------------- */

/* Is (producer, seq) new? Remembers it if so; else why says why not. */
static int fresh(core *c, uint64_t producer, uint64_t seq, char *why, size_t whylen)
{
    replay_slot *s = NULL;
    for (size_t i = 0; i < c->nslots && !s; i++)
        if (c->slots[i].producer == producer)
            s = &c->slots[i];
    if (!s) {
        if (c->nslots == REPLAY_PRODUCERS) {
            say(why, whylen, "more than %d producers upstream", REPLAY_PRODUCERS);
            return 0;
        }
        s = &c->slots[c->nslots++];
        memset(s, 0, sizeof *s);
        s->producer = producer;
        s->top = seq;
    }
    if (seq >= s->top) {
        if (seq - s->top >= REPLAY_WINDOW) {
            memset(s->bits, 0, sizeof s->bits);
        } else {
            for (uint64_t q = s->top; q <= seq; q++)
                s->bits[(q % REPLAY_WINDOW) / 64] &= ~((uint64_t)1 << (q % 64));
        }
        s->top = seq + 1;
    } else if (s->top - seq > REPLAY_WINDOW) {
        say(why, whylen, "too old to tell from a replay (more than %d batches behind its producer's newest)",
            REPLAY_WINDOW);
        return 0;
    } else if (s->bits[(seq % REPLAY_WINDOW) / 64] & ((uint64_t)1 << (seq % 64))) {
        say(why, whylen, "replayed (already received from this producer)");
        return 0;
    }
    s->bits[(seq % REPLAY_WINDOW) / 64] |= (uint64_t)1 << (seq % 64);
    return 1;
}

/* Protected: decode the batch (if any) into a table, call M.batch, keep its
 * results in c->call. */
static int l_call(lua_State *L)
{
    core *c = lua_touserdata(L, 1);
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
static ss_err drive(core *c, reply_t *rep)
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
            say(c->call.why, sizeof c->call.why, "%s", msg ? msg : "error");
            lua_pop(c->L, 1);
            return SS_OK;
        }
        say(rep->message, sizeof rep->message, "stage %s: the enclave's driver failed: %s (heap %zu of %zu bytes in use)",
            c->stage, msg ? msg : "error", ss_sandbox_used(c->L), c->heap);
        lua_pop(c->L, 1);
        return SS_ERR_LUA;
    }
    return SS_OK;
}

/* Append to rep->message, "; "-separated. */
static void note(reply_t *rep, const char *text)
{
    size_t n = strlen(rep->message);
    if (!*text || n + 3 >= sizeof rep->message)
        return;
    say(rep->message + n, sizeof rep->message - n, "%s%s", n ? "; " : "", text);
}

/* Seal the writer's batch with the lineage at c->ad + 40. Output in c->ad
 * (header, lineage) and c->buf (payload). */
static ss_err seal_output(core *c, uint64_t seq, size_t lineage_len, uint64_t origin, reply_t *rep)
{
    const char *payload;
    size_t plen, sealed_len;
    ss_batch_writer_finish(&c->writer, &payload, &plen);
    if (SS_HEADER_SIZE + lineage_len + plen + SS_SEAL_OVERHEAD > SS_MAX_MESSAGE) {
        say(rep->message, sizeof rep->message, "stage %s: the output (%zu bytes, lineage %zu) exceeds the message limit",
            c->stage, plen, lineage_len);
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
        say(rep->message, sizeof rep->message, "stage %s: cannot seal output %llu: %s%s", c->stage,
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

static ss_err need_ad(core *c, size_t lineage_len)
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

static void reject(core *c, reply_t *rep, uint64_t producer, uint64_t seq, const char *why)
{
    rep->rejected = 1;
    c->stats.rejected++;
    say(rep->message, sizeof rep->message, "stage %s: rejected batch %llu of producer %016llx: %s",
        c->stage, (unsigned long long)seq, (unsigned long long)producer, why);
}

static ss_err policy_result(core *c, reply_t *rep)
{
    rep->skipped += c->call.skipped;
    c->stats.skipped += c->call.skipped;
    if (c->call.failed) {
        say(rep->message, sizeof rep->message, "stopped by the error policy (on_error = fail): %s",
            c->call.failure);
        return SS_ERR_LUA;
    }
    note(rep, c->call.text);
    return SS_OK;
}

static ss_err core_batch(core *c, const uint8_t *hdr, const uint8_t *lineage, size_t llen,
                         const uint8_t *payload, size_t plen, uint64_t seq, int redelivered,
                         reply_t *rep)
{
    ss_header_t h;
    size_t nids;
    char why[256];
    const uint8_t *plain;
    size_t plain_len;

    if (c->stateful && c->group_open && (redelivered || c->group_alone)) {
        say(rep->message, sizeof rep->message, "stage %s: flush the open group %s", c->stage,
            redelivered ? "before a redelivered batch" : "after a redelivered batch");
        return SS_ERR_USAGE;
    }
    if (ss_header_decode(hdr, SS_HEADER_SIZE, &h) != SS_OK) {
        reject(c, rep, 0, 0, "malformed header");
        return SS_OK;
    }
    if (h.type != SS_MSG_DATA) {
        reject(c, rep, h.producer, h.seq, "not a DATA message");
        return SS_OK;
    }
    if (!(h.flags & SS_HDR_SEALED)) {
        reject(c, rep, h.producer, h.seq, "not sealed (plaintext batches are refused in the enclave mode)");
        return SS_OK;
    }
    if (h.stream != c->stream) {
        say(why, sizeof why, "of another pipeline (stream %08x, expected %08x)", h.stream, c->stream);
        reject(c, rep, h.producer, h.seq, why);
        return SS_OK;
    }
    if (ss_lineage_check(lineage, llen, &nids) != SS_OK || nids == 0) {
        reject(c, rep, h.producer, h.seq, "malformed lineage");
        return SS_OK;
    }
    if (ss_envelope_open(c->env, hdr, lineage, llen, payload, plen, &plain, &plain_len, why,
                         sizeof why) != SS_OK) {
        reject(c, rep, h.producer, h.seq, why);
        return SS_OK;
    }
    if (!fresh(c, h.producer, h.seq, why, sizeof why)) {
        reject(c, rep, h.producer, h.seq, why);
        return SS_OK;
    }
    if (ss_batch_reader_init(&c->call.reader, plain, plain_len) != SS_OK
        || c->call.reader.count != h.count) {
        rep->refused = 1;
        c->stats.refused++;
        say(rep->message, sizeof rep->message,
            "stage %s: refused batch %llu of producer %016llx: not a MessagePack array of %u events",
            c->stage, (unsigned long long)h.seq, (unsigned long long)h.producer, h.count);
        return SS_OK;
    }
    if (!c->stateful && need_ad(c, llen) != SS_OK) {
        say(rep->message, sizeof rep->message, "stage %s: out of memory for a lineage of %zu bytes", c->stage, llen);
        return SS_ERR_NOMEM;
    }
    if (c->stateful && c->nids + nids > c->capids) {
        size_t cap = c->capids;
        while (cap < c->nids + nids)
            cap *= 2;
        ss_lineage_id *p = cap > SS_MAX_MESSAGE / SS_LINEAGE_ENTRY ? NULL : realloc(c->ids, cap * sizeof *p);
        if (!p) {
            say(rep->message, sizeof rep->message, "stage %s: the group's lineage is too long: flush sooner", c->stage);
            return SS_ERR_TOOBIG;
        }
        c->ids = p;
        c->capids = cap;
    }

    c->call.has_events = 1;
    c->call.open = !c->stateful || !c->group_open;
    c->call.close = !c->stateful;
    c->call.producer = h.producer;
    c->call.seq = h.seq;
    c->call.origin = h.origin;
    c->call.source = ss_lineage_get(lineage, 0).source;
    c->call.nids = nids;
    ss_err rc = drive(c, rep);
    if (rc != SS_OK)
        return rc;
    if (c->call.decode_err == SS_ERR_FORMAT) {
        rep->refused = 1;
        c->stats.refused++;
        say(rep->message, sizeof rep->message, "stage %s: refused batch %llu of producer %016llx: %s",
            c->stage, (unsigned long long)h.seq, (unsigned long long)h.producer, c->call.why);
        return SS_OK;
    }
    if (c->call.decode_err != SS_OK) {
        /* the batch does not fit in the heap: its records fail */
        rep->skipped = h.count;
        c->stats.skipped += h.count;
        say(rep->message, sizeof rep->message,
            "stage %s: skipped the %u events of batch %llu of producer %016llx: decoding them: %s (enclave heap %zu bytes)",
            c->stage, h.count, (unsigned long long)h.seq, (unsigned long long)h.producer, c->call.why, c->heap);
        if (c->fail) {
            char msg[sizeof rep->message];
            say(msg, sizeof msg, "stopped by the error policy (on_error = fail): %s", rep->message);
            memcpy(rep->message, msg, sizeof msg);
            return SS_ERR_LUA;
        }
        return SS_OK;
    }
    rep->in = h.count;
    c->stats.in += h.count;
    c->stats.batches++;
    if ((rc = policy_result(c, rep)) != SS_OK) {
        ss_batch_writer_reset(&c->writer);
        return rc;
    }
    if (!c->stateful) {
        memcpy(c->ad + SS_HEADER_SIZE, lineage, llen);
        return seal_output(c, seq, llen, h.origin, rep);
    }
    for (size_t i = 0; i < nids; i++)
        c->ids[c->nids++] = ss_lineage_get(lineage, i);
    c->group_open = 1;
    c->group_alone = redelivered;
    return SS_OK;
}

static ss_err core_flush(core *c, uint64_t seq, reply_t *rep)
{
    if (!c->stateful || !c->group_open)
        return SS_OK;
    c->call.has_events = 0;
    c->call.open = 0;
    c->call.close = 1;
    ss_err rc = drive(c, rep);
    c->group_open = c->group_alone = 0;
    size_t n = ss_lineage_normalise(c->ids, c->nids);
    c->nids = 0;
    if (rc != SS_OK)
        return rc;
    if ((rc = policy_result(c, rep)) != SS_OK) {
        ss_batch_writer_reset(&c->writer);
        return rc;
    }
    if (need_ad(c, n * SS_LINEAGE_ENTRY) != SS_OK) {
        say(rep->message, sizeof rep->message, "stage %s: out of memory for a lineage of %zu entries", c->stage, n);
        ss_batch_writer_reset(&c->writer);
        return SS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        ss_lineage_put(c->ad + SS_HEADER_SIZE, i, c->ids[i]);
    return seal_output(c, seq, n * SS_LINEAGE_ENTRY, 0, rep);
}

/* msgpack_packer callback into a fixed buffer */
typedef struct {
    char data[1024];
    size_t len;
} small_buf;

static int small_write(void *data, const char *buf, size_t len)
{
    small_buf *b = data;
    if (len > sizeof b->data - b->len)
        return -1;
    memcpy(b->data + b->len, buf, len);
    b->len += len;
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

#define RECORD_AD "securestreams record "   /* as envelope.c: ss_envelope_open_record opens it */

static ss_err core_finish(core *c, const char *id, uint64_t seq, reply_t *rep)
{
    small_buf b = { .len = 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, small_write);
    msgpack_pack_map(&pk, 9);
    pack_str(&pk, "stage");
    pack_str(&pk, c->stage);
    pack_str(&pk, "name");
    pack_str(&pk, c->name);
    pack_str(&pk, "pos");
    msgpack_pack_int64(&pk, c->pos);
    const struct { const char *k; uint64_t v; } counts[] = {
        { "in", c->stats.in }, { "out", c->stats.out }, { "skipped", c->stats.skipped },
        { "refused", c->stats.refused }, { "rejected", c->stats.rejected }, { "batches", c->stats.batches },
    };
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        pack_str(&pk, counts[i].k);
        msgpack_pack_uint64(&pk, counts[i].v);
    }
    char ad[256];
    int n = snprintf(ad, sizeof ad, "%s%s", RECORD_AD, id);
    size_t adlen = n < 0 ? 0 : (size_t)n < sizeof ad ? (size_t)n : sizeof ad - 1;
    size_t sealed_len;
    ss_err rc = ss_seal(c->sealer, seq, ad, adlen, b.data, b.len, c->buf, &sealed_len);
    if (rc != SS_OK) {
        say(rep->message, sizeof rep->message, "stage %s: cannot seal the statistics record %llu: %s",
            c->stage, (unsigned long long)seq, ss_strerror(rc));
        return rc;
    }
    rep->payload_len = sealed_len;
    return SS_OK;
}

/* ---- the handle -------------------------------------------------------------- */

struct ss_enclave {
    int isolated;
    int stateful;
    char measurement[65];
    core *core;                         /* inprocess */
    reply_t rep;                        /* inprocess: the last reply */
    /* isolated */
    pid_t pid;
    int sock;                           /* our end of the doorbell */
    uint8_t *shm;                       /* CHANNEL_BYTES */
    channel_ctl *ctl;
    uint8_t *in, *out;                  /* the two areas */
    int dead;                           /* the child is gone (reaped) */
    spinner spin;
};

int ss_enclave_stateful(const ss_enclave_t *e)
{
    return e->stateful;
}

const char *ss_enclave_backend(const ss_enclave_t *e)
{
    return e->isolated ? "isolated" : "inprocess";
}

int ss_enclave_spinning(const ss_enclave_t *e)
{
    return e->spin.enabled;
}

int ss_enclave_pid(const ss_enclave_t *e)
{
    return e->isolated ? (int)e->pid : 0;
}

const char *ss_enclave_measurement(const ss_enclave_t *e)
{
    return e->measurement;
}

static int spin_allowed(void)
{
    const char *s = getenv("SS_ENCLAVE_SPIN");
    if (s && *s)
        return strcmp(s, "0") != 0;
    return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* CLOCK_MONOTONIC from the vDSO (no system call); -1 if unavailable. */
static int64_t mono_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until *counter reaches `want` or SPIN_NS pass; 1 if it did. */
static int spin_for(_Atomic uint64_t *counter, uint64_t want)
{
    int64_t until = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load(counter) >= want)
            return 1;
        cpu_relax();
        if ((i & 63) == 63) {
            int64_t now = mono_ns();
            if (now < 0)
                return 0;   /* no clock without a system call: do not spin */
            if (!until)
                until = now + SPIN_NS;
            else if (now >= until)
                return 0;
        }
    }
}

/* Wait for *counter >= want: spin, then sleep on fd (one byte per wake-up).
 * 0 once reached, -1 when the other side is gone (EOF or error). */
static int await(int fd, spinner *sp, _Atomic uint64_t *counter, uint64_t want, _Atomic uint32_t *waiting)
{
    if (sp->enabled && (sp->misses < 4 || sp->waits++ % 16 == 0)) {
        if (spin_for(counter, want)) {
            sp->misses = 0;
            return 0;
        }
        sp->misses++;
    }
    for (;;) {
        atomic_store(waiting, 1);
        if (atomic_load(counter) >= want) {
            atomic_store(waiting, 0);
            return 0;
        }
        char b;
        ssize_t n = read(fd, &b, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            atomic_store(waiting, 0);
            return -1;
        }
    }
}

/* Ring the other side if it sleeps. 0, or -1 when it is gone. */
static int ring(int fd, _Atomic uint32_t *waiting, int host)
{
    if (!atomic_load(waiting))
        return 0;
    atomic_store(waiting, 0);
    for (;;) {
        ssize_t n = host ? send(fd, "r", 1, MSG_NOSIGNAL) : write(fd, "r", 1);
        if (n == 1)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

static void reap(ss_enclave_t *e)
{
    if (e->dead || e->pid <= 0)
        return;
    while (waitpid(e->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    e->dead = 1;
}

/* One request: posted, answered. SS_ERR_CLOSED when the child is gone. */
static ss_err roundtrip(ss_enclave_t *e)
{
    if (e->dead)
        return SS_ERR_CLOSED;
    channel_ctl *ctl = e->ctl;
    uint64_t want = atomic_load(&ctl->posted) + 1;
    atomic_store(&ctl->posted, want);
    if (ring(e->sock, &ctl->enclave_waiting, 1) != 0
        || await(e->sock, &e->spin, &ctl->answered, want, &ctl->host_waiting) != 0) {
        kill(e->pid, SIGKILL);
        reap(e);
        return SS_ERR_CLOSED;
    }
    return SS_OK;
}

/* Copy the child's reply into r, checking every length against its area
 * (on a private copy: the shared one could change between check and use). */
static ss_err take_reply(ss_enclave_t *e, const reply_t *shared, const uint8_t *area, ss_ecall_result *r)
{
    reply_t copy;
    memcpy(&copy, shared, sizeof copy);
    const reply_t *rep = &copy;
    r->has_output = 0;
    r->in = rep->in;
    r->out = rep->out;
    r->skipped = rep->skipped;
    r->rejected = rep->rejected;
    r->refused = rep->refused;
    memcpy(r->message, rep->message, sizeof r->message);
    r->message[sizeof r->message - 1] = 0;
    if (rep->has_output) {
        if (rep->lineage_len > AREA_BYTES || rep->payload_len > AREA_BYTES
            || SS_HEADER_SIZE + rep->lineage_len + rep->payload_len > AREA_BYTES) {
            snprintf(r->message, sizeof r->message, "the enclave answered with impossible sizes");
            if (e->isolated) {
                kill(e->pid, SIGKILL);
                reap(e);
            }
            return SS_ERR_CLOSED;
        }
        r->has_output = 1;
        r->header = area;
        r->lineage = area + SS_HEADER_SIZE;
        r->lineage_len = rep->lineage_len;
        r->payload = area + SS_HEADER_SIZE + rep->lineage_len;
        r->payload_len = rep->payload_len;
    }
    if (rep->status < SS_OK || rep->status >= SS_ERR__COUNT)
        return SS_ERR_CLOSED;
    return (ss_err)rep->status;
}

/* The inprocess backend's output: header and lineage in c->ad, payload in c->buf. */
static ss_err inprocess_result(ss_enclave_t *e, ss_ecall_result *r, ss_err rc)
{
    reply_t *rep = &e->rep;
    rep->status = rc;
    ss_err st = take_reply(e, rep, e->core->ad, r);
    if (r->has_output)
        r->payload = e->core->buf;
    return st;
}

static void clear_result(ss_ecall_result *r)
{
    memset(r, 0, sizeof *r);
}

ss_err ss_enclave_batch(ss_enclave_t *e, const uint8_t *header, const uint8_t *lineage,
                        size_t lineage_len, const uint8_t *payload, size_t payload_len,
                        uint64_t seq, int redelivered, ss_ecall_result *r)
{
    clear_result(r);
    if (lineage_len > AREA_BYTES || payload_len > AREA_BYTES
        || SS_HEADER_SIZE + lineage_len + payload_len > AREA_BYTES) {
        snprintf(r->message, sizeof r->message, "a message of %zu bytes exceeds the %u-byte limit",
                 SS_HEADER_SIZE + lineage_len + payload_len, SS_MAX_MESSAGE);
        return SS_ERR_TOOBIG;
    }
    if (!e->isolated) {
        memset(&e->rep, 0, sizeof e->rep);
        ss_err rc = core_batch(e->core, header, lineage, lineage_len, payload, payload_len, seq,
                               redelivered, &e->rep);
        return inprocess_result(e, r, rc);
    }
    if (e->dead)
        return SS_ERR_CLOSED;
    memcpy(e->in, header, SS_HEADER_SIZE);
    if (lineage_len)
        memcpy(e->in + SS_HEADER_SIZE, lineage, lineage_len);
    if (payload_len)
        memcpy(e->in + SS_HEADER_SIZE + lineage_len, payload, payload_len);
    e->ctl->req.op = OP_BATCH;
    e->ctl->req.seq = seq;
    e->ctl->req.redelivered = redelivered != 0;
    e->ctl->req.lineage_len = lineage_len;
    e->ctl->req.payload_len = payload_len;
    ss_err rc = roundtrip(e);
    if (rc != SS_OK)
        return rc;
    return take_reply(e, &e->ctl->rep, e->out, r);
}

ss_err ss_enclave_flush(ss_enclave_t *e, uint64_t seq, ss_ecall_result *r)
{
    clear_result(r);
    if (!e->isolated) {
        memset(&e->rep, 0, sizeof e->rep);
        return inprocess_result(e, r, core_flush(e->core, seq, &e->rep));
    }
    e->ctl->req.op = OP_FLUSH;
    e->ctl->req.seq = seq;
    ss_err rc = roundtrip(e);
    if (rc != SS_OK)
        return rc;
    return take_reply(e, &e->ctl->rep, e->out, r);
}

ss_err ss_enclave_finish(ss_enclave_t *e, const char *id, uint64_t seq, const uint8_t **record,
                         size_t *len)
{
    *record = NULL;
    *len = 0;
    if (strlen(id) >= sizeof e->ctl->req.id)
        return SS_ERR_TOOBIG;
    reply_t copy, *rep;
    const uint8_t *area;
    if (!e->isolated) {
        rep = &e->rep;
        memset(rep, 0, sizeof *rep);
        rep->status = core_finish(e->core, id, seq, rep);
        area = e->core->buf;
    } else {
        snprintf(e->ctl->req.id, sizeof e->ctl->req.id, "%s", id);
        e->ctl->req.op = OP_FINISH;
        e->ctl->req.seq = seq;
        ss_err rc = roundtrip(e);
        if (rc != SS_OK)
            return rc;
        memcpy(&copy, &e->ctl->rep, sizeof copy);
        rep = &copy;
        area = e->out;
    }
    if (rep->status != SS_OK)
        return rep->status > SS_OK && rep->status < SS_ERR__COUNT ? (ss_err)rep->status : SS_ERR_CLOSED;
    if (rep->payload_len > AREA_BYTES)
        return SS_ERR_CLOSED;
    *record = area;
    *len = rep->payload_len;
    return SS_OK;
}

/* The inprocess ping: a real call into the core, not inlined away. */
static __attribute__((noinline)) ss_err core_ping(core *c, reply_t *rep)
{
    __asm__ volatile("" : : "r"(c) : "memory");
    memset(rep, 0, offsetof(reply_t, measurement));
    return SS_OK;
}

ss_err ss_enclave_ping(ss_enclave_t *e)
{
    if (!e->isolated)
        return core_ping(e->core, &e->rep);
    e->ctl->req.op = OP_PING;
    ss_err rc = roundtrip(e);
    return rc != SS_OK ? rc : (ss_err)e->ctl->rep.status;
}

void ss_enclave_destroy(ss_enclave_t **ep)
{
    if (!ep || !*ep)
        return;
    ss_enclave_t *e = *ep;
    core_destroy(&e->core);
    if (e->isolated && e->pid > 0 && !e->dead) {
        /* the stop message, then wait for the child to go (EOF) */
        e->ctl->req.op = OP_QUIT;
        atomic_store(&e->ctl->posted, atomic_load(&e->ctl->posted) + 1);
        int gone = 0;
        if (ring(e->sock, &e->ctl->enclave_waiting, 1) == 0) {
            struct pollfd p = { .fd = e->sock, .events = POLLIN };
            int64_t until = ss_now_ms() + STOP_TIMEOUT_MS;
            char b;
            while (!gone) {
                int64_t left = until - ss_now_ms();
                if (left <= 0 || poll(&p, 1, (int)left) <= 0)
                    break;
                ssize_t n = recv(e->sock, &b, 1, 0);
                gone = n == 0 || (n < 0 && errno != EINTR);
            }
        }
        if (!gone)
            kill(e->pid, SIGKILL);
        reap(e);
    }
    if (e->shm)
        munmap(e->shm, CHANNEL_BYTES);
    if (e->sock >= 0)
        close(e->sock);
    free(e);
    *ep = NULL;
}

/* ---- start-up ------------------------------------------------------------------ */

static ss_err new_inprocess(ss_enclave_t *e, const core_opts *co, char *err, size_t errlen)
{
    ss_err rc = core_prepare(co, &e->core, err, errlen);
    if (rc == SS_OK)
        rc = core_start(e->core, err, errlen);
    if (rc != SS_OK)
        return rc;
    e->stateful = e->core->stateful;
    memcpy(e->measurement, e->core->measurement, sizeof e->measurement);
    return SS_OK;
}

/* Lay the init request out in the in area. */
static ss_err put_init(ss_enclave_t *e, const core_opts *co, char *err, size_t errlen)
{
    init_wire w = {
        .heap = co->heap, .budget_ms = co->budget_ms, .producer = co->producer, .stream = co->stream,
        .fail = (uint32_t)(co->fail != 0), .pos = (uint32_t)co->pos, .is_code = (uint32_t)co->is_code,
    };
    const char *s[S_COUNT] = { co->code, co->code_name, co->key_file, co->stage, co->name };
    size_t at = sizeof w;
    for (int i = 0; i < S_COUNT; i++) {
        size_t n = s[i] ? strlen(s[i]) : 0;
        if (n + 1 > AREA_BYTES - at) {
            say(err, errlen, "the stage code is too large (%zu bytes)", n);
            return SS_ERR_TOOBIG;
        }
        w.off[i] = (uint32_t)at;
        w.len[i] = (uint32_t)n;
        if (n)
            memcpy(e->in + at, s[i], n);
        e->in[at + n] = 0;
        at += n + 1;
    }
    memcpy(e->in, &w, sizeof w);
    e->ctl->req.op = OP_INIT;
    return SS_OK;
}

extern char **environ;

static int fd_high(int fd)
{
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    close(fd);
    return h;
}

static ss_err new_isolated(ss_enclave_t *e, const ss_enclave_opts *o, const core_opts *co,
                           char *err, size_t errlen)
{
    int mem = -1, sv[2] = { -1, -1 }, ep[2] = { -1, -1 };
    ss_err rc = SS_ERR_IO;
    const char *program = o->program && *o->program ? o->program : "/proc/self/exe";

    mem = memfd_create("securestreams-enclave", MFD_CLOEXEC);
    if (mem < 0 || ftruncate(mem, (off_t)CHANNEL_BYTES) != 0) {
        int en = errno;
        say(err, errlen, "cannot create the enclave's shared memory: %s", strerror(en));
        goto out;
    }
    void *shm = mmap(NULL, CHANNEL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
    if (shm == MAP_FAILED) {
        int en = errno;
        say(err, errlen, "cannot map the enclave's shared memory: %s", strerror(en));
        goto out;
    }
    e->shm = shm;
    e->ctl = (channel_ctl *)e->shm;
    e->in = e->shm + CTL_BYTES;
    e->out = e->in + AREA_BYTES;
    e->ctl->magic = CHANNEL_MAGIC;
    e->spin.enabled = spin_allowed();
    e->ctl->spin = (uint32_t)e->spin.enabled;
    if ((rc = put_init(e, co, err, errlen)) != SS_OK)
        goto out;
    rc = SS_ERR_IO;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 || pipe2(ep, O_CLOEXEC) != 0) {
        int en = errno;
        say(err, errlen, "cannot create the enclave's doorbell: %s", strerror(en));
        goto out;
    }
    /* out of the way of 3 and 4, so the child's dup2s cannot collide */
    if ((sv[1] = fd_high(sv[1])) < 0 || (mem = fd_high(mem)) < 0) {
        int en = errno;
        say(err, errlen, "cannot move descriptors: %s", strerror(en));
        goto out;
    }
    char *const argv[] = { (char *)"securestreams", (char *)"enclave-child", (char *)"--doorbell", (char *)"3",
                           (char *)"--memory", (char *)"4", NULL };
    pid_t pid = fork();
    if (pid < 0) {
        int en = errno;
        say(err, errlen, "cannot fork the enclave: %s", strerror(en));
        goto out;
    }
    if (pid == 0) {
        /* async-signal-safe calls only until execve: the host may have threads */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(sv[1], CHILD_DOORBELL) < 0 || dup2(mem, CHILD_MEMORY) < 0) {
            int en = errno;
            (void)!write(ep[1], &en, sizeof en);
            _exit(127);
        }
        close_range(CHILD_MEMORY + 1, ~0U, CLOSE_RANGE_CLOEXEC);
        execve(program, argv, environ);
        int en = errno;
        (void)!write(ep[1], &en, sizeof en);
        _exit(127);
    }
    e->pid = pid;
    close(ep[1]);
    ep[1] = -1;
    close(sv[1]);
    sv[1] = -1;
    close(mem);
    mem = -1;
    e->sock = sv[0];
    sv[0] = -1;

    int child_errno = 0;
    ssize_t n;
    while ((n = read(ep[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR)
        ;
    if (n > 0) {
        say(err, errlen, "cannot start the enclave program %s: %s", program, strerror(child_errno));
        reap(e);
        goto out;
    }

    /* the handshake: the child answers the init request once ready */
    uint64_t want = 1;
    atomic_store(&e->ctl->posted, want);
    struct pollfd p = { .fd = e->sock, .events = POLLIN };
    int64_t until = ss_now_ms() + START_TIMEOUT_MS;
    while (atomic_load(&e->ctl->answered) < want) {
        atomic_store(&e->ctl->host_waiting, 1);
        if (atomic_load(&e->ctl->answered) >= want)
            break;
        int64_t left = until - ss_now_ms();
        int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0) {
            say(err, errlen, "the enclave did not get ready within %d s", START_TIMEOUT_MS / 1000);
            kill(e->pid, SIGKILL);
            reap(e);
            rc = SS_ERR_TIMEOUT;
            goto out;
        }
        char b;
        n = recv(e->sock, &b, 1, 0);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            int status = 0;
            while (waitpid(e->pid, &status, 0) < 0 && errno == EINTR)
                ;
            e->dead = 1;
            if (atomic_load(&e->ctl->answered) >= want && e->ctl->rep.status != SS_OK)
                break;
            if (WIFSIGNALED(status))
                say(err, errlen, "the enclave died during start-up (signal %d)", WTERMSIG(status));
            else
                say(err, errlen, "the enclave exited during start-up (status %d)", WEXITSTATUS(status));
            goto out;
        }
    }
    atomic_store(&e->ctl->host_waiting, 0);
    reply_t *rep = &e->ctl->rep;
    rep->message[sizeof rep->message - 1] = 0;
    rep->measurement[sizeof rep->measurement - 1] = 0;
    if (rep->status != SS_OK) {
        say(err, errlen, "%s", rep->message);
        rc = rep->status > SS_OK && rep->status < SS_ERR__COUNT ? (ss_err)rep->status : SS_ERR_IO;
        if (!e->dead) {
            kill(e->pid, SIGKILL);
            reap(e);
        }
        goto out;
    }
    e->stateful = rep->stateful != 0;
    memcpy(e->measurement, rep->measurement, sizeof e->measurement);
    rc = SS_OK;
out:
    if (mem >= 0)
        close(mem);
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0)
            close(sv[i]);
        if (ep[i] >= 0)
            close(ep[i]);
    }
    return rc;
}

ss_err ss_enclave_new(const ss_enclave_opts *o, ss_enclave_t **out, char *err, size_t errlen)
{
    *out = NULL;
    say(err, errlen, "%s", "");
    const char *backend = o->backend && *o->backend ? o->backend : "isolated";
    int isolated = !strcmp(backend, "isolated");
    if (!isolated && strcmp(backend, "inprocess") != 0) {
        say(err, errlen, "enclave backend \"%s\": expected \"isolated\" or \"inprocess\"%s", backend,
            !strcmp(backend, "sgx") ? " (sgx is planned, not available here)" : "");
        return SS_ERR_USAGE;
    }
    if ((o->script != NULL) == (o->code != NULL)) {
        say(err, errlen, "an enclave needs either a stage script or stage code");
        return SS_ERR_USAGE;
    }
    core_opts co = {
        .code = o->script ? o->script : o->code, .is_code = o->code != NULL,
        .code_name = o->code_name, .key_file = o->key_file, .stage = o->stage, .name = o->name,
        .fail = o->fail_on_error, .pos = o->pos, .producer = o->producer, .stream = o->stream,
    };
    ss_err rc = resolve(o, &co.heap, &co.budget_ms, err, errlen);
    if (rc != SS_OK)
        return rc;
    if (ss_crypto_init() != SS_OK) {
        say(err, errlen, "cannot start libsodium (or SS_CIPHER is wrong)");
        return SS_ERR_CRYPTO;
    }
    ss_enclave_t *e = calloc(1, sizeof *e);
    if (!e) {
        say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    e->sock = -1;
    e->isolated = isolated;
    rc = isolated ? new_isolated(e, o, &co, err, errlen) : new_inprocess(e, &co, err, errlen);
    if (rc != SS_OK) {
        ss_enclave_destroy(&e);
        return rc;
    }
    *out = e;
    return SS_OK;
}

/* ---- the child --------------------------------------------------------------- */

static void child_reply(channel_ctl *ctl, uint64_t n)
{
    atomic_store(&ctl->answered, n);
    if (ring(CHILD_DOORBELL, &ctl->host_waiting, 0) != 0)
        _exit(0);
}

static const char *init_string(const uint8_t *area, const init_wire *w, int i)
{
    if (w->off[i] < sizeof *w || w->off[i] >= AREA_BYTES || w->len[i] >= AREA_BYTES - w->off[i]
        || area[w->off[i] + w->len[i]] != 0)
        return NULL;
    return (const char *)area + w->off[i];
}

/* Publish a reply made in private memory (the host may write the shared
 * one at any time, so the enclave never reads back what it put there). */
static void child_publish(channel_ctl *ctl, const reply_t *rep)
{
    memcpy(&ctl->rep, rep, offsetof(reply_t, message));
    memcpy(ctl->rep.message, rep->message, strnlen(rep->message, sizeof rep->message - 1) + 1);
}

/* Serve one request other than OP_INIT. The request and the input are
 * copied out of the shared area first, the output and reply copied in last. */
static void child_serve(core *c, channel_ctl *ctl, const uint8_t *in, uint8_t *out)
{
    request_t req;
    memcpy(&req, &ctl->req, sizeof req);
    reply_t reply, *rep = &reply;
    memset(rep, 0, offsetof(reply_t, message) + 1);
    ss_err rc = SS_OK;
    switch (req.op) {
    case OP_BATCH: {
        if (req.lineage_len > AREA_BYTES || req.payload_len > AREA_BYTES
            || SS_HEADER_SIZE + req.lineage_len + req.payload_len > AREA_BYTES) {
            say(rep->message, sizeof rep->message, "request sizes out of bounds");
            rc = SS_ERR_TOOBIG;
            break;
        }
        size_t total = SS_HEADER_SIZE + req.lineage_len + req.payload_len;
        memcpy(c->buf, in, total);
        rc = core_batch(c, c->buf, c->buf + SS_HEADER_SIZE, req.lineage_len,
                        c->buf + SS_HEADER_SIZE + req.lineage_len, req.payload_len, req.seq,
                        req.redelivered != 0, rep);
        break;
    }
    case OP_FLUSH:
        rc = core_flush(c, req.seq, rep);
        break;
    case OP_FINISH:
        req.id[sizeof req.id - 1] = 0;
        rc = core_finish(c, req.id, req.seq, rep);
        if (rc == SS_OK)
            memcpy(out, c->buf, rep->payload_len);
        break;
    case OP_PING:
        break;
    default:
        say(rep->message, sizeof rep->message, "unknown request %u", req.op);
        rc = SS_ERR_USAGE;
        break;
    }
    if (rep->has_output) {
        memcpy(out, c->ad, SS_HEADER_SIZE + rep->lineage_len);
        memcpy(out + SS_HEADER_SIZE + rep->lineage_len, c->buf, rep->payload_len);
    }
    rep->status = rc;
    child_publish(ctl, rep);
}

static void child_usage(void)
{
    fprintf(stderr, "securestreams enclave: internal: the isolated enclave, started by a worker\n");
}

int ss_enclave_child_main(int argc, char **argv)
{
    int doorbell = -1, memory = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--doorbell"))
            doorbell = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--memory"))
            memory = atoi(argv[i + 1]);
    }
    if (doorbell != CHILD_DOORBELL || memory != CHILD_MEMORY) {
        child_usage();
        return 2;
    }
    ss_log_init("enclave-child");
    struct stat st;
    if (fstat(memory, &st) != 0 || (size_t)st.st_size < CHANNEL_BYTES) {
        child_usage();
        return 2;
    }
    uint8_t *shm = mmap(NULL, CHANNEL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, memory, 0);
    close(memory);
    if (shm == MAP_FAILED)
        return 2;
    channel_ctl *ctl = (channel_ctl *)shm;
    uint8_t *in = shm + CTL_BYTES, *out = in + AREA_BYTES;
    if (ctl->magic != CHANNEL_MAGIC || ctl->req.op != OP_INIT)
        return 2;
    spinner spin = { .enabled = ctl->spin != 0 };
    reply_t reply, *rep = &reply;
    memset(rep, 0, sizeof *rep);

    /* the request, copied out before use: what is measured is what runs */
    init_wire w;
    memcpy(&w, in, sizeof w);
    core_opts co = {
        .heap = (size_t)w.heap, .budget_ms = w.budget_ms, .producer = w.producer, .stream = w.stream,
        .fail = w.fail != 0, .pos = (int)w.pos, .is_code = w.is_code != 0,
    };
    char *strs[S_COUNT] = { NULL };
    int ok = 1;
    for (int i = 0; i < S_COUNT; i++) {
        const char *shared = init_string(in, &w, i);
        ok = ok && shared && (strs[i] = strndup(shared, w.len[i])) != NULL;
    }
    co.code = strs[S_CODE];
    co.code_name = strs[S_CODE_NAME];
    co.key_file = strs[S_KEY_FILE];
    co.stage = strs[S_STAGE];
    co.name = strs[S_NAME];
    core *c = NULL;
    ss_err rc = SS_ERR_USAGE;
    if (!ok || co.heap < MIN_HEAP || co.heap > MAX_HEAP || co.budget_ms < MIN_BUDGET || co.budget_ms > MAX_BUDGET) {
        say(rep->message, sizeof rep->message, "malformed start-up request");
        goto fail;
    }
    if (ss_crypto_init() != SS_OK) {
        say(rep->message, sizeof rep->message, "cannot start libsodium (or SS_CIPHER is wrong)");
        rc = SS_ERR_CRYPTO;
        goto fail;
    }
    /* the fixed heap first, so the buffers below come out of it too; Lua's
     * bound counts the bytes it asks for, so half as much again is kept for
     * the allocator's own chunk headers: Lua meets its bound (a clean "not
     * enough memory") before the heap is exhausted */
    if ((rc = ss_sandbox_fix_heap(co.heap + co.heap / 2 + CORE_FIXED, rep->message,
                                  sizeof rep->message)) != SS_OK)
        goto fail;
    rc = core_prepare(&co, &c, rep->message, sizeof rep->message);
    for (int i = 0; i < S_COUNT; i++) {
        if (strs[i])
            sodium_memzero(strs[i], strlen(strs[i]));
        free(strs[i]);
    }
    if (rc != SS_OK)
        goto fail;
    if ((rc = ss_sandbox_lockdown(CHILD_DOORBELL, CHILD_DOORBELL, rep->message, sizeof rep->message)) != SS_OK)
        goto fail;
    /* locked down: from here on, no system call but the doorbell */
    if ((rc = core_start(c, rep->message, sizeof rep->message)) != SS_OK)
        goto fail;
    rep->stateful = (uint32_t)c->stateful;
    memcpy(rep->measurement, c->measurement, sizeof rep->measurement);
    rep->status = SS_OK;
    child_publish(ctl, rep);
    uint64_t n = 1;
    child_reply(ctl, n);
    for (;;) {
        if (await(CHILD_DOORBELL, &spin, &ctl->posted, n + 1, &ctl->enclave_waiting) != 0)
            _exit(0);   /* the host is gone */
        n++;
        if (ctl->req.op == OP_QUIT) {
            memset(rep, 0, sizeof *rep);
            child_publish(ctl, rep);
            child_reply(ctl, n);
            _exit(0);
        }
        child_serve(c, ctl, in, out);
        child_reply(ctl, n);
    }
fail:
    rep->status = rc;
    child_publish(ctl, rep);
    child_reply(ctl, 1);
    _exit(1);
}
