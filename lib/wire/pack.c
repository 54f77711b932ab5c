/*
 * pack.c - MessagePack helpers for the protocol's small maps (pack.h).
 */
#include "wire/pack.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

void ss_fixbuf_init(ss_fixbuf *b, msgpack_packer *pk, void *storage, size_t cap)
{
    b->data = storage;
    b->cap = cap;
    b->len = 0;
    b->over = 0;
    msgpack_packer_init(pk, b, ss_fixbuf_write);
}

int ss_fixbuf_write(void *data, const char *p, size_t n)
{
    ss_fixbuf *b = data;
    if (n > b->cap - b->len) {
        b->over = 1;
        return -1;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ss_growbuf_init(ss_growbuf *b, msgpack_packer *pk, size_t limit)
{
    memset(b, 0, sizeof *b);
    b->limit = limit;
    if (pk)
        msgpack_packer_init(pk, b, ss_growbuf_write);
}

int ss_growbuf_write(void *data, const char *p, size_t n)
{
    ss_growbuf *b = data;
    if (n == 0)
        return 0;
    if (n > b->limit - b->len) {
        b->over = 1;
        return -1;
    }
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : b->limit < 256 ? b->limit : 256;
        while (cap - b->len < n)
            cap = cap > b->limit / 2 ? b->limit : 2 * cap;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->nomem = 1;
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ss_growbuf_cleanup(ss_growbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = b->len = 0;
    b->over = b->nomem = 0;
}

void ss_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void ss_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
    ss_pack_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

/* The size of the value starting at p[0] that is not a container: its header
 * and payload bytes; sets *elements for containers (and returns the header
 * size), -1 for a byte that starts no value. */
static int64_t value_size(const uint8_t *p, size_t left, uint64_t *elements)
{
    uint8_t b = p[0];
    size_t n = 0, hdr = 1;
    *elements = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return 1;
    if ((b & 0xf0) == 0x80 || (b & 0xf0) == 0x90) {
        *elements = (uint64_t)(b & 0x0f) * ((b & 0xf0) == 0x80 ? 2 : 1);
        return 1;
    }
    if ((b & 0xe0) == 0xa0)
        return 1 + (int64_t)(b & 0x1f);
    static const uint8_t fixed[] = { [0xca - 0xca] = 4, [0xcb - 0xca] = 8, [0xcc - 0xca] = 1,
                                     [0xcd - 0xca] = 2, [0xce - 0xca] = 4, [0xcf - 0xca] = 8,
                                     [0xd0 - 0xca] = 1, [0xd1 - 0xca] = 2, [0xd2 - 0xca] = 4,
                                     [0xd3 - 0xca] = 8, [0xd4 - 0xca] = 2, [0xd5 - 0xca] = 3,
                                     [0xd6 - 0xca] = 5, [0xd7 - 0xca] = 9, [0xd8 - 0xca] = 17 };
    if (b >= 0xca && b <= 0xd8)
        return 1 + (int64_t)fixed[b - 0xca];
    /* a length of 1, 2 or 4 bytes follows */
    size_t lenbytes;
    switch (b) {
    case 0xc4: case 0xc7: case 0xd9: lenbytes = 1; break;
    case 0xc5: case 0xc8: case 0xda: case 0xdc: case 0xde: lenbytes = 2; break;
    case 0xc6: case 0xc9: case 0xdb: case 0xdd: case 0xdf: lenbytes = 4; break;
    default: return -1;   /* 0xc1: never used */
    }
    if (left < 1 + lenbytes)
        return (int64_t)(1 + lenbytes);   /* the caller finds it truncated */
    for (size_t i = 0; i < lenbytes; i++)
        n = (n << 8) | p[1 + i];
    hdr = 1 + lenbytes;
    if (b == 0xdc || b == 0xdd || b == 0xde || b == 0xdf) {
        *elements = (uint64_t)n * (b >= 0xde ? 2 : 1);
        return (int64_t)hdr;
    }
    if (b >= 0xc7 && b <= 0xc9)
        hdr += 1;   /* ext: a type byte */
    return (int64_t)(hdr + n);
}

int ss_msgpack_check(const void *buf, size_t len, int max_depth, uint64_t max_elements, char *why,
                     size_t whylen)
{
    const uint8_t *p = buf;
    uint64_t todo[65];         /* values still to read at each open level */
    uint64_t declared = 1;     /* values declared so far, the top one included */
    int depth = 0;
    size_t pos = 0;
    if (max_depth > 64)
        max_depth = 64;
    todo[0] = 1;
    while (depth >= 0) {
        if (todo[depth] == 0) {
            depth--;
            continue;
        }
        if (pos >= len) {
            snprintf(why, whylen, "truncated at byte %zu", pos);
            return -1;
        }
        uint64_t elements;
        int64_t size = value_size(p + pos, len - pos, &elements);
        if (size < 0) {
            snprintf(why, whylen, "byte 0x%02x at %zu starts no value", p[pos], pos);
            return -1;
        }
        if ((uint64_t)size > len - pos) {
            snprintf(why, whylen, "value at byte %zu runs past the end", pos);
            return -1;
        }
        todo[depth]--;
        pos += (size_t)size;
        if (elements > 0) {
            declared += elements;
            if (declared > len) {
                snprintf(why, whylen, "containers declare more elements than there are bytes "
                         "(at byte %zu)", pos - (size_t)size);
                return -1;
            }
            if (declared > max_elements) {
                snprintf(why, whylen, "containers declare more than %llu elements in all "
                         "(at byte %zu)", (unsigned long long)max_elements, pos - (size_t)size);
                return -1;
            }
            if (depth + 1 > max_depth) {
                snprintf(why, whylen, "nested deeper than %d levels", max_depth);
                return -1;
            }
            todo[++depth] = elements;
        }
    }
    if (pos != len) {
        snprintf(why, whylen, "%zu bytes after the value", len - pos);
        return -1;
    }
    return 0;
}
