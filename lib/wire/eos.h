/*
 * eos.h - the end-of-stream map (docs/protocol.md, "Stream message"): the
 * payload of every EOS message,
 *
 *     {members = [u64...], stats = {[id in hex] = record}}
 *
 * built here for every component that sends one (the source, the Lua
 * components through securestreams.net, the router) and read here where it
 * is read (the router).
 *
 * The bytes, which every writer shares: a map of two entries, SS_EOS_MEMBERS
 * then SS_EOS_STATS (str keys); members an array of ids packed as unsigned
 * integers in their shortest form; stats a map whose entries are written as
 * the caller gives them: a key (normally the component's id as
 * SS_EOS_ID_HEX lowercase hex digits, ss_eos_writer_key) and a record, any
 * MessagePack value (a statistics map, or a sealed record in the encrypted
 * modes).
 *
 * Bounds: a map is at most SS_EOS_MAX_BYTES (what a message leaves after its
 * header), or the smaller limit given to the writer; the writer's storage
 * grows up to that limit and never past it. The reader refuses a larger
 * payload without parsing it, and one whose containers declare more than
 * SS_EOS_MAX_ELEMENTS values in all before msgpack-c builds anything, so
 * reading any end of stream costs at most about 6 MiB besides its bytes.
 */
#ifndef SS_EOS_H
#define SS_EOS_H

#include "base/common.h"
#include "wire/frame.h"
#include "wire/pack.h"

/* Values (every key, value and element) an end-of-stream map may hold: room
 * for thousands of components' statistics, each a handful of values. */
#define SS_EOS_MAX_ELEMENTS (1u << 18)

#include <msgpack.h>

/* The stats key of a component: its id as SS_EOS_ID_HEX lowercase hex
 * digits and a NUL. */
void ss_eos_id_hex(uint64_t id, char out[SS_EOS_ID_HEX + 1]);

/* ---- writing ---- */

typedef struct {
    ss_growbuf buf;      /* the map, bounded */
    msgpack_packer pk;   /* writes into buf */
    uint32_t nstats;     /* stats entries announced by begin */
    uint32_t written;    /* stats entries started since */
} ss_eos_writer;

/* An empty writer whose map may grow to `limit` bytes (0, or more than
 * SS_EOS_MAX_BYTES: SS_EOS_MAX_BYTES). Nothing is allocated yet; release
 * with ss_eos_writer_cleanup whatever happens. */
void ss_eos_writer_init(ss_eos_writer *w, size_t limit);

/* Start the map: the members (copied, in the order given) and the header of
 * a stats map of `nstats` entries, which the calls below then write. */
void ss_eos_writer_begin(ss_eos_writer *w, const uint64_t *members, size_t nmembers,
                         uint32_t nstats);

/* Start one stats entry: its key, the id in hex. Its value follows, written
 * with ss_eos_writer_raw or through ss_eos_writer_packer. */
void ss_eos_writer_key(ss_eos_writer *w, uint64_t id);

/* Append bytes that are already MessagePack: the value of the entry a key
 * started. */
void ss_eos_writer_raw(ss_eos_writer *w, const void *packed, size_t len);

/* One whole stats entry, key and value already packed (a key of any
 * MessagePack type: entries encoded from a Lua table). */
void ss_eos_writer_entry(ss_eos_writer *w, const void *key, size_t klen, const void *val,
                         size_t vlen);

/* Append `npairs` whole stats entries already packed as key, value, key,
 * value... (the router's merged statistics, or entries encoded from Lua). */
void ss_eos_writer_pairs(ss_eos_writer *w, const void *packed, size_t len, uint32_t npairs);

/* The packer that writes into the map, for a value the caller packs itself
 * after ss_eos_writer_key. Valid until ss_eos_writer_cleanup. */
msgpack_packer *ss_eos_writer_packer(ss_eos_writer *w);

/* The finished map: *out (owned by the writer, valid until cleanup) and
 * *len. Errors, with a message in err: SS_ERR_TOOBIG when the map passed the
 * writer's limit, SS_ERR_NOMEM, SS_ERR_USAGE when the entries written are
 * not the number begin announced (a caller's mistake). */
ss_err ss_eos_writer_finish(ss_eos_writer *w, const uint8_t **out, size_t *len,
                            char *err, size_t errlen);

/* Frees the storage. Accepts a writer that never wrote. */
void ss_eos_writer_cleanup(ss_eos_writer *w);

/* ---- reading ---- */

typedef struct {
    msgpack_unpacked u;                /* owns every object below */
    const msgpack_object *members;     /* an array of integers */
    const msgpack_object_map *stats;   /* NULL when absent or nil */
} ss_eos_reader;

/* Parse an EOS payload. Keys other than members and stats are ignored; an
 * id packed as a negative integer (a Lua integer of 2^63 or more) means the
 * same 64 bits. Errors, with a message in err that says what is wrong:
 * SS_ERR_TOOBIG (more than SS_EOS_MAX_BYTES), SS_ERR_FORMAT (not one
 * MessagePack value, not a map, no members array, members that are not
 * integers, stats neither a map nor nil). Call ss_eos_reader_cleanup
 * afterwards whatever the result. Strings in the objects point into `buf`:
 * keep it until then. */
ss_err ss_eos_read(ss_eos_reader *r, const void *buf, size_t len, char *err, size_t errlen);

/* The number of members, and member i (below that number). */
uint32_t ss_eos_nmembers(const ss_eos_reader *r);
uint64_t ss_eos_member(const ss_eos_reader *r, uint32_t i);

void ss_eos_reader_cleanup(ss_eos_reader *r);

#endif
