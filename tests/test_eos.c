/*
 * test_eos.c - the end-of-stream map (lib/wire/eos.c).
 *
 * Part 1 checks the module alone: a round trip through writer and reader,
 * the writer's bound and its count of entries, and every malformed payload
 * the reader must refuse, each with the message that says why.
 *
 * Part 2 pins the bytes on the wire. The three encoders the module replaced
 * (the router's build_eos, the source command's publish_eos, the Lua
 * binding's codec encoding of the whole table) are kept below as reference
 * functions, copied from the code they were; each test runs the real
 * component -- the router's state machine, `securestreams source`
 * in-process, a Lua producer -- against a recorder or a fake router on
 * loopback, and compares what it sent with what the reference makes of the
 * same values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test.h"

#include "cli.h"
#include "crypto/crypto.h"
#include "lua/lstate.h"
#include "net/router_state.h"
#include "wire/codec.h"
#include "wire/envelope.h"
#include "wire/eos.h"
#include "wire/frame.h"

#include <getopt.h>
#include <lauxlib.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define STREAM 0x5353e0e0u

static void assert_bytes_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const uint8_t *x = a, *y = b;
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            fail_msg("bytes differ at offset %zu: 0x%02x != 0x%02x (lengths %zu, %zu)", i, x[i],
                     y[i], alen, blen);
    if (alen != blen)
        fail_msg("lengths differ: %zu != %zu (equal up to the shorter)", alen, blen);
}

/* ------------------------------------------------------------------------
 * Part 1: the module
 * ------------------------------------------------------------------------ */

static void id_hex_is_16_lowercase_digits(void **state)
{
    char hex[SS_EOS_ID_HEX + 1];
    ss_eos_id_hex(0xABCull, hex);
    assert_string_equal(hex, "0000000000000abc");
    ss_eos_id_hex(UINT64_MAX, hex);
    assert_string_equal(hex, "ffffffffffffffff");
}

static void round_trip(void **state)
{
    const uint64_t members[] = { 1, 0x10000000000ull, 0x8000000000000005ull };
    ss_eos_writer w;
    ss_eos_writer_init(&w, 0);
    ss_eos_writer_begin(&w, members, 3, 4);
    /* a key and a record packed by the caller */
    uint8_t rec[32];
    ss_fixbuf fb;
    msgpack_packer pk;
    ss_fixbuf_init(&fb, &pk, rec, sizeof rec);
    msgpack_pack_map(&pk, 1);
    ss_pack_kv_u64(&pk, "in", 7);
    ss_eos_writer_key(&w, 0xaa);
    ss_eos_writer_raw(&w, fb.data, fb.len);
    /* a key and a value through the writer's packer */
    ss_eos_writer_key(&w, 0xbb);
    msgpack_pack_uint64(ss_eos_writer_packer(&w), 42);
    /* one pair packed whole */
    ss_fixbuf_init(&fb, &pk, rec, sizeof rec);
    ss_pack_str(&pk, "k");
    msgpack_pack_nil(&pk);
    ss_eos_writer_pairs(&w, fb.data, fb.len, 1);
    /* one entry whose key and value were packed apart (an integer key) */
    uint8_t k9[] = { 0x09 }, vt[] = { 0xc3 };
    ss_eos_writer_entry(&w, k9, sizeof k9, vt, sizeof vt);
    const uint8_t *out;
    size_t len;
    char err[256] = "";
    assert_int_equal(ss_eos_writer_finish(&w, &out, &len, err, sizeof err), SS_OK);

    ss_eos_reader r;
    assert_int_equal(ss_eos_read(&r, out, len, err, sizeof err), SS_OK);
    assert_int_equal(ss_eos_nmembers(&r), 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(ss_eos_member(&r, i), members[i]);
    assert_non_null(r.stats);
    assert_int_equal(r.stats->size, 4);
    const char *keys[] = { "00000000000000aa", "00000000000000bb", "k" };
    for (uint32_t i = 0; i < 3; i++) {
        msgpack_object k = r.stats->ptr[i].key;
        assert_int_equal(k.type, MSGPACK_OBJECT_STR);
        assert_int_equal(k.via.str.size, strlen(keys[i]));
        assert_memory_equal(k.via.str.ptr, keys[i], strlen(keys[i]));
    }
    assert_int_equal(r.stats->ptr[0].val.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(r.stats->ptr[0].val.via.map.ptr[0].val.via.u64, 7);
    assert_int_equal(r.stats->ptr[1].val.via.u64, 42);
    assert_int_equal(r.stats->ptr[2].val.type, MSGPACK_OBJECT_NIL);
    assert_int_equal(r.stats->ptr[3].key.via.u64, 9);
    assert_int_equal(r.stats->ptr[3].val.type, MSGPACK_OBJECT_BOOLEAN);
    ss_eos_reader_cleanup(&r);
    ss_eos_writer_cleanup(&w);
}

static void writer_bound_is_hard(void **state)
{
    uint64_t members[64];
    for (size_t i = 0; i < 64; i++)
        members[i] = UINT64_MAX - i;   /* 9 bytes each */
    /* map, "members", array16 header, ids, "stats", map: the exact size */
    size_t need = 1 + 8 + 3 + 64 * 9 + 6 + 1;
    const uint8_t *out;
    size_t len;
    char err[256] = "";
    ss_eos_writer w;
    ss_eos_writer_init(&w, need);
    ss_eos_writer_begin(&w, members, 64, 0);
    assert_int_equal(ss_eos_writer_finish(&w, &out, &len, err, sizeof err), SS_OK);
    assert_int_equal(len, need);
    ss_eos_writer_cleanup(&w);

    ss_eos_writer_init(&w, need - 1);
    ss_eos_writer_begin(&w, members, 64, 0);
    assert_int_equal(ss_eos_writer_finish(&w, &out, &len, err, sizeof err), SS_ERR_TOOBIG);
    assert_null(out);
    ASSERT_CONTAINS(err, "exceeds its bound of");
    assert_true(w.buf.cap <= need - 1);   /* it never grew past the limit */
    ss_eos_writer_cleanup(&w);

    /* The default and largest bound is what a message leaves after its header. */
    ss_eos_writer_init(&w, (size_t)1 << 40);
    assert_int_equal(w.buf.limit, SS_EOS_MAX_BYTES);
    ss_eos_writer_cleanup(&w);
}

static void writer_counts_entries(void **state)
{
    const uint8_t *out;
    size_t len;
    char err[256] = "";
    ss_eos_writer w;
    ss_eos_writer_init(&w, 0);
    ss_eos_writer_begin(&w, NULL, 0, 2);
    ss_eos_writer_key(&w, 1);
    msgpack_pack_nil(ss_eos_writer_packer(&w));
    assert_int_equal(ss_eos_writer_finish(&w, &out, &len, err, sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "announced 2 statistics entries but has 1");
    ss_eos_writer_cleanup(&w);
}

/* Pack one test payload: a map of `n` entries given as alternating
 * callbacks is overkill; each case writes its bytes with msgpack-c. */
typedef void build_fn(msgpack_packer *pk);

static void b_garbage(msgpack_packer *pk)
{
    msgpack_pack_str(pk, 10);   /* a str header without its 10 bytes */
}
static void b_two_values(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    ss_pack_str(pk, "members");
    msgpack_pack_array(pk, 0);
    msgpack_pack_nil(pk);
}
static void b_array(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 0);
}
static void b_no_members(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    ss_pack_str(pk, "stats");
    msgpack_pack_map(pk, 0);
}
static void b_members_map(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    ss_pack_str(pk, "members");
    msgpack_pack_map(pk, 0);   /* what an empty Lua table used to encode to */
}
static void b_member_string(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    ss_pack_str(pk, "members");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, 1);
    ss_pack_str(pk, "2");
}
static void b_stats_string(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    ss_pack_str(pk, "members");
    msgpack_pack_array(pk, 0);
    ss_pack_str(pk, "stats");
    ss_pack_str(pk, "none");
}

/* ss_msgpack_check accepts every kind of value msgpack-c writes, and
 * refuses every proper prefix of it (truncated) and a trailing byte. */
static void msgpack_check_every_type(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    ss_pack_str(&pk, "values");
    msgpack_pack_array(&pk, 20);
    msgpack_pack_nil(&pk);
    msgpack_pack_true(&pk);
    msgpack_pack_false(&pk);
    msgpack_pack_int64(&pk, 5);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_int64(&pk, 200);
    msgpack_pack_int64(&pk, -200);
    msgpack_pack_int64(&pk, 70000);
    msgpack_pack_int64(&pk, -70000);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_int64(&pk, INT64_MIN);
    msgpack_pack_float(&pk, 1.5f);
    msgpack_pack_double(&pk, 2.5);
    char big[300];
    memset(big, 'x', sizeof big);
    msgpack_pack_str(&pk, 40);
    msgpack_pack_str_body(&pk, big, 40);
    msgpack_pack_str(&pk, sizeof big);
    msgpack_pack_str_body(&pk, big, sizeof big);
    msgpack_pack_bin(&pk, 3);
    msgpack_pack_bin_body(&pk, "abc", 3);
    msgpack_pack_ext(&pk, 1, 7);      /* fixext 1 */
    msgpack_pack_ext_body(&pk, "z", 1);
    msgpack_pack_ext(&pk, 5, 7);      /* ext 8 */
    msgpack_pack_ext_body(&pk, "zzzzz", 5);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_int64(&pk, 1);
    msgpack_pack_array(&pk, 17);      /* array 16 */
    for (int i = 0; i < 17; i++)
        msgpack_pack_int64(&pk, i);
    ss_pack_str(&pk, "end");
    msgpack_pack_map(&pk, 0);
    char why[128];
    if (ss_msgpack_check(sb.data, sb.size, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why) != 0)
        fail_msg("a valid document refused: %s", why);
    for (size_t n = 0; n < sb.size; n++)
        if (ss_msgpack_check(sb.data, n, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why) == 0)
            fail_msg("a prefix of %zu of %zu bytes accepted", n, sb.size);
    msgpack_sbuffer_write(&sb, "\xc0", 1);
    assert_int_equal(ss_msgpack_check(sb.data, sb.size, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why), -1);
    ASSERT_CONTAINS(why, "1 bytes after the value");
    /* 0xc1 is never used; nesting past the bound */
    assert_int_equal(ss_msgpack_check("\xc1", 1, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why), -1);
    ASSERT_CONTAINS(why, "starts no value");
    uint8_t deep[40];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    assert_int_equal(ss_msgpack_check(deep, sizeof deep, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why), -1);
    ASSERT_CONTAINS(why, "nested deeper than 32");
    assert_int_equal(ss_msgpack_check(deep + 10, sizeof deep - 10, SS_MSGPACK_DEPTH, UINT64_MAX, why, sizeof why), 0);
    /* a cap on the elements declared in all, whatever the bytes allow */
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 3);
    for (int i = 0; i < 3; i++)
        msgpack_pack_array(&pk, 0);
    assert_int_equal(ss_msgpack_check(sb.data, sb.size, SS_MSGPACK_DEPTH, 4, why, sizeof why), 0);
    assert_int_equal(ss_msgpack_check(sb.data, sb.size, SS_MSGPACK_DEPTH, 3, why, sizeof why), -1);
    ASSERT_CONTAINS(why, "more than 3 elements in all");
    msgpack_sbuffer_destroy(&sb);
}

/* An end of stream of one-byte values, as many as its bytes allow: refused
 * before msgpack-c builds an object for each (24 bytes apiece). */
static void reader_bounds_elements(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    ss_pack_str(&pk, "members");
    msgpack_pack_array(&pk, SS_EOS_MAX_ELEMENTS);
    for (unsigned i = 0; i < SS_EOS_MAX_ELEMENTS; i++)
        msgpack_pack_uint64(&pk, i & 0x7f);
    ss_pack_str(&pk, "stats");
    msgpack_pack_map(&pk, 0);
    ss_eos_reader r;
    char err[256];
    assert_int_equal(ss_eos_read(&r, sb.data, sb.size, err, sizeof err), SS_ERR_FORMAT);
    ASSERT_CONTAINS(err, "more than 262144 elements in all");
    ss_eos_reader_cleanup(&r);
    msgpack_sbuffer_destroy(&sb);
}

static void reader_refuses_malformed(void **state)
{
    static const struct {
        const char *what;
        build_fn *build;
        const char *msg;
    } cases[] = {
        { "truncated", b_garbage, "EOS payload is not one MessagePack value: value at byte 0 runs past the end" },
        { "two values", b_two_values, "EOS payload is not one MessagePack value: 1 bytes after the value" },
        { "an array", b_array, "EOS payload is not a map" },
        { "no members", b_no_members, "EOS payload has no members array" },
        { "members a map", b_members_map, "EOS payload has no members array" },
        { "a member string", b_member_string, "EOS members are not all integer ids" },
        { "stats a string", b_stats_string, "EOS stats is not a map" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        ss_fixbuf fb;
        msgpack_packer pk;
        ss_fixbuf_init(&fb, &pk, buf, sizeof buf);
        cases[i].build(&pk);
        assert_false(fb.over);
        char err[256] = "";
        ss_eos_reader r;
        ss_err e = ss_eos_read(&r, fb.data, fb.len, err, sizeof err);
        ss_eos_reader_cleanup(&r);
        if (e != SS_ERR_FORMAT || strcmp(err, cases[i].msg) != 0)
            fail_msg("%s: got %s \"%s\", expected \"%s\"", cases[i].what, ss_strerror(e), err,
                     cases[i].msg);
    }
    /* A bomb: a few bytes whose nested arrays declare 2^32 - 1 elements each,
     * which msgpack-c would allocate for before reading them. */
    {
        uint8_t bomb[150];
        size_t n = 0;
        bomb[n++] = 0x81;               /* { members = [[[...]]] } */
        bomb[n++] = 0xa7;
        memcpy(bomb + n, "members", 7);
        n += 7;
        while (n + 5 <= sizeof bomb) {
            bomb[n++] = 0xdd;
            memset(bomb + n, 0xff, 4);
            n += 4;
        }
        char why[256] = "";
        ss_eos_reader br;
        assert_int_equal(ss_eos_read(&br, bomb, n, why, sizeof why), SS_ERR_FORMAT);
        ss_eos_reader_cleanup(&br);
        ASSERT_CONTAINS(why, "declare more elements than there are bytes");
    }
    /* Larger than any message could carry: refused before it is parsed. */
    char err[256] = "";
    ss_eos_reader r;
    static const uint8_t one[1] = { 0x80 };
    assert_int_equal(ss_eos_read(&r, one, (size_t)SS_EOS_MAX_BYTES + 1, err, sizeof err),
                     SS_ERR_TOOBIG);
    ASSERT_CONTAINS(err, "bytes exceeds the");
    ss_eos_reader_cleanup(&r);
}

static void reader_accepts_nil_stats_and_signed_ids(void **state)
{
    uint8_t buf[64];
    ss_fixbuf fb;
    msgpack_packer pk;
    ss_fixbuf_init(&fb, &pk, buf, sizeof buf);
    msgpack_pack_map(&pk, 3);
    ss_pack_str(&pk, "other");   /* ignored */
    msgpack_pack_true(&pk);
    ss_pack_str(&pk, "members");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int64(&pk, -2);   /* a Lua integer for 2^64 - 2 */
    msgpack_pack_uint64(&pk, 9);
    ss_pack_str(&pk, "stats");
    msgpack_pack_nil(&pk);
    char err[256] = "";
    ss_eos_reader r;
    assert_int_equal(ss_eos_read(&r, fb.data, fb.len, err, sizeof err), SS_OK);
    assert_int_equal(ss_eos_nmembers(&r), 2);
    assert_int_equal(ss_eos_member(&r, 0), UINT64_MAX - 1);
    assert_int_equal(ss_eos_member(&r, 1), 9);
    assert_null(r.stats);
    ss_eos_reader_cleanup(&r);
}

/* ------------------------------------------------------------------------
 * Part 2: the bytes on the wire
 * ------------------------------------------------------------------------ */

static void ref_pack_str(msgpack_packer *pk, const char *str)
{
    size_t n = strlen(str);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, str, n);
}

static void ref_pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    ref_pack_str(pk, k);
    msgpack_pack_uint64(pk, v);
}

/* Reference: the router's build_eos before this module (members = the live
 * consumers sorted, stats = the merged pairs). */
static void ref_router_eos(msgpack_sbuffer *sb, const uint64_t *ids, size_t n,
                           const void *stats, size_t stats_len, size_t nkeys)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    ref_pack_str(&pk, "members");
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint64(&pk, ids[i]);
    ref_pack_str(&pk, "stats");
    msgpack_pack_map(&pk, nkeys);
    if (stats_len)
        msgpack_sbuffer_write(sb, stats, stats_len);
}

typedef struct {
    uint64_t id, lines, records, skipped, sent, lineage_source, first_seq, n;
    double t0;
    const char *name;
    const uint8_t *sealed;   /* NULL: plain */
    size_t slen;
} source_vals;

/* Reference: the statistics record of the source command's publish_eos. */
static void ref_source_record(msgpack_sbuffer *rec, const source_vals *v)
{
    msgpack_packer rk;
    msgpack_sbuffer_init(rec);
    msgpack_packer_init(&rk, rec, msgpack_sbuffer_write);
    msgpack_pack_map(&rk, 12);
    ref_pack_str(&rk, "stage");
    ref_pack_str(&rk, "source");
    ref_pack_str(&rk, "name");
    ref_pack_str(&rk, v->name);
    ref_pack_kv_u64(&rk, "pos", 0);
    ref_pack_kv_u64(&rk, "in", v->lines);
    ref_pack_kv_u64(&rk, "out", v->records);
    ref_pack_kv_u64(&rk, "skipped", v->skipped);
    ref_pack_kv_u64(&rk, "refused", 0);
    ref_pack_kv_u64(&rk, "rejected", 0);
    ref_pack_kv_u64(&rk, "batches", v->sent);
    ref_pack_kv_u64(&rk, "lineage_source", v->lineage_source);
    ref_pack_kv_u64(&rk, "first_seq", v->first_seq);
    ref_pack_str(&rk, "t0");
    msgpack_pack_double(&rk, v->t0);
}

/* Reference: the source command's publish_eos payload. */
static void ref_source_eos(msgpack_sbuffer *sb, const source_vals *v)
{
    msgpack_sbuffer rec;
    msgpack_packer pk;
    char hex[24];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)v->id);
    ref_source_record(&rec, v);
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    ref_pack_str(&pk, "members");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, v->id);
    ref_pack_str(&pk, "stats");
    msgpack_pack_map(&pk, 1);
    ref_pack_str(&pk, hex);
    if (v->sealed) {
        msgpack_pack_map(&pk, 2);
        ref_pack_str(&pk, "sealed");
        msgpack_pack_bin(&pk, v->slen);
        msgpack_pack_bin_body(&pk, v->sealed, v->slen);
        ref_pack_kv_u64(&pk, "n", v->n);
    } else {
        msgpack_sbuffer_write(sb, rec.data, rec.size);
    }
    msgpack_sbuffer_destroy(&rec);
}

/* ---- the router: its state machine with a recorder ---- */

typedef struct {
    uint8_t *payload;   /* of the last EOS delivered */
    size_t plen;
    ss_header_t hdr;
} rec_t;

static int rec_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                    const ss_link_t *link, zmq_msg_t *stream)
{
    rec_t *r = arg;
    ss_header_t h;
    if (!stream || link->kind != SS_LINK_DELIVER
        || ss_header_decode(zmq_msg_data(&stream[0]), zmq_msg_size(&stream[0]), &h) != SS_OK
        || h.type != SS_MSG_EOS)
        return 0;
    free(r->payload);
    r->hdr = h;
    r->plen = zmq_msg_size(&stream[2]);
    r->payload = malloc(r->plen);
    assert_non_null(r->payload);
    memcpy(r->payload, zmq_msg_data(&stream[2]), r->plen);
    return 0;
}

static void st_input(ss_router_state_t *s, int side, uint64_t peer, const void *const *frames,
                     const size_t *lens, size_t n)
{
    zmq_msg_t parts[4];
    uint8_t ident[SS_ROUTING_ID_SIZE];
    ident[0] = SS_ROUTING_ID_PREFIX;
    ss_put_u64(ident + 1, peer);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(zmq_msg_init_size(&parts[i], lens[i]), 0);
        if (lens[i])
            memcpy(zmq_msg_data(&parts[i]), frames[i], lens[i]);
    }
    ss_router_state_input(s, side, ident, sizeof ident, parts, n, 1000);
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
}

static void st_link(ss_router_state_t *s, int side, uint64_t peer, uint8_t kind, uint32_t n,
                    uint64_t tag)
{
    uint8_t lb[SS_LINK_SIZE];
    ss_link_encode(&(ss_link_t){ kind, 0, n, tag }, lb);
    const void *frames[] = { lb };
    size_t lens[] = { sizeof lb };
    st_input(s, side, peer, frames, lens, 1);
}

static void st_eos(ss_router_state_t *s, uint64_t prod, const void *payload, size_t plen,
                   uint32_t count)
{
    uint8_t lb[SS_LINK_SIZE], hb[SS_HEADER_SIZE];
    ss_link_encode(&(ss_link_t){ SS_LINK_PUBLISH, 0, 0, 0 }, lb);
    ss_header_encode(&(ss_header_t){ SS_MSG_EOS, 0, STREAM, prod, 0, count, 0 }, hb);
    const void *frames[] = { lb, hb, "", payload };
    size_t lens[] = { sizeof lb, sizeof hb, 0, plen };
    st_input(s, SS_SIDE_FRONTEND, prod, frames, lens, 4);
}

static void router_bytes_unchanged(void **state)
{
    rec_t rec = { 0 };
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.stream = STREAM;
    ss_router_state_t *s;
    assert_int_equal(ss_router_state_new(&o, 0x5e1f, rec_send, &rec, &s), SS_OK);
    const uint64_t c1 = 0x7000000000000001ull, c2 = 0x300, p1 = 0x11, p2 = 0x22;
    st_link(s, SS_SIDE_BACKEND, c1, SS_LINK_JOIN, SS_ROLE_CONSUMER, c1);
    st_link(s, SS_SIDE_BACKEND, c2, SS_LINK_JOIN, SS_ROLE_CONSUMER, c2);
    st_link(s, SS_SIDE_BACKEND, c1, SS_LINK_CREDIT, 4, 0);
    st_link(s, SS_SIDE_BACKEND, c2, SS_LINK_CREDIT, 4, 0);
    st_link(s, SS_SIDE_FRONTEND, p1, SS_LINK_JOIN, SS_ROLE_PRODUCER, p1);
    st_link(s, SS_SIDE_FRONTEND, p2, SS_LINK_JOIN, SS_ROLE_PRODUCER, p2);

    /* Two producers' EOS: stats with a hex key, an integer key, one key both
     * carry (the first wins) and a nested record. */
    msgpack_sbuffer a, b, pairs;
    msgpack_packer pk;
    size_t nkeys = 0;
    msgpack_sbuffer_init(&pairs);
    for (int which = 0; which < 2; which++) {
        msgpack_sbuffer *sb = which ? &b : &a;
        msgpack_sbuffer_init(sb);
        msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 2);
        ref_pack_str(&pk, "members");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint64(&pk, p1);
        msgpack_pack_uint64(&pk, p2);
        ref_pack_str(&pk, "stats");
        msgpack_pack_map(&pk, 2);
        ref_pack_str(&pk, which ? "0000000000000022" : "0000000000000011");
        msgpack_pack_map(&pk, 2);
        ref_pack_kv_u64(&pk, "in", which ? 5 : 6);
        ref_pack_str(&pk, "t0");
        msgpack_pack_double(&pk, 1.25);
        msgpack_pack_uint64(&pk, 77);   /* shared: an integer key */
        msgpack_pack_array(&pk, 1);
        msgpack_pack_uint64(&pk, which);
    }
    /* What the router stores, in order: 11's record, 77 -> [0], 22's record. */
    msgpack_packer_init(&pk, &pairs, msgpack_sbuffer_write);
    ref_pack_str(&pk, "0000000000000011");
    msgpack_pack_map(&pk, 2);
    ref_pack_kv_u64(&pk, "in", 6);
    ref_pack_str(&pk, "t0");
    msgpack_pack_double(&pk, 1.25);
    msgpack_pack_uint64(&pk, 77);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 0);
    ref_pack_str(&pk, "0000000000000022");
    msgpack_pack_map(&pk, 2);
    ref_pack_kv_u64(&pk, "in", 5);
    ref_pack_str(&pk, "t0");
    msgpack_pack_double(&pk, 1.25);
    nkeys = 3;

    st_eos(s, p1, a.data, a.size, 2);
    assert_null(rec.payload);   /* p2 has not finished */
    st_eos(s, p2, b.data, b.size, 2);
    assert_non_null(rec.payload);
    assert_int_equal(rec.hdr.count, 2);
    assert_int_equal(rec.hdr.producer, 0x5e1f);

    const uint64_t sorted[] = { c2, c1 };
    msgpack_sbuffer want;
    ref_router_eos(&want, sorted, 2, pairs.data, pairs.size, nkeys);
    assert_bytes_equal(rec.payload, rec.plen, want.data, want.size);

    msgpack_sbuffer_destroy(&want);
    msgpack_sbuffer_destroy(&pairs);
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
    free(rec.payload);
    ss_router_state_destroy(&s);
}

/* ---- a fake router on loopback that welcomes, receipts and records ---- */

typedef struct {
    void *zctx, *sock;
    char endpoint[256];
    pthread_t th;
    volatile int stop;
    uint8_t *eos;        /* payload of the EOS received */
    size_t eos_len;
    ss_header_t eos_hdr;
    int neos;
} fake_t;

static void *fake_run(void *arg)
{
    fake_t *f = arg;
    zmq_msg_t part[6];
    for (int i = 0; i < 6; i++)
        zmq_msg_init(&part[i]);
    while (!f->stop) {
        zmq_pollitem_t it = { f->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t *m = &part[n < 5 ? n : 5];
            if (zmq_msg_recv(m, f->sock, 0) < 0)
                return NULL;
            more = zmq_msg_more(m);
            if (n < 5)
                n++;
        }
        ss_link_t l;
        if (n < 2 || ss_link_decode(zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), &l) != SS_OK)
            continue;
        uint8_t out[SS_LINK_SIZE];
        if (l.kind == SS_LINK_JOIN)
            ss_link_encode(&(ss_link_t){ SS_LINK_WELCOME, 0, 0, 0xfa4e }, out);
        else if (l.kind == SS_LINK_PUBLISH)
            ss_link_encode(&(ss_link_t){ SS_LINK_RECEIPT, 0, 0, l.tag }, out);
        else
            continue;
        if (l.kind == SS_LINK_PUBLISH && n == 5) {
            ss_header_t h;
            if (ss_header_decode(zmq_msg_data(&part[2]), zmq_msg_size(&part[2]), &h) == SS_OK
                && h.type == SS_MSG_EOS) {
                free(f->eos);
                f->eos_len = zmq_msg_size(&part[4]);
                f->eos = malloc(f->eos_len + 1);
                memcpy(f->eos, zmq_msg_data(&part[4]), f->eos_len);
                f->eos_hdr = h;
                f->neos++;
            }
        }
        zmq_send(f->sock, zmq_msg_data(&part[0]), zmq_msg_size(&part[0]), ZMQ_SNDMORE);
        zmq_send(f->sock, out, sizeof out, 0);
    }
    for (int i = 0; i < 6; i++)
        zmq_msg_close(&part[i]);
    return NULL;
}

static void fake_start(fake_t *f)
{
    memset(f, 0, sizeof *f);
    f->zctx = zmq_ctx_new();
    assert_non_null(f->zctx);
    f->sock = zmq_socket(f->zctx, ZMQ_ROUTER);
    assert_non_null(f->sock);
    int linger = 0;
    zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(f->sock, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(f->sock, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
    assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
}

static void fake_stop(fake_t *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    zmq_close(f->sock);
    zmq_ctx_term(f->zctx);
}

/* The value of `key` in a msgpack map object, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        msgpack_object k = map->via.map.ptr[i].key;
        if (k.type == MSGPACK_OBJECT_STR && k.via.str.size == strlen(key)
            && memcmp(k.via.str.ptr, key, k.via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* ---- the source command ---- */

static void run_source(fake_t *f, const char *input, const char *keyfile)
{
    const char *argv[12];
    int argc = 0;
    argv[argc++] = "source";
    argv[argc++] = "--to";
    argv[argc++] = f->endpoint;
    argv[argc++] = "--input";
    argv[argc++] = input;
    argv[argc++] = "--name";
    argv[argc++] = "eos-source";
    argv[argc++] = "--stream";
    argv[argc++] = "0x5353e0e0";
    if (keyfile) {
        argv[argc++] = "--key";
        argv[argc++] = keyfile;
    }
    argv[argc] = NULL;
    optind = 0;
    assert_int_equal(ss_cmd_source(argc, (char **)argv), SS_EXIT_OK);
}

static void source_bytes_unchanged(void **state)
{
    char dir[] = "/tmp/ss-eos-XXXXXX", input[64], keyfile[64];
    assert_non_null(mkdtemp(dir));
    snprintf(input, sizeof input, "%s/in.csv", dir);
    snprintf(keyfile, sizeof keyfile, "%s/data.key", dir);
    FILE *fp = fopen(input, "w");
    assert_non_null(fp);
    fputs("a,b\n1,2\n\n3,4\n5,6\n", fp);
    fclose(fp);
    ss_key_t key;
    char err[256];
    assert_int_equal(ss_crypto_init(), SS_OK);
    ss_key_generate(&key);
    assert_int_equal(ss_key_save(&key, keyfile, err, sizeof err), SS_OK);

    for (int sealed = 0; sealed < 2; sealed++) {
        fake_t f;
        fake_start(&f);
        run_source(&f, input, sealed ? keyfile : NULL);
        fake_stop(&f);
        assert_int_equal(f.neos, 1);

        /* The values only the run knows: its id, t0, and (sealed) the record. */
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        assert_int_equal(msgpack_unpack_next(&u, (const char *)f.eos, f.eos_len, NULL),
                         MSGPACK_UNPACK_SUCCESS);
        source_vals v = { .id = f.eos_hdr.producer, .lines = 5, .records = 3, .skipped = 1,
                          .sent = 2, .first_seq = 0, .name = "eos-source" };
        v.lineage_source = v.id;
        char hex[SS_EOS_ID_HEX + 1];
        ss_eos_id_hex(v.id, hex);
        const msgpack_object *rec = map_get(map_get(&u.data, "stats"), hex);
        assert_non_null(rec);
        if (sealed) {
            const msgpack_object *so = map_get(rec, "sealed"), *no = map_get(rec, "n");
            assert_non_null(so);
            assert_non_null(no);
            assert_int_equal(so->type, MSGPACK_OBJECT_BIN);
            v.sealed = (const uint8_t *)so->via.bin.ptr;
            v.slen = so->via.bin.size;
            v.n = no->via.u64;
            assert_int_equal(v.n, 2);              /* after batches 0 and 1 */
            assert_int_equal(f.eos_hdr.seq, 3);    /* the record took seq 2 */
            /* The sealed record opens to the reference record's bytes. */
            ss_envelope_t *env;
            const uint8_t *plain;
            size_t plen;
            ss_maker maker;
            assert_int_equal(ss_envelope_new(&key, NULL, &env), SS_OK);
            assert_int_equal(ss_envelope_open_record(env, v.n, hex, v.sealed, v.slen, &plain, &plen,
                                                     &maker, err, sizeof err), SS_OK);
            assert_int_equal(maker.role, SS_MAKER_SOURCE);   /* the source's own, at 0 */
            assert_int_equal(maker.pos, 0);
            msgpack_unpacked ru;
            msgpack_unpacked_init(&ru);
            assert_int_equal(msgpack_unpack_next(&ru, (const char *)plain, plen, NULL),
                             MSGPACK_UNPACK_SUCCESS);
            v.t0 = map_get(&ru.data, "t0")->via.f64;
            msgpack_sbuffer want_rec;
            ref_source_record(&want_rec, &v);
            assert_bytes_equal(plain, plen, want_rec.data, want_rec.size);
            msgpack_sbuffer_destroy(&want_rec);
            msgpack_unpacked_destroy(&ru);
            ss_envelope_destroy(&env);
        } else {
            v.t0 = map_get(rec, "t0")->via.f64;
            assert_int_equal(f.eos_hdr.seq, 2);
        }
        assert_int_equal(f.eos_hdr.count, 1);
        msgpack_sbuffer want;
        ref_source_eos(&want, &v);
        assert_bytes_equal(f.eos, f.eos_len, want.data, want.size);
        msgpack_sbuffer_destroy(&want);
        msgpack_unpacked_destroy(&u);
        free(f.eos);
    }
    ss_key_cleanup(&key);
    unlink(input);
    unlink(keyfile);
    rmdir(dir);
}

/* ---- the Lua binding ---- */

/* Run `chunk` with the fake router's address as its argument; it returns
 * the table it gave publish_eos, left on the stack. */
static void run_lua(lua_State *L, const char *chunk, const char *addr)
{
    if (luaL_loadstring(L, chunk) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_pushstring(L, addr);
    if (ss_lua_pcall(L, 1, 1) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
}

/* The old encoding was the codec's of the whole table; its two entries came
 * in the table's hash order. Each value's bytes are the codec's encoding of
 * that value alone. */
static void expect_lua_bytes(lua_State *L, int t, const uint8_t *got, size_t glen)
{
    char *whole, *mem, *st;
    size_t wlen, mlen, slen;
    assert_int_equal(ss_codec_encode(L, t, &whole, &wlen), SS_OK);
    lua_getfield(L, t, "members");
    assert_int_equal(ss_codec_encode(L, -1, &mem, &mlen), SS_OK);
    lua_getfield(L, t, "stats");
    assert_int_equal(ss_codec_encode(L, -1, &st, &slen), SS_OK);
    lua_pop(L, 2);
    size_t n = 1 + 8 + mlen + 6 + slen;
    uint8_t *mfirst = malloc(n), *sfirst = malloc(n);
    assert_non_null(mfirst);
    assert_non_null(sfirst);
    mfirst[0] = sfirst[0] = 0x82;
    memcpy(mfirst + 1, "\xa7members", 8);
    memcpy(mfirst + 9, mem, mlen);
    memcpy(mfirst + 9 + mlen, "\xa5stats", 6);
    memcpy(mfirst + 15 + mlen, st, slen);
    memcpy(sfirst + 1, "\xa5stats", 6);
    memcpy(sfirst + 7, st, slen);
    memcpy(sfirst + 7 + slen, "\xa7members", 8);
    memcpy(sfirst + 15 + slen, mem, mlen);
    /* the old bytes were one of the two orders; the new are members first */
    assert_true(wlen == n && (memcmp(whole, mfirst, n) == 0 || memcmp(whole, sfirst, n) == 0));
    assert_bytes_equal(got, glen, mfirst, n);
    free(mfirst);
    free(sfirst);
    free(whole);
    free(mem);
    free(st);
}

static const char lua_eos_chunk[] =
    "local addr = ...\n"
    "local net = require 'securestreams.net'\n"
    "local p = net.producer(addr, { name = 'eos-lua', id = 0x123456789a })\n"
    "local id = 0x123456789a\n"
    "local t = { members = { id, 7, 0x7fffffffffffffff },\n"
    "            stats = { [net.hex(id)] = { stage = 'map', name = 'm', pos = 1, ['in'] = 3,\n"
    "                                        out = 2, t0 = 1.5, nested = { 1, 2, { x = 'y' } } },\n"
    "                      [net.hex(7)] = { sealed = 'a\\0\\255b', n = 4 },\n"
    "                      [42] = false } }\n"
    "p:publish_eos(t)\n"
    "p:drain()\n"
    "p:close()\n"
    "return t\n";

static void lua_bytes_unchanged(void **state)
{
    fake_t f;
    fake_start(&f);
    lua_State *L = ss_lua_new();
    assert_non_null(L);
    run_lua(L, lua_eos_chunk, f.endpoint);
    fake_stop(&f);
    assert_int_equal(f.neos, 1);
    assert_int_equal(f.eos_hdr.count, 3);
    assert_int_equal(f.eos_hdr.producer, 0x123456789aull);
    expect_lua_bytes(L, lua_gettop(L), f.eos, f.eos_len);
    ss_lua_close(L);
    free(f.eos);
}

/* Ids of 2^63 and more are Lua's negative integers: they were packed signed
 * and are now packed unsigned; both read as the same 64 bits. */
static void lua_big_ids_read_the_same(void **state)
{
    fake_t f;
    fake_start(&f);
    lua_State *L = ss_lua_new();
    assert_non_null(L);
    run_lua(L,
            "local addr = ...\n"
            "local net = require 'securestreams.net'\n"
            "local p = net.producer(addr, { name = 'eos-lua' })\n"
            "local t = { members = { -2, 5 }, stats = {} }\n"
            "p:publish_eos(t)\n"
            "p:drain()\n"
            "p:close()\n"
            "return t\n",
            f.endpoint);
    fake_stop(&f);
    char *old;
    size_t olen;
    assert_int_equal(ss_codec_encode(L, -1, &old, &olen), SS_OK);
    char err[256] = "";
    ss_eos_reader a, b;
    assert_int_equal(ss_eos_read(&a, old, olen, err, sizeof err), SS_OK);
    assert_int_equal(ss_eos_read(&b, f.eos, f.eos_len, err, sizeof err), SS_OK);
    assert_int_equal(ss_eos_nmembers(&a), 2);
    assert_int_equal(ss_eos_nmembers(&b), 2);
    for (uint32_t i = 0; i < 2; i++)
        assert_int_equal(ss_eos_member(&a, i), ss_eos_member(&b, i));
    assert_int_equal(ss_eos_member(&b, 0), UINT64_MAX - 1);
    ss_eos_reader_cleanup(&a);
    ss_eos_reader_cleanup(&b);
    free(old);
    ss_lua_close(L);
    free(f.eos);
}

/* The Lua interface refuses, with a Lua error, what is not an EOS table. */
static void lua_refuses_bad_tables(void **state)
{
    static const char *const bad[][2] = {
        { "{ stats = {} }", "members" },
        { "{ members = { 1, 'two' } }", "members" },
        { "{ members = { 1 }, stats = 'none' }", "stats" },
        { "{ members = { 1 }, stats = { x = print } }", "cannot encode end-of-stream statistics" },
    };
    fake_t f;
    fake_start(&f);
    lua_State *L = ss_lua_new();
    assert_non_null(L);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char chunk[512];
        snprintf(chunk, sizeof chunk,
                 "local addr = ...\n"
                 "local net = require 'securestreams.net'\n"
                 "local p = net.producer(addr, { name = 'eos-lua' })\n"
                 "local ok, err = pcall(p.publish_eos, p, %s)\n"
                 "p:close()\n"
                 "assert(not ok, 'accepted')\n"
                 "return err\n", bad[i][0]);
        run_lua(L, chunk, f.endpoint);
        print_message("%s -> %s\n", bad[i][0], lua_tostring(L, -1));
        ASSERT_CONTAINS(lua_tostring(L, -1), bad[i][1]);
        lua_pop(L, 1);
    }
    ss_lua_close(L);
    fake_stop(&f);
    assert_int_equal(f.neos, 0);
    free(f.eos);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(id_hex_is_16_lowercase_digits),
        cmocka_unit_test(round_trip),
        cmocka_unit_test(writer_bound_is_hard),
        cmocka_unit_test(writer_counts_entries),
        cmocka_unit_test(msgpack_check_every_type),
        cmocka_unit_test(reader_refuses_malformed),
        cmocka_unit_test(reader_bounds_elements),
        cmocka_unit_test(reader_accepts_nil_stats_and_signed_ids),
        cmocka_unit_test(router_bytes_unchanged),
        cmocka_unit_test(source_bytes_unchanged),
        cmocka_unit_test(lua_bytes_unchanged),
        cmocka_unit_test(lua_big_ids_read_the_same),
        cmocka_unit_test(lua_refuses_bad_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
