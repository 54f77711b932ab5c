/*
 * pack.h - MessagePack helpers for the protocol's small maps (end-of-stream
 * payloads, statistics records, sealed files' trailers), on msgpack-c.
 *
 * A ss_fixbuf is a fixed-size buffer that a msgpack_packer writes into: a
 * write past its capacity fails (and sets `over`), it never grows, so a map
 * that does not fit is an error the caller sees, not a reallocation.
 *
 * A ss_growbuf is the same for maps whose size is only bounded (end-of-stream
 * statistics: kilobytes usually, megabytes at most): its heap storage
 * doubles as needed up to the hard `limit` set at init, and a write past the
 * limit fails (and sets `over`) instead of growing further.
 */
#ifndef SS_PACK_H
#define SS_PACK_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

/* msgpack-c refuses deeper nesting (MSGPACK_EMBED_STACK_SIZE) */
#define SS_MSGPACK_DEPTH 32

typedef struct {
    uint8_t *data;     /* the caller's storage */
    size_t cap;
    size_t len;        /* bytes written */
    int over;          /* a write did not fit */
} ss_fixbuf;

/* A packer writing into `storage` (cap bytes) through b. */
void ss_fixbuf_init(ss_fixbuf *b, msgpack_packer *pk, void *storage, size_t cap);
/* The msgpack_packer_write callback of a ss_fixbuf: 0, or -1 when full. */
int ss_fixbuf_write(void *data, const char *p, size_t n);

typedef struct {
    uint8_t *data;     /* heap storage (NULL until the first write) */
    size_t cap;
    size_t len;        /* bytes written */
    size_t limit;      /* hard bound on len */
    int over;          /* a write would have passed the limit */
    int nomem;         /* growing the storage failed */
} ss_growbuf;

/* An empty buffer of at most `limit` bytes, and a packer writing into it
 * (pk may be NULL when the caller appends with ss_growbuf_write only).
 * Nothing is allocated until the first write; release with
 * ss_growbuf_cleanup. */
void ss_growbuf_init(ss_growbuf *b, msgpack_packer *pk, size_t limit);
/* The msgpack_packer_write callback of a ss_growbuf: 0, or -1 when the
 * bytes would pass the limit (over) or memory is out (nomem); the buffer is
 * unchanged then. */
int ss_growbuf_write(void *data, const char *p, size_t n);
/* Frees the storage and empties the buffer (the limit stays). Accepts a
 * buffer that never allocated. */
void ss_growbuf_cleanup(ss_growbuf *b);

/* A NUL-terminated string as a MessagePack str. */
void ss_pack_str(msgpack_packer *pk, const char *s);
/* A map entry: the key as a str, then the value. */
void ss_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v);

/* Before msgpack-c decodes untrusted bytes: check that buf is exactly one
 * well-formed MessagePack value, nested at most max_depth containers deep,
 * whose containers declare at most max_elements elements in all, and never
 * more than buf has bytes (every element takes a byte at least).
 * msgpack_unpack_next allocates for the declared sizes before it reads the
 * elements (an object of 24 bytes each), so without this a few bytes
 * declaring 2^32 elements make it reserve gigabytes; after it, what it
 * allocates is at most 24 bytes times the smaller of len and max_elements
 * (strings and binaries point into buf). 0, or -1 with the reason and the
 * byte offset in why. */
int ss_msgpack_check(const void *buf, size_t len, int max_depth, uint64_t max_elements, char *why,
                     size_t whylen);

#endif
