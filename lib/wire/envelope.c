/*
 * envelope.c - whole-message sealing on top of crypto.c (see envelope.h).
 */
#include "wire/envelope.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define AD_MAX (SS_HEADER_SIZE + SS_MAX_MESSAGE)

struct ss_envelope {
    ss_key_t key;
    ss_sealer_t *sealer;   /* created on first seal: a consumer never needs one */
    ss_opener_t *opener;
    uint8_t *buf;          /* SS_MAX_MESSAGE + SS_SEAL_OVERHEAD */
    uint8_t *ad;           /* header || lineage */
    size_t adcap;
};

ss_err ss_envelope_new(const ss_key_t *k, ss_envelope_t **out)
{
    *out = NULL;
    ss_envelope_t *e = calloc(1, sizeof *e);
    if (!e)
        return SS_ERR_NOMEM;
    e->key = *k;
    e->adcap = SS_HEADER_SIZE + 64 * SS_LINEAGE_ENTRY;
    e->buf = malloc(SS_MAX_MESSAGE + SS_SEAL_OVERHEAD);
    e->ad = malloc(e->adcap);
    if (!e->buf || !e->ad || ss_opener_new(k, &e->opener) != SS_OK) {
        ss_envelope_destroy(&e);
        return SS_ERR_NOMEM;
    }
    *out = e;
    return SS_OK;
}

void ss_envelope_destroy(ss_envelope_t **ep)
{
    if (!ep || !*ep)
        return;
    ss_envelope_t *e = *ep;
    ss_sealer_destroy(&e->sealer);
    ss_opener_destroy(&e->opener);
    if (e->buf)
        sodium_memzero(e->buf, SS_MAX_MESSAGE + SS_SEAL_OVERHEAD);
    free(e->buf);
    free(e->ad);
    sodium_memzero(&e->key, sizeof e->key);
    free(e);
    *ep = NULL;
}

const ss_key_t *ss_envelope_key(const ss_envelope_t *e)
{
    return &e->key;
}

/* header || lineage into e->ad; grows only for an unusually long lineage. */
static ss_err make_ad(ss_envelope_t *e, const uint8_t *hdr, const void *lineage, size_t llen)
{
    if (SS_HEADER_SIZE + llen > e->adcap) {
        if (SS_HEADER_SIZE + llen > AD_MAX)
            return SS_ERR_TOOBIG;
        uint8_t *ad = realloc(e->ad, SS_HEADER_SIZE + llen);
        if (!ad)
            return SS_ERR_NOMEM;
        e->ad = ad;
        e->adcap = SS_HEADER_SIZE + llen;
    }
    memcpy(e->ad, hdr, SS_HEADER_SIZE);
    if (llen)
        memcpy(e->ad + SS_HEADER_SIZE, lineage, llen);
    return SS_OK;
}

static ss_err need_sealer(ss_envelope_t *e)
{
    if (e->sealer)
        return SS_OK;
    return ss_sealer_new(&e->key, ss_crypto_default_cipher(), &e->sealer);
}

ss_err ss_envelope_seal(ss_envelope_t *e, ss_header_t *h, const void *lineage, size_t lineage_len,
                        const void *payload, size_t len, const uint8_t **out, size_t *outlen)
{
    if (len > SS_MAX_MESSAGE)
        return SS_ERR_TOOBIG;
    ss_err rc = need_sealer(e);
    if (rc != SS_OK)
        return rc;
    uint8_t hdr[SS_HEADER_SIZE];
    h->flags |= SS_HDR_SEALED;
    ss_header_encode(h, hdr);
    if ((rc = make_ad(e, hdr, lineage, lineage_len)) != SS_OK)
        return rc;
    rc = ss_seal(e->sealer, h->seq, e->ad, SS_HEADER_SIZE + lineage_len, payload, len, e->buf, outlen);
    *out = e->buf;
    return rc;
}

ss_err ss_envelope_open(ss_envelope_t *e, const uint8_t *header_bytes, const void *lineage,
                        size_t lineage_len, const void *sealed, size_t len,
                        const uint8_t **out, size_t *outlen, char *why, size_t whylen)
{
    ss_header_t h;
    ss_err rc = ss_header_decode(header_bytes, SS_HEADER_SIZE, &h);
    if (rc != SS_OK) {
        snprintf(why, whylen, "malformed header");
        return rc;
    }
    if ((rc = make_ad(e, header_bytes, lineage, lineage_len)) != SS_OK) {
        snprintf(why, whylen, "lineage too long");
        return rc;
    }
    rc = ss_open(e->opener, h.seq, e->ad, SS_HEADER_SIZE + lineage_len, sealed, len, e->buf,
                 outlen, why, whylen);
    *out = e->buf;
    return rc;
}

static size_t record_ad(char *ad, size_t cap, const char *context)
{
    int n = snprintf(ad, cap, "%s%s", SS_RECORD_AD, context);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

ss_err ss_envelope_seal_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *plain, size_t len, const uint8_t **out, size_t *outlen)
{
    char ad[256];
    ss_err rc = need_sealer(e);
    if (rc != SS_OK)
        return rc;
    if (len > SS_MAX_MESSAGE)
        return SS_ERR_TOOBIG;
    rc = ss_seal(e->sealer, seq, ad, record_ad(ad, sizeof ad, context), plain, len, e->buf, outlen);
    *out = e->buf;
    return rc;
}

ss_err ss_envelope_open_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *sealed, size_t len, const uint8_t **out, size_t *outlen,
                               char *why, size_t whylen)
{
    char ad[256];
    ss_err rc = ss_open(e->opener, seq, ad, record_ad(ad, sizeof ad, context), sealed, len, e->buf,
                        outlen, why, whylen);
    *out = e->buf;
    return rc;
}
