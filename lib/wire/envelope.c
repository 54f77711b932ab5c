/*
 * envelope.c - whole-message sealing on top of crypto.c (see envelope.h).
 *
 * Invariants: `self` is what every payload this envelope seals names; once
 * run_known (pos_known) is set it never changes, and every input opened
 * after that names the same run (the position before self.pos).
 */
#include "wire/envelope.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_CAP (SS_MAX_MESSAGE + SS_SEAL_OVERHEAD)
#define AD_MAX (SS_HEADER_SIZE + SS_MAX_MESSAGE)

struct ss_envelope {
    ss_key_t key;
    ss_maker self;         /* what this component seals as */
    int run_known;         /* self.run was given or adopted */
    int pos_known;         /* self.pos was given or adopted */
    int any_pos;           /* SS_ENVELOPE_ANY_POS: no position checked, none sealed */
    ss_sealer_t *sealer;   /* created on first seal: a consumer never needs one */
    ss_opener_t *opener;
    uint8_t *buf;          /* BUF_CAP bytes, touched only as far as messages go */
    size_t touched;        /* how much of buf any message may have written: wiped at the end */
    uint8_t *ad;           /* header || lineage */
    size_t adcap;
};

ss_err ss_envelope_new(const ss_key_t *k, const ss_envelope_opts *o, ss_envelope_t **out)
{
    *out = NULL;
    ss_envelope_opts dflt = { .run = NULL, .role = SS_MAKER_WORKER, .pos = -1 };
    if (!o)
        o = &dflt;
    if ((o->role != SS_MAKER_SOURCE && o->role != SS_MAKER_WORKER) || o->pos > UINT16_MAX
        || o->pos < SS_ENVELOPE_ANY_POS)
        return SS_ERR_USAGE;
    ss_envelope_t *e = calloc(1, sizeof *e);
    if (!e)
        return SS_ERR_NOMEM;
    e->key = *k;
    e->self.role = (uint8_t)o->role;
    if (o->run) {
        memcpy(e->self.run, o->run, SS_RUN_BYTES);
        e->run_known = 1;
    }
    if (o->pos >= 0) {
        e->self.pos = (uint16_t)o->pos;
        e->pos_known = 1;
    }
    e->any_pos = o->pos == SS_ENVELOPE_ANY_POS;
    e->adcap = SS_HEADER_SIZE + 64 * SS_LINEAGE_ENTRY;
    e->buf = malloc(BUF_CAP);
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
        sodium_memzero(e->buf, e->touched);   /* not all 16 MiB: pages never used stay untouched */
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

void ss_envelope_self(const ss_envelope_t *e, ss_maker *m, int *run_known, int *pos_known)
{
    *m = e->self;
    if (run_known)
        *run_known = e->run_known;
    if (pos_known)
        *pos_known = e->pos_known;
}

/* The sealer follows self once something was adopted. */
static ss_err rebind(ss_envelope_t *e)
{
    return e->sealer ? ss_sealer_bind(e->sealer, &e->self) : SS_OK;
}

ss_err ss_envelope_follow(ss_envelope_t *e, const ss_envelope_t *from)
{
    int changed = 0;
    if (!e->run_known && from->run_known) {
        memcpy(e->self.run, from->self.run, SS_RUN_BYTES);
        e->run_known = changed = 1;
    }
    if (!e->pos_known && from->pos_known && !e->any_pos) {
        e->self.pos = from->self.pos;
        e->pos_known = changed = 1;
    }
    return changed ? rebind(e) : SS_OK;
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

/* Before a seal or an open of `len` input bytes into buf: refuses what
 * cannot fit, and remembers how far buf may be written. */
static ss_err reserve(ss_envelope_t *e, size_t len)
{
    if (len > SS_MAX_MESSAGE)
        return SS_ERR_TOOBIG;
    size_t n = len + SS_SEAL_OVERHEAD;
    if (n > e->touched)
        e->touched = n;
    return SS_OK;
}

static ss_err need_sealer(ss_envelope_t *e)
{
    if (e->sealer)
        return SS_OK;
    return ss_sealer_new(&e->key, ss_crypto_default_cipher(), &e->self, &e->sealer);
}

ss_err ss_envelope_seal(ss_envelope_t *e, ss_header_t *h, const void *lineage, size_t lineage_len,
                        const void *payload, size_t len, const uint8_t **out, size_t *outlen)
{
    if (!e->run_known || !e->pos_known || e->any_pos)
        return SS_ERR_USAGE;
    ss_err rc = reserve(e, len);
    if (rc == SS_OK)
        rc = need_sealer(e);
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

/* Whether maker m may have made this component's input; if so, what this
 * component did not know about its run is adopted from it. */
static ss_err check_maker(ss_envelope_t *e, const ss_maker *m, char *why, size_t whylen)
{
    char got[2 * SS_RUN_BYTES + 1], want[2 * SS_RUN_BYTES + 1];
    if (m->role == SS_MAKER_FILE) {
        ss_say(why, whylen, "a sealed file's record, not a message of this run");
        return SS_ERR_CRYPTO;
    }
    if ((m->role == SS_MAKER_SOURCE) != (m->pos == 0)) {
        ss_say(why, whylen, "made by a %s at stage position %u (only a source is at position 0)",
               ss_maker_role_name(m->role), (unsigned)m->pos);
        return SS_ERR_CRYPTO;
    }
    if (e->run_known && sodium_memcmp(m->run, e->self.run, SS_RUN_BYTES) != 0) {
        ss_run_hex(m->run, got);
        ss_run_hex(e->self.run, want);
        ss_say(why, whylen, "batch of another run (run %s, this run is %s)", got, want);
        return SS_ERR_CRYPTO;
    }
    if (e->any_pos) {
        if (!e->run_known)
            memcpy(e->self.run, m->run, SS_RUN_BYTES);
        e->run_known = 1;
        return SS_OK;
    }
    if (e->pos_known && (e->self.pos == 0 || m->pos != e->self.pos - 1)) {
        if (e->self.pos == 0)
            ss_say(why, whylen, "made at stage position %u; a source takes no input",
                   (unsigned)m->pos);
        else
            ss_say(why, whylen, "made at stage position %u, expected %u", (unsigned)m->pos,
                   (unsigned)e->self.pos - 1);
        return SS_ERR_CRYPTO;
    }
    if (e->run_known && e->pos_known)
        return SS_OK;
    if (!e->pos_known && m->pos == UINT16_MAX) {
        ss_say(why, whylen, "made at stage position %u: no position follows it", (unsigned)m->pos);
        return SS_ERR_CRYPTO;
    }
    if (!e->run_known)
        memcpy(e->self.run, m->run, SS_RUN_BYTES);
    if (!e->pos_known)
        e->self.pos = (uint16_t)(m->pos + 1);
    e->run_known = e->pos_known = 1;
    return rebind(e);
}

ss_err ss_envelope_open(ss_envelope_t *e, const uint8_t *header_bytes, const void *lineage,
                        size_t lineage_len, const void *sealed, size_t len,
                        const uint8_t **out, size_t *outlen, ss_open_info *info, char *why,
                        size_t whylen)
{
    ss_open_info scratch;
    if (!info)
        info = &scratch;
    memset(info, 0, sizeof *info);
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
    if ((rc = reserve(e, len)) != SS_OK) {
        snprintf(why, whylen, "%zu bytes, more than a message may hold", len);
        return rc;
    }
    *out = e->buf;
    rc = ss_open(e->opener, h.seq, e->ad, SS_HEADER_SIZE + lineage_len, sealed, len, e->buf,
                 outlen, &info->maker, why, whylen);
    if (rc != SS_OK) {
        info->foreign = ss_open_foreign(e->opener, sealed, len, info->key_id);
        return rc;
    }
    info->authentic = 1;
    if ((rc = check_maker(e, &info->maker, why, whylen)) != SS_OK) {
        sodium_memzero(e->buf, *outlen);
        *outlen = 0;
    }
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
    ss_err rc = reserve(e, len);
    if (rc == SS_OK)
        rc = need_sealer(e);
    if (rc != SS_OK)
        return rc;
    rc = ss_seal(e->sealer, seq, ad, record_ad(ad, sizeof ad, context), plain, len, e->buf, outlen);
    *out = e->buf;
    return rc;
}

ss_err ss_envelope_open_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *sealed, size_t len, const uint8_t **out, size_t *outlen,
                               ss_maker *maker, char *why, size_t whylen)
{
    char ad[256];
    ss_maker m;
    if (reserve(e, len) != SS_OK) {
        ss_say(why, whylen, "%zu bytes, more than a record may hold", len);
        return SS_ERR_TOOBIG;
    }
    ss_err rc = ss_open(e->opener, seq, ad, record_ad(ad, sizeof ad, context), sealed, len, e->buf,
                        outlen, &m, why, whylen);
    *out = e->buf;
    if (rc == SS_OK && m.role == SS_MAKER_FILE) {
        ss_say(why, whylen, "a sealed file's record, not a statistics record of a run");
        sodium_memzero(e->buf, *outlen);
        return SS_ERR_CRYPTO;
    }
    if (rc == SS_OK && maker)
        *maker = m;
    return rc;
}

/* ---- run ids ---------------------------------------------------------------- */

void ss_run_new(uint8_t run[SS_RUN_BYTES])
{
    randombytes_buf(run, SS_RUN_BYTES);
}

void ss_run_hex(const uint8_t run[SS_RUN_BYTES], char out[2 * SS_RUN_BYTES + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SS_RUN_BYTES; i++) {
        out[2 * i] = digits[run[i] >> 4];
        out[2 * i + 1] = digits[run[i] & 15];
    }
    out[2 * SS_RUN_BYTES] = 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

ss_err ss_run_parse(const char *hex, uint8_t run[SS_RUN_BYTES])
{
    if (strlen(hex) != 2 * SS_RUN_BYTES)
        return SS_ERR_USAGE;
    for (int i = 0; i < SS_RUN_BYTES; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return SS_ERR_USAGE;
        run[i] = (uint8_t)(hi << 4 | lo);
    }
    return SS_OK;
}

ss_err ss_run_from_env(uint8_t run[SS_RUN_BYTES], int *given, char *err, size_t errlen)
{
    const char *v = getenv("SS_RUN");
    *given = 0;
    if (!v || !*v)
        return SS_OK;
    if (ss_run_parse(v, run) != SS_OK) {
        ss_say(err, errlen, "SS_RUN=%.40s%s: a run id is 32 hex digits", v, strlen(v) > 40 ? "..." : "");
        return SS_ERR_USAGE;
    }
    *given = 1;
    return SS_OK;
}
