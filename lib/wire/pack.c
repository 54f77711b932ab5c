/*
 * pack.c - MessagePack helpers for the protocol's small maps (pack.h).
 */
#include "wire/pack.h"

#include <stdlib.h>
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
