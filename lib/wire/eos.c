/*
 * eos.c - the end-of-stream map (eos.h): one writer, one reader.
 *
 * The writer packs into a ss_growbuf bounded by its limit: a write that
 * would pass it fails and marks the buffer, every later write fails too, and
 * finish reports it, so a caller checks once at the end. Ids are packed with
 * msgpack_pack_uint64, whose shortest forms are those msgpack_pack_int64
 * gives the ids below 2^63 that components draw (ss_random_id), so the map a
 * Lua component used to encode through the codec, the source's and the
 * router's are the same bytes.
 *
 * The reader is msgpack-c's msgpack_unpack_next: an end of stream happens
 * once per component, so the zone of objects it builds costs nothing worth a
 * hand-written parser (codec.c has one for the hot path).
 */
#include "wire/eos.h"
#include "wire/pack.h"

#include <stdio.h>
#include <string.h>

void ss_eos_id_hex(uint64_t id, char out[SS_EOS_ID_HEX + 1])
{
    snprintf(out, SS_EOS_ID_HEX + 1, "%016llx", (unsigned long long)id);
}

/* ---- writing ---- */

void ss_eos_writer_init(ss_eos_writer *w, size_t limit)
{
    memset(w, 0, sizeof *w);
    if (limit == 0 || limit > SS_EOS_MAX_BYTES)
        limit = SS_EOS_MAX_BYTES;
    ss_growbuf_init(&w->buf, &w->pk, limit);
}

void ss_eos_writer_begin(ss_eos_writer *w, const uint64_t *members, size_t nmembers,
                         uint32_t nstats)
{
    msgpack_pack_map(&w->pk, 2);
    ss_pack_str(&w->pk, SS_EOS_MEMBERS);
    msgpack_pack_array(&w->pk, nmembers);
    for (size_t i = 0; i < nmembers; i++)
        msgpack_pack_uint64(&w->pk, members[i]);
    ss_pack_str(&w->pk, SS_EOS_STATS);
    msgpack_pack_map(&w->pk, nstats);
    w->nstats = nstats;
    w->written = 0;
}

void ss_eos_writer_key(ss_eos_writer *w, uint64_t id)
{
    char hex[SS_EOS_ID_HEX + 1];
    ss_eos_id_hex(id, hex);
    ss_pack_str(&w->pk, hex);
    w->written++;
}

void ss_eos_writer_raw(ss_eos_writer *w, const void *packed, size_t len)
{
    ss_growbuf_write(&w->buf, packed, len);
}

void ss_eos_writer_entry(ss_eos_writer *w, const void *key, size_t klen, const void *val,
                         size_t vlen)
{
    ss_growbuf_write(&w->buf, key, klen);
    ss_growbuf_write(&w->buf, val, vlen);
    w->written++;
}

void ss_eos_writer_pairs(ss_eos_writer *w, const void *packed, size_t len, uint32_t npairs)
{
    ss_growbuf_write(&w->buf, packed, len);
    w->written += npairs;
}

msgpack_packer *ss_eos_writer_packer(ss_eos_writer *w)
{
    return &w->pk;
}

ss_err ss_eos_writer_finish(ss_eos_writer *w, const uint8_t **out, size_t *len,
                            char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (w->buf.over) {
        ss_say(err, errlen, "the end-of-stream map exceeds its bound of %zu bytes", w->buf.limit);
        return SS_ERR_TOOBIG;
    }
    if (w->buf.nomem) {
        ss_say(err, errlen, "out of memory building the end-of-stream map");
        return SS_ERR_NOMEM;
    }
    if (w->written != w->nstats) {
        ss_say(err, errlen, "the end-of-stream map announced %u statistics entries but has %u",
               (unsigned)w->nstats, (unsigned)w->written);
        return SS_ERR_USAGE;
    }
    *out = w->buf.data;
    *len = w->buf.len;
    return SS_OK;
}

void ss_eos_writer_cleanup(ss_eos_writer *w)
{
    ss_growbuf_cleanup(&w->buf);
    w->nstats = w->written = 0;
}

/* ---- reading ---- */

static int is_key(msgpack_object k, const char *name)
{
    size_t n = strlen(name);
    return k.type == MSGPACK_OBJECT_STR && k.via.str.size == n && memcmp(k.via.str.ptr, name, n) == 0;
}

static int is_int(msgpack_object o)
{
    return o.type == MSGPACK_OBJECT_POSITIVE_INTEGER || o.type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

ss_err ss_eos_read(ss_eos_reader *r, const void *buf, size_t len, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    msgpack_unpacked_init(&r->u);
    if (len > SS_EOS_MAX_BYTES) {
        ss_say(err, errlen, "EOS payload of %zu bytes exceeds the %u-byte bound", len,
               (unsigned)SS_EOS_MAX_BYTES);
        return SS_ERR_TOOBIG;
    }
    size_t off = 0;
    char why[128];
    if (ss_msgpack_check(buf, len, SS_MSGPACK_DEPTH, SS_EOS_MAX_ELEMENTS, why, sizeof why) != 0) {
        ss_say(err, errlen, "EOS payload is not one MessagePack value: %s", why);
        return SS_ERR_FORMAT;
    }
    if (msgpack_unpack_next(&r->u, buf, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len) {
        ss_say(err, errlen, "EOS payload is not one MessagePack value");
        return SS_ERR_FORMAT;
    }
    const msgpack_object *top = &r->u.data;
    if (top->type != MSGPACK_OBJECT_MAP) {
        ss_say(err, errlen, "EOS payload is not a map");
        return SS_ERR_FORMAT;
    }
    const msgpack_object *members = NULL, *stats = NULL;
    for (uint32_t i = 0; i < top->via.map.size; i++) {
        if (is_key(top->via.map.ptr[i].key, SS_EOS_MEMBERS))
            members = &top->via.map.ptr[i].val;
        else if (is_key(top->via.map.ptr[i].key, SS_EOS_STATS))
            stats = &top->via.map.ptr[i].val;
    }
    if (!members || members->type != MSGPACK_OBJECT_ARRAY) {
        ss_say(err, errlen, "EOS payload has no members array");
        return SS_ERR_FORMAT;
    }
    if (stats && stats->type != MSGPACK_OBJECT_MAP && stats->type != MSGPACK_OBJECT_NIL) {
        ss_say(err, errlen, "EOS stats is not a map");
        return SS_ERR_FORMAT;
    }
    for (uint32_t i = 0; i < members->via.array.size; i++) {
        if (!is_int(members->via.array.ptr[i])) {
            ss_say(err, errlen, "EOS members are not all integer ids");
            return SS_ERR_FORMAT;
        }
    }
    r->members = members;
    r->stats = stats && stats->type == MSGPACK_OBJECT_MAP ? &stats->via.map : NULL;
    return SS_OK;
}

uint32_t ss_eos_nmembers(const ss_eos_reader *r)
{
    return r->members ? r->members->via.array.size : 0;
}

uint64_t ss_eos_member(const ss_eos_reader *r, uint32_t i)
{
    msgpack_object o = r->members->via.array.ptr[i];
    return o.type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o.via.u64 : (uint64_t)o.via.i64;
}

void ss_eos_reader_cleanup(ss_eos_reader *r)
{
    msgpack_unpacked_destroy(&r->u);
    r->members = NULL;
    r->stats = NULL;
}
