/*
 * pack.h - MessagePack helpers for the protocol's small maps (end-of-stream
 * payloads, statistics records, sealed files' trailers), on msgpack-c.
 *
 * A ss_fixbuf is a fixed-size buffer that a msgpack_packer writes into: a
 * write past its capacity fails (and sets `over`), it never grows, so a map
 * that does not fit is an error the caller sees, not a reallocation.
 */
#ifndef SS_PACK_H
#define SS_PACK_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

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

/* A NUL-terminated string as a MessagePack str. */
void ss_pack_str(msgpack_packer *pk, const char *s);
/* A map entry: the key as a str, then the value. */
void ss_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v);

#endif
