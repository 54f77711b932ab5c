/*
 * frame.c - encoding and checked decoding of link frames, stream headers and
 * lineage frames (docs/protocol.md).
 */
#include "wire/frame.h"

#include <stdlib.h>
#include <string.h>

void ss_link_encode(const ss_link_t *l, uint8_t out[SS_LINK_SIZE])
{
    out[0] = SS_WIRE_VERSION;
    out[1] = l->kind;
    ss_put_u16(out + 2, l->flags);
    ss_put_u32(out + 4, l->n);
    ss_put_u64(out + 8, l->tag);
}

ss_err ss_link_decode(const void *buf, size_t len, ss_link_t *out)
{
    const uint8_t *p = buf;
    if (len != SS_LINK_SIZE || p[0] != SS_WIRE_VERSION)
        return SS_ERR_FORMAT;
    if (p[1] < SS_LINK_JOIN || p[1] > SS_LINK_LEAVE)
        return SS_ERR_FORMAT;
    out->kind = p[1];
    out->flags = ss_get_u16(p + 2);
    out->n = ss_get_u32(p + 4);
    out->tag = ss_get_u64(p + 8);
    return SS_OK;
}

void ss_header_encode(const ss_header_t *h, uint8_t out[SS_HEADER_SIZE])
{
    out[0] = SS_WIRE_VERSION;
    out[1] = h->type;
    ss_put_u16(out + 2, h->flags);
    ss_put_u32(out + 4, h->stream);
    ss_put_u64(out + 8, h->producer);
    ss_put_u64(out + 16, h->seq);
    ss_put_u32(out + 24, h->count);
    ss_put_u32(out + 28, 0);
    ss_put_u64(out + 32, h->origin);
}

ss_err ss_header_decode(const void *buf, size_t len, ss_header_t *out)
{
    const uint8_t *p = buf;
    if (len != SS_HEADER_SIZE || p[0] != SS_WIRE_VERSION)
        return SS_ERR_FORMAT;
    if (p[1] != SS_MSG_DATA && p[1] != SS_MSG_EOS)
        return SS_ERR_FORMAT;
    if (ss_get_u32(p + 28) != 0)
        return SS_ERR_FORMAT;
    out->type = p[1];
    out->flags = ss_get_u16(p + 2);
    out->stream = ss_get_u32(p + 4);
    out->producer = ss_get_u64(p + 8);
    out->seq = ss_get_u64(p + 16);
    out->count = ss_get_u32(p + 24);
    out->origin = ss_get_u64(p + 32);
    return SS_OK;
}

ss_err ss_lineage_check(const void *buf, size_t len, size_t *count)
{
    if (len % SS_LINEAGE_ENTRY != 0)
        return SS_ERR_FORMAT;
    size_t n = len / SS_LINEAGE_ENTRY;
    for (size_t i = 1; i < n; i++) {
        ss_lineage_id a = ss_lineage_get(buf, i - 1), b = ss_lineage_get(buf, i);
        if (a.source > b.source || (a.source == b.source && a.seq >= b.seq))
            return SS_ERR_FORMAT;
    }
    *count = n;
    return SS_OK;
}

ss_lineage_id ss_lineage_get(const void *buf, size_t i)
{
    const uint8_t *p = (const uint8_t *)buf + i * SS_LINEAGE_ENTRY;
    ss_lineage_id id = { ss_get_u64(p), ss_get_u64(p + 8) };
    return id;
}

void ss_lineage_put(void *buf, size_t i, ss_lineage_id id)
{
    uint8_t *p = (uint8_t *)buf + i * SS_LINEAGE_ENTRY;
    ss_put_u64(p, id.source);
    ss_put_u64(p + 8, id.seq);
}

static int cmp_id(const void *x, const void *y)
{
    const ss_lineage_id *a = x, *b = y;
    if (a->source != b->source)
        return a->source < b->source ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return 0;
}

size_t ss_lineage_normalise(ss_lineage_id *ids, size_t n)
{
    if (n == 0)
        return 0;
    qsort(ids, n, sizeof *ids, cmp_id);
    size_t out = 1;
    for (size_t i = 1; i < n; i++)
        if (cmp_id(&ids[i], &ids[out - 1]) != 0)
            ids[out++] = ids[i];
    return out;
}

ss_err ss_stream_from_env(uint32_t *out, char *err, size_t errlen)
{
    const char *s = getenv("SS_STREAM");
    uint64_t v;
    *out = SS_DEFAULT_STREAM;
    if (!s || !*s)
        return SS_OK;
    if (ss_parse_u64(s, 0, SS_NUM_PLAIN, UINT32_MAX, &v) != 0) {
        ss_say(err, errlen, "SS_STREAM=%s: not a pipeline id (a number from 0 to %u, decimal or 0x hex)",
               s, (unsigned)UINT32_MAX);
        return SS_ERR_USAGE;
    }
    *out = (uint32_t)v;
    return SS_OK;
}
