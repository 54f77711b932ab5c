/*
 * sealed.c - sealed files: data at rest in the stream's own format, so a
 * source streams it as it is, never decrypting it (docs/crypto.md).
 *
 * Invariants: a sealed file is read in bounded memory (one record, at most
 * 8 + SS_MAX_MESSAGE bytes), its records must follow each other without a
 * gap or a splice and end in a sealed EOS whose counts match, and a file is
 * written through a temporary file so OUT is complete or absent.
 */
#include "crypto/sealed.h"
#include "base/file.h"
#include "wire/codec.h"
#include "wire/pack.h"

#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define READ_BUF (1u << 20)           /* initial read buffer of encrypt and decrypt */
#define READER_BUF0 (64u << 10)       /* a reader's first buffer, doubled for larger records */
#define RECORD_LENGTHS 8              /* u32 lineage length | u32 payload length */
#define RECORD_MAX (RECORD_LENGTHS + SS_MAX_MESSAGE)
#define EOS_PAYLOAD_MAX 128           /* the sealed file's EOS map is ~60 bytes */

/* ---- sealed files: reading -------------------------------------------------- */

struct ss_sealed_file {
    int fd;
    char *path;                 /* for messages */
    uint8_t *buf;               /* read buffer; [pos, end) not consumed yet */
    size_t cap, pos, end;
    uint64_t off;               /* file offset of buf[pos] */
    ss_opener_t *opener;        /* opens the EOS (and, for decrypt, the batches) */
    uint8_t key_id[SS_KEY_ID_BYTES];
    ss_cipher cipher;
    uint64_t id;                /* file id: producer and lineage source */
    uint32_t stream;
    int header_lines;
    uint64_t next_seq;          /* seq the next record must carry */
    uint64_t records;           /* lines in the DATA records read so far */
    int done;                   /* the EOS was read and verified */
    int final_newline;          /* from the EOS */
};

/* Make `need` bytes available at buf + pos (need <= RECORD_MAX), reading as
 * much as fits; *have is less than need only at the end of the file. */
static ss_err fill(ss_sealed_file_t *f, size_t need, size_t *have, char *err, size_t errlen)
{
    if (f->end - f->pos < need && need > f->cap - f->pos) {
        memmove(f->buf, f->buf + f->pos, f->end - f->pos);
        f->end -= f->pos;
        f->pos = 0;
        if (need > f->cap) {
            size_t cap = f->cap;
            while (cap < need)
                cap *= 2;
            if (cap > RECORD_MAX)
                cap = RECORD_MAX;
            uint8_t *b = realloc(f->buf, cap);
            if (!b) {
                ss_say(err, errlen, "%s: out of memory for a record of %zu bytes", f->path, need);
                return SS_ERR_NOMEM;
            }
            f->buf = b;
            f->cap = cap;
        }
    }
    while (f->end - f->pos < need) {
        ssize_t n = read(f->fd, f->buf + f->end, f->cap - f->end);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            ss_say(err, errlen, "reading %s: %s", f->path, strerror(en));
            return SS_ERR_IO;
        }
        if (n == 0)
            break;
        f->end += (size_t)n;
    }
    *have = f->end - f->pos;
    return SS_OK;
}

int ss_sealed_file_probe(const char *path, uint32_t *stream)
{
    uint8_t h[SS_SEALED_FILE_HEADER];
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (got < sizeof h) {
        ssize_t n = read(fd, h + got, sizeof h - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            close(fd);
            errno = en;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got < 8 || memcmp(h, SS_SEALED_MAGIC, 8) != 0)
        return 0;
    if (stream)
        *stream = got == sizeof h ? ss_get_u32(h + 32) : 0;
    return 1;
}

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* keyname names the key in the "another key" message (NULL: "the key"). */
static ss_err sealed_open(const char *path, const ss_key_t *k, const char *keyname,
                          ss_sealed_file_t **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_err rc = SS_ERR_NOMEM;
    ss_sealed_file_t *f = calloc(1, sizeof *f);
    if (!f) {
        ss_say(err, errlen, "%s: out of memory", path);
        return rc;
    }
    f->fd = -1;
    if (!(f->path = strdup(path)) || !(f->buf = malloc(READER_BUF0))) {
        ss_say(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    f->cap = READER_BUF0;
    if ((f->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot open %s: %s", path, strerror(en));
        rc = SS_ERR_IO;
        goto fail;
    }
    size_t have;
    if ((rc = fill(f, SS_SEALED_FILE_HEADER, &have, err, errlen)) != SS_OK)
        goto fail;
    const uint8_t *h = f->buf;
    rc = SS_ERR_FORMAT;
    if (have < 8 || memcmp(h, SS_SEALED_MAGIC, 8) != 0) {
        ss_say(err, errlen, "%s: not a sealed file (it does not start with %s)", path, SS_SEALED_MAGIC);
        goto fail;
    }
    if (have < SS_SEALED_FILE_HEADER) {
        ss_say(err, errlen, "%s: truncated in the file header (%zu of %d bytes)", path, have,
            SS_SEALED_FILE_HEADER);
        goto fail;
    }
    if (h[8] != 1) {
        ss_say(err, errlen, "%s: sealed file version %u; this securestreams reads version 1", path,
            h[8]);
        goto fail;
    }
    if (!ss_cipher_known(h[9])) {
        ss_say(err, errlen, "%s: unknown cipher %u in the file header", path, h[9]);
        goto fail;
    }
    uint16_t hl = ss_get_u16(h + 10);
    if (hl > 1 || !all_zero(h + 12, 4) || !all_zero(h + 36, 28) || ss_get_u64(h + 24) == 0) {
        ss_say(err, errlen, "%s: damaged file header (header lines %u; reserved bytes must be 0, "
            "the file id not)", path, hl);
        goto fail;
    }
    if (sodium_memcmp(h + 16, k->id, SS_KEY_ID_BYTES) != 0) {
        char got[2 * SS_KEY_ID_BYTES + 1], want[2 * SS_KEY_ID_BYTES + 1];
        ss_key_id_hex(h + 16, got);
        ss_key_id_hex(k->id, want);
        ss_say(err, errlen, "%s was sealed with another key (key id %s; %s has %s)", path, got,
            keyname ? keyname : "the key given", want);
        rc = SS_ERR_CRYPTO;
        goto fail;
    }
    if (h[9] == SS_CIPHER_AES256GCM && !crypto_aead_aes256gcm_is_available()) {
        ss_say(err, errlen, "%s is sealed with AES-256-GCM, which this CPU cannot run (no AES-NI)",
            path);
        rc = SS_ERR_CRYPTO;
        goto fail;
    }
    f->cipher = h[9];
    f->header_lines = hl;
    memcpy(f->key_id, h + 16, SS_KEY_ID_BYTES);
    f->id = ss_get_u64(h + 24);
    f->stream = ss_get_u32(h + 32);
    f->pos = SS_SEALED_FILE_HEADER;
    f->off = SS_SEALED_FILE_HEADER;
    if (ss_opener_new(k, &f->opener) != SS_OK) {
        ss_say(err, errlen, "%s: out of memory", path);
        rc = SS_ERR_NOMEM;
        goto fail;
    }
    *out = f;
    return SS_OK;
fail:
    ss_sealed_file_close(&f);
    return rc;
}

ss_err ss_sealed_file_open(const char *path, const ss_key_t *k, ss_sealed_file_t **out,
                           char *err, size_t errlen)
{
    return sealed_open(path, k, NULL, out, err, errlen);
}

uint64_t ss_sealed_file_id(const ss_sealed_file_t *f) { return f->id; }
uint32_t ss_sealed_file_stream(const ss_sealed_file_t *f) { return f->stream; }
int ss_sealed_file_header_lines(const ss_sealed_file_t *f) { return f->header_lines; }

void ss_sealed_file_close(ss_sealed_file_t **fp)
{
    if (!fp || !*fp)
        return;
    ss_sealed_file_t *f = *fp;
    if (f->fd >= 0)
        close(f->fd);
    ss_opener_destroy(&f->opener);
    free(f->buf);
    free(f->path);
    free(f);
    *fp = NULL;
}

static int is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && !memcmp(o->via.str.ptr, s, n);
}

/* The EOS payload {batches, records, header_lines, final_newline}: exactly
 * these four keys, checked against what came before. */
static ss_err check_eos(ss_sealed_file_t *f, const uint8_t *plain, size_t len, char *where,
                        char *err, size_t errlen)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    uint64_t v[3] = { 0, 0, 0 };
    int seen = 0, fnl = 0;
    static const char *const keys[] = { "batches", "records", "header_lines", "final_newline" };
    ss_err rc = SS_ERR_FORMAT;
    char why[128];
    if (ss_msgpack_check(plain, len, SS_MSGPACK_DEPTH, 64, why, sizeof why) != 0
        || msgpack_unpack_next(&u, (const char *)plain, len, &off) != MSGPACK_UNPACK_SUCCESS
        || off != len || u.data.type != MSGPACK_OBJECT_MAP || u.data.via.map.size != 4) {
        ss_say(err, errlen, "%s: the end-of-stream record is not the expected map", where);
        goto out;
    }
    for (uint32_t i = 0; i < 4; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        int k = 0;
        while (k < 4 && !is_str(&kv->key, keys[k]))
            k++;
        if (k == 4 || (seen & (1 << k))) {
            ss_say(err, errlen, "%s: unexpected or repeated key in the end-of-stream record", where);
            goto out;
        }
        seen |= 1 << k;
        if (k == 3 && kv->val.type == MSGPACK_OBJECT_BOOLEAN)
            fnl = kv->val.via.boolean;
        else if (k < 3 && kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            v[k] = kv->val.via.u64;
        else {
            ss_say(err, errlen, "%s: end-of-stream field %s has the wrong type", where, keys[k]);
            goto out;
        }
    }
    if (v[0] != f->next_seq || v[1] != f->records || v[2] != (uint64_t)f->header_lines
        || (f->records == 0 && !fnl)) {
        ss_say(err, errlen, "%s: the end of stream says %llu batches, %llu lines, %llu header lines; "
            "the file holds %llu, %llu, %d", where, (unsigned long long)v[0],
            (unsigned long long)v[1], (unsigned long long)v[2], (unsigned long long)f->next_seq,
            (unsigned long long)f->records, f->header_lines);
        goto out;
    }
    f->final_newline = fnl;
    rc = SS_OK;
out:
    msgpack_unpacked_destroy(&u);
    return rc;
}

static void truncated(ss_sealed_file_t *f, char *err, size_t errlen)
{
    if (f->next_seq == 0)
        ss_say(err, errlen, "%s: truncated after the file header (no end-of-stream record)", f->path);
    else
        ss_say(err, errlen, "%s: truncated after batch %llu (no end-of-stream record)", f->path,
            (unsigned long long)(f->next_seq - 1));
}

/*
 * One record, checked: framing, header (sealed, this stream, this file,
 * the expected seq), lineage (file id, seq), the payload's cipher and key
 * id; the EOS is opened and its counts compared, and nothing may follow it.
 * *raw points at the record's header bytes, followed by its lineage: the
 * associated data of its payload.
 */
static ss_err sealed_next(ss_sealed_file_t *f, ss_header_t *h, const uint8_t **raw,
                          const uint8_t **lineage, size_t *lineage_len,
                          const uint8_t **payload, size_t *payload_len, char *err, size_t errlen)
{
    char where[1024];
    size_t have;
    ss_err rc;
    if (f->done)
        return SS_ERR_CLOSED;
    if ((rc = fill(f, RECORD_LENGTHS, &have, err, errlen)) != SS_OK)
        return rc;
    if (have < RECORD_LENGTHS) {
        truncated(f, err, errlen);
        return SS_ERR_FORMAT;
    }
    snprintf(where, sizeof where, "%s: record %llu at offset %llu", f->path,
             (unsigned long long)f->next_seq, (unsigned long long)f->off);
    uint32_t llen = ss_get_u32(f->buf + f->pos), plen = ss_get_u32(f->buf + f->pos + 4);
    if ((llen != 0 && llen != SS_LINEAGE_ENTRY) || plen < SS_SEAL_OVERHEAD_FILE
        || (uint64_t)SS_HEADER_SIZE + llen + plen > SS_MAX_MESSAGE) {
        ss_say(err, errlen, "%s: lineage length %u and payload length %u are not a sealed record's "
            "(damaged file?)", where, llen, plen);
        return SS_ERR_FORMAT;
    }
    size_t total = RECORD_LENGTHS + SS_HEADER_SIZE + llen + plen;
    if ((rc = fill(f, total, &have, err, errlen)) != SS_OK)
        return rc;
    if (have < total) {
        truncated(f, err, errlen);
        return SS_ERR_FORMAT;
    }
    const uint8_t *r = f->buf + f->pos + RECORD_LENGTHS;
    const uint8_t *lin = r + SS_HEADER_SIZE, *pl = lin + llen;
    if (ss_header_decode(r, SS_HEADER_SIZE, h) != SS_OK) {
        ss_say(err, errlen, "%s: malformed stream header", where);
        return SS_ERR_FORMAT;
    }
    const char *bad = NULL;
    int eos = h->type == SS_MSG_EOS;
    if (h->flags != SS_HDR_SEALED)
        bad = "its header is not flagged sealed";
    else if (h->stream != f->stream)
        bad = "its stream id is not the file's";
    else if (h->producer != f->id)
        bad = "its producer is not the file id";
    else if (h->seq != f->next_seq)
        bad = "its sequence number is out of order (records reordered, missing or repeated)";
    else if (pl[0] != f->cipher || pl[1] != 0 || memcmp(pl + 2, f->key_id, SS_KEY_ID_BYTES) != 0)
        bad = "its payload names another cipher or key than the file header";
    else if (eos && (llen != 0 || h->count != 0 || h->origin != 0))
        bad = "its end-of-stream header or lineage is not empty";
    else if (!eos && (llen != SS_LINEAGE_ENTRY || ss_lineage_get(lin, 0).source != f->id
                      || ss_lineage_get(lin, 0).seq != h->seq))
        bad = "its lineage is not (file id, seq)";
    else if (!eos && (h->count == 0 || h->origin != f->records + 1
                      || (f->header_lines && h->seq == 0 && h->count != 1)))
        bad = "its line count or first line number does not follow the previous batch";
    if (bad) {
        ss_say(err, errlen, "%s: %s (damaged file?)", where, bad);
        return SS_ERR_FORMAT;
    }
    if (eos) {
        uint8_t plain[EOS_PAYLOAD_MAX];
        size_t n;
        char why[160];
        if (plen > sizeof plain + SS_SEAL_OVERHEAD_FILE) {
            ss_say(err, errlen, "%s: end-of-stream payload of %u bytes is too long", where, plen);
            return SS_ERR_FORMAT;
        }
        if ((rc = ss_open(f->opener, h->seq, r, SS_HEADER_SIZE, pl, plen, plain, &n, NULL, why,
                          sizeof why)) != SS_OK) {
            ss_say(err, errlen, "%s (end of stream): %s", where, why);
            return rc;
        }
        if ((rc = check_eos(f, plain, n, where, err, errlen)) != SS_OK)
            return rc;
        f->pos += total;
        f->off += total;
        if ((rc = fill(f, 1, &have, err, errlen)) != SS_OK)
            return rc;
        if (have > 0) {
            ss_say(err, errlen, "%s: unexpected data after the end-of-stream record at offset %llu",
                f->path, (unsigned long long)f->off);
            return SS_ERR_FORMAT;
        }
        f->done = 1;
        return SS_ERR_CLOSED;
    }
    *raw = r;
    *lineage = lin;
    *lineage_len = llen;
    *payload = pl;
    *payload_len = plen;
    f->pos += total;
    f->off += total;
    f->next_seq++;
    f->records += h->count;
    return SS_OK;
}

ss_err ss_sealed_file_next(ss_sealed_file_t *f, ss_header_t *h,
                           const uint8_t **lineage, size_t *lineage_len,
                           const uint8_t **payload, size_t *payload_len,
                           char *err, size_t errlen)
{
    const uint8_t *raw;
    return sealed_next(f, h, &raw, lineage, lineage_len, payload, payload_len, err, errlen);
}

ss_err ss_sealed_file_next_open(ss_sealed_file_t *f, ss_header_t *h, const uint8_t **lineage,
                                size_t *lineage_len, uint8_t *plain, size_t cap, size_t *plain_len,
                                char *err, size_t errlen)
{
    const uint8_t *raw, *pl;
    size_t plen;
    char why[200];
    uint64_t off = f->off;
    ss_err rc = sealed_next(f, h, &raw, lineage, lineage_len, &pl, &plen, err, errlen);
    if (rc != SS_OK)
        return rc;
    if (plen - SS_SEAL_OVERHEAD_FILE > cap) {
        ss_say(err, errlen, "%s: batch %llu at offset %llu: %zu bytes, more than %zu", f->path,
               (unsigned long long)h->seq, (unsigned long long)off, plen - SS_SEAL_OVERHEAD_FILE, cap);
        return SS_ERR_TOOBIG;
    }
    if ((rc = ss_open(f->opener, h->seq, raw, SS_HEADER_SIZE + *lineage_len, pl, plen, plain,
                      plain_len, NULL, why, sizeof why)) != SS_OK)
        ss_say(err, errlen, "%s: batch %llu at offset %llu: %s", f->path, (unsigned long long)h->seq,
               (unsigned long long)off, why);
    return rc;
}

/* ---- output through a temporary file ---------------------------------------- */

/*
 * OUT is written as an unnamed O_TMPFILE in OUT's directory where the file
 * system allows it (so even a killed process leaves nothing behind), else as
 * OUT.tmp; on success it is named OUT.tmp and renamed over OUT.
 */
typedef struct {
    int fd;
    int anon;          /* O_TMPFILE: nothing on disk has a name yet */
    const char *path;
    char *tmp;         /* OUT.tmp */
} outfile;

static ss_err out_open(outfile *o, const char *path, mode_t mode, char *err, size_t errlen)
{
    o->fd = -1;
    o->anon = 0;
    o->path = path;
    size_t n = strlen(path);
    if (!(o->tmp = malloc(n + 5))) {
        ss_say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    memcpy(o->tmp, path, n);
    memcpy(o->tmp + n, ".tmp", 5);
#ifdef O_TMPFILE
    if (access("/proc/self/fd", X_OK) == 0) {
        char *dir = strdup(path);
        if (dir) {
            char *slash = strrchr(dir, '/');
            const char *d = !slash ? "." : slash == dir ? "/" : (*slash = '\0', dir);
            o->fd = open(d, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
            o->anon = o->fd >= 0;
            free(dir);
        }
    }
#endif
    if (o->fd < 0) {
        if (unlink(o->tmp) != 0 && errno != ENOENT) {
            int en = errno;
            ss_say(err, errlen, "cannot replace %s: %s", o->tmp, strerror(en));
            return SS_ERR_IO;
        }
        o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    }
    if (o->fd < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot create %s: %s", o->tmp, strerror(en));
        return SS_ERR_IO;
    }
    return SS_OK;
}

static void out_abort(outfile *o)
{
    if (o->fd >= 0) {
        close(o->fd);
        if (!o->anon)
            unlink(o->tmp);
    }
    o->fd = -1;
    free(o->tmp);
    o->tmp = NULL;
}

static ss_err out_commit(outfile *o, char *err, size_t errlen)
{
    int en = 0;
    const char *what = o->tmp;
    if (fsync(o->fd) != 0) {
        en = errno;
        goto fail;
    }
    if (o->anon) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", o->fd);
        if ((unlink(o->tmp) != 0 && errno != ENOENT)
            || linkat(AT_FDCWD, proc, AT_FDCWD, o->tmp, AT_SYMLINK_FOLLOW) != 0) {
            en = errno;
            goto fail;
        }
        o->anon = 0;   /* it has a name now: abort must remove it */
    }
    if (close(o->fd) != 0) {
        en = errno;
        o->fd = -1;
        unlink(o->tmp);
        goto fail;
    }
    o->fd = -1;
    if (rename(o->tmp, o->path) != 0) {
        en = errno;
        what = o->path;
        unlink(o->tmp);
        goto fail;
    }
    free(o->tmp);
    o->tmp = NULL;
    return SS_OK;
fail:
    ss_say(err, errlen, "writing %s: %s", what, strerror(en));
    out_abort(o);
    return SS_ERR_IO;
}

/* ---- sealed files: encrypt -------------------------------------------------- */

void ss_encrypt_opts_init(ss_encrypt_opts *o)
{
    o->header = 1;
    o->batch_bytes = SS_BATCH_BYTES;
    o->stream = SS_DEFAULT_STREAM;
    o->cipher = ss_crypto_default_cipher();
}

typedef struct {
    const char *in;
    outfile out;
    ss_sealer_t *sealer;
    ss_batch_writer w;
    uint8_t *rec;              /* the record being written */
    size_t reccap;
    uint64_t id;
    uint32_t stream;
    size_t batch_bytes;
    int header_lines;
    uint64_t seq;              /* next batch number */
    uint64_t lines;            /* lines read */
    uint64_t first_line;       /* line number of the writer's first line */
} encrypter;

/* lengths | header | lineage | sealed payload, sealed with AD = header || lineage. */
static ss_err put_record(encrypter *e, const ss_header_t *h, size_t llen, const void *plain,
                         size_t plen, char *err, size_t errlen)
{
    size_t need = RECORD_LENGTHS + SS_HEADER_SIZE + llen + plen + SS_SEAL_OVERHEAD_FILE;
    if (need > e->reccap) {
        uint8_t *r = realloc(e->rec, need);
        if (!r) {
            ss_say(err, errlen, "out of memory for a record of %zu bytes", need);
            return SS_ERR_NOMEM;
        }
        e->rec = r;
        e->reccap = need;
    }
    uint8_t *ad = e->rec + RECORD_LENGTHS;
    size_t slen;
    ss_put_u32(e->rec, (uint32_t)llen);
    ss_put_u32(e->rec + 4, (uint32_t)(plen + SS_SEAL_OVERHEAD_FILE));
    ss_header_encode(h, ad);
    if (llen)
        ss_lineage_put(ad + SS_HEADER_SIZE, 0, (ss_lineage_id){ e->id, h->seq });
    ss_err rc = ss_seal(e->sealer, h->seq, ad, SS_HEADER_SIZE + llen, plain, plen,
                        ad + SS_HEADER_SIZE + llen, &slen);
    if (rc != SS_OK) {
        ss_say(err, errlen, "sealing batch %llu: %s", (unsigned long long)h->seq, ss_strerror(rc));
        return rc;
    }
    if (ss_write_all(e->out.fd, e->rec, RECORD_LENGTHS + SS_HEADER_SIZE + llen + slen) != 0) {
        int en = errno;
        ss_say(err, errlen, "writing %s: %s", e->out.tmp, strerror(en));
        return SS_ERR_IO;
    }
    return SS_OK;
}

static ss_err flush_batch(encrypter *e, char *err, size_t errlen)
{
    if (e->w.count == 0)
        return SS_OK;
    const char *payload;
    size_t len;
    ss_batch_writer_finish(&e->w, &payload, &len);
    ss_header_t h = { .type = SS_MSG_DATA, .flags = SS_HDR_SEALED, .stream = e->stream,
                      .producer = e->id, .seq = e->seq, .count = e->w.count,
                      .origin = e->first_line };
    ss_err rc = put_record(e, &h, SS_LINEAGE_ENTRY, payload, len, err, errlen);
    if (rc != SS_OK)
        return rc;
    e->seq++;
    ss_batch_writer_reset(&e->w);
    return SS_OK;
}

/* One line, without its '\n' (a '\r' before it is kept). */
static ss_err take_line(encrypter *e, const char *line, size_t len, char *err, size_t errlen)
{
    e->lines++;
    if (e->w.count == 0)
        e->first_line = e->lines;
    ss_err rc = ss_batch_writer_add_string(&e->w, line, len);
    if (rc == SS_ERR_TOOBIG && e->w.count > 0) {
        if ((rc = flush_batch(e, err, errlen)) != SS_OK)
            return rc;
        e->first_line = e->lines;
        rc = ss_batch_writer_add_string(&e->w, line, len);
    }
    if (rc == SS_ERR_TOOBIG) {
        ss_say(err, errlen, "%s:%llu: line of %zu bytes; a sealed batch holds at most %u", e->in,
            (unsigned long long)e->lines, len, (unsigned)SS_SEALED_BATCH_MAX);
        return rc;
    }
    if (rc != SS_OK) {
        ss_say(err, errlen, "%s:%llu: %s", e->in, (unsigned long long)e->lines, ss_strerror(rc));
        return rc;
    }
    if ((e->header_lines && e->lines == 1) || e->w.len >= e->batch_bytes)
        return flush_batch(e, err, errlen);
    return SS_OK;
}

static ss_err put_file_header(encrypter *e, ss_cipher c, const ss_key_t *k, char *err,
                              size_t errlen)
{
    uint8_t h[SS_SEALED_FILE_HEADER];
    memset(h, 0, sizeof h);
    memcpy(h, SS_SEALED_MAGIC, 8);
    h[8] = 1;
    h[9] = (uint8_t)c;
    ss_put_u16(h + 10, (uint16_t)e->header_lines);
    memcpy(h + 16, k->id, SS_KEY_ID_BYTES);
    ss_put_u64(h + 24, e->id);
    ss_put_u32(h + 32, e->stream);
    if (ss_write_all(e->out.fd, h, sizeof h) != 0) {
        int en = errno;
        ss_say(err, errlen, "writing %s: %s", e->out.tmp, strerror(en));
        return SS_ERR_IO;
    }
    return SS_OK;
}

static ss_err put_eos(encrypter *e, int final_newline, char *err, size_t errlen)
{
    uint8_t storage[EOS_PAYLOAD_MAX];
    ss_fixbuf b;
    msgpack_packer pk;
    ss_fixbuf_init(&b, &pk, storage, sizeof storage);
    msgpack_pack_map(&pk, 4);
    ss_pack_kv_u64(&pk, "batches", e->seq);
    ss_pack_kv_u64(&pk, "records", e->lines);
    ss_pack_kv_u64(&pk, "header_lines", (uint64_t)e->header_lines);
    ss_pack_str(&pk, "final_newline");
    if (final_newline)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    ss_header_t h = { .type = SS_MSG_EOS, .flags = SS_HDR_SEALED, .stream = e->stream,
                      .producer = e->id, .seq = e->seq };
    return put_record(e, &h, 0, b.data, b.len, err, errlen);
}

/*
 * Lines are found with memchr in a read buffer of 1 MiB that grows (up to
 * the batch limit) only for a longer line; batches are cut once their
 * encoding reaches batch_bytes. Memory: the read buffer, one batch and one
 * record, whatever the file's size.
 */
ss_err ss_sealed_file_encrypt(const char *in, const char *out, const ss_key_t *k,
                              const ss_encrypt_opts *o, char *err, size_t errlen)
{
    encrypter e = { .in = in, .out = { .fd = -1 }, .stream = o->stream,
                    .batch_bytes = o->batch_bytes, .id = ss_random_id() };
    uint8_t *buf = NULL;
    size_t cap = READ_BUF, have = 0, start = 0, scan = 0;
    uint64_t bytes = 0;
    int last = '\n', started = 0, fd = -1;
    ss_err rc = SS_ERR_NOMEM;

    if (ss_batch_writer_init(&e.w, SS_SEALED_BATCH_MAX) != SS_OK || !(buf = malloc(cap))) {
        ss_say(err, errlen, "out of memory");
        goto out;
    }
    if ((rc = ss_sealer_new(k, o->cipher, NULL, &e.sealer)) != SS_OK) {
        ss_say(err, errlen, "cannot seal with %s on this machine", ss_cipher_name(o->cipher));
        goto out;
    }
    if ((fd = open(in, O_RDONLY | O_CLOEXEC)) < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot open %s: %s", in, strerror(en));
        rc = SS_ERR_IO;
        goto out;
    }
    if ((rc = out_open(&e.out, out, 0644, err, errlen)) != SS_OK)
        goto out;
    for (;;) {
        ssize_t n = read(fd, buf + have, cap - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            ss_say(err, errlen, "reading %s: %s", in, strerror(en));
            rc = SS_ERR_IO;
            goto out;
        }
        if (n > 0) {
            have += (size_t)n;
            bytes += (uint64_t)n;
            last = buf[have - 1];
        }
        if (!started) {
            started = 1;
            e.header_lines = o->header && n > 0;
            if ((rc = put_file_header(&e, o->cipher, k, err, errlen)) != SS_OK)
                goto out;
        }
        char *nl;
        while ((nl = memchr(buf + scan, '\n', have - scan))) {
            size_t end = (size_t)((uint8_t *)nl - buf);
            if ((rc = take_line(&e, (char *)buf + start, end - start, err, errlen)) != SS_OK)
                goto out;
            start = scan = end + 1;
        }
        scan = have;
        if (n == 0) {
            if (start < have
                && (rc = take_line(&e, (char *)buf + start, have - start, err, errlen)) != SS_OK)
                goto out;
            break;
        }
        if (start > 0) {
            memmove(buf, buf + start, have - start);
            have -= start;
            scan -= start;
            start = 0;
        }
        if (have == cap) {
            if (cap >= SS_SEALED_BATCH_MAX) {
                ss_say(err, errlen, "%s:%llu: line longer than %u bytes; a sealed batch holds at "
                    "most that", in, (unsigned long long)e.lines + 1, (unsigned)SS_SEALED_BATCH_MAX);
                rc = SS_ERR_TOOBIG;
                goto out;
            }
            size_t ncap = cap * 2 > SS_SEALED_BATCH_MAX ? SS_SEALED_BATCH_MAX : cap * 2;
            uint8_t *b = realloc(buf, ncap);
            if (!b) {
                ss_say(err, errlen, "out of memory reading a line of %zu bytes", have);
                rc = SS_ERR_NOMEM;
                goto out;
            }
            buf = b;
            cap = ncap;
        }
    }
    if ((rc = flush_batch(&e, err, errlen)) != SS_OK
        || (rc = put_eos(&e, bytes == 0 || last == '\n', err, errlen)) != SS_OK)
        goto out;
    rc = out_commit(&e.out, err, errlen);
out:
    if (rc != SS_OK)
        out_abort(&e.out);
    if (fd >= 0)
        close(fd);
    ss_sealer_destroy(&e.sealer);
    ss_batch_writer_cleanup(&e.w);
    free(e.rec);
    free(buf);
    return rc;
}

/* ---- sealed files: decrypt -------------------------------------------------- */

/*
 * The batch p[0..len), a MessagePack array of `count` strings, becomes its
 * lines joined by '\n' at p[1..*end) (no newline after the last), in place:
 * each string drops a header of at least one byte and gains one separator,
 * and the array header frees p[0], so writing never overtakes reading. p[0]
 * is left for the caller (the newline owed to the previous batch).
 */
static ss_err join_lines(uint8_t *p, size_t len, uint32_t count, size_t *end, char *why,
                         size_t whylen)
{
    size_t i, o = 1;
    uint32_t n;
    if (len >= 1 && (p[0] & 0xf0) == 0x90) {
        n = p[0] & 0x0f;
        i = 1;
    } else if (len >= 3 && p[0] == 0xdc) {
        n = (uint32_t)p[1] << 8 | p[2];
        i = 3;
    } else if (len >= 5 && p[0] == 0xdd) {
        n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        i = 5;
    } else {
        ss_say(why, whylen, "the batch is not a MessagePack array");
        return SS_ERR_FORMAT;
    }
    if (n != count) {
        ss_say(why, whylen, "the batch holds %u lines; its header says %u", n, count);
        return SS_ERR_FORMAT;
    }
    for (uint32_t k = 0; k < n; k++) {
        size_t hl, sl;
        uint8_t b = i < len ? p[i] : 0xc1;
        if ((b & 0xe0) == 0xa0) {
            hl = 1;
            sl = b & 0x1f;
        } else if ((b == 0xd9 || b == 0xc4) && len - i >= 2) {
            hl = 2;
            sl = p[i + 1];
        } else if ((b == 0xda || b == 0xc5) && len - i >= 3) {
            hl = 3;
            sl = (size_t)p[i + 1] << 8 | p[i + 2];
        } else if ((b == 0xdb || b == 0xc6) && len - i >= 5) {
            hl = 5;
            sl = (size_t)p[i + 1] << 24 | (size_t)p[i + 2] << 16 | (size_t)p[i + 3] << 8 | p[i + 4];
        } else {
            ss_say(why, whylen, "line %u of the batch is not a string", k);
            return SS_ERR_FORMAT;
        }
        if (sl > len - i - hl) {
            ss_say(why, whylen, "line %u of the batch runs past its end", k);
            return SS_ERR_FORMAT;
        }
        if (k > 0)
            p[o++] = '\n';
        memmove(p + o, p + i + hl, sl);
        o += sl;
        i += hl + sl;
    }
    if (i != len) {
        ss_say(why, whylen, "%zu bytes after the batch's last line", len - i);
        return SS_ERR_FORMAT;
    }
    *end = o;
    return SS_OK;
}

ss_err ss_sealed_file_decrypt(const char *in, const char *out, const ss_key_t *k,
                              const char *keyname, char *err, size_t errlen)
{
    ss_sealed_file_t *f = NULL;
    outfile of = { .fd = -1 };
    uint8_t *plain = NULL;
    size_t plaincap = 0;
    int owed = 0;   /* the previous batch's last line is owed its newline */
    ss_err rc = sealed_open(in, k, keyname, &f, err, errlen);
    if (rc != SS_OK)
        return rc;
    if ((rc = out_open(&of, out, 0600, err, errlen)) != SS_OK)
        goto out;
    for (;;) {
        ss_header_t h;
        const uint8_t *raw, *lin, *pl;
        size_t llen, plen, n, end;
        char why[160];
        uint64_t off = f->off;
        rc = sealed_next(f, &h, &raw, &lin, &llen, &pl, &plen, err, errlen);
        if (rc == SS_ERR_CLOSED)
            break;
        if (rc != SS_OK)
            goto out;
        if (!plain || plen - SS_SEAL_OVERHEAD_FILE > plaincap) {
            size_t c = plen - SS_SEAL_OVERHEAD_FILE < 64 ? 64 : plen - SS_SEAL_OVERHEAD_FILE;
            uint8_t *p = realloc(plain, c);
            if (!p) {
                ss_say(err, errlen, "out of memory for a batch of %zu bytes", c);
                rc = SS_ERR_NOMEM;
                goto out;
            }
            plain = p;
            plaincap = c;
        }
        rc = ss_open(f->opener, h.seq, raw, SS_HEADER_SIZE + llen, pl, plen, plain, &n, NULL, why,
                     sizeof why);
        if (rc == SS_OK)
            rc = join_lines(plain, n, h.count, &end, why, sizeof why);
        if (rc != SS_OK) {
            ss_say(err, errlen, "%s: batch %llu at offset %llu: %s", in, (unsigned long long)h.seq,
                (unsigned long long)off, why);
            goto out;
        }
        plain[0] = '\n';
        if (ss_write_all(of.fd, plain + !owed, end - !owed) != 0) {
            int en = errno;
            ss_say(err, errlen, "writing %s: %s", of.tmp, strerror(en));
            rc = SS_ERR_IO;
            goto out;
        }
        owed = 1;
    }
    if (owed && f->final_newline && ss_write_all(of.fd, "\n", 1) != 0) {
        int en = errno;
        ss_say(err, errlen, "writing %s: %s", of.tmp, strerror(en));
        rc = SS_ERR_IO;
        goto out;
    }
    rc = out_commit(&of, err, errlen);
out:
    if (rc != SS_OK)
        out_abort(&of);
    if (plain)
        sodium_memzero(plain, plaincap);
    free(plain);
    ss_sealed_file_close(&f);
    return rc;
}

