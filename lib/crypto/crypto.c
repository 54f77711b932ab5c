/*
 * crypto.c - data keys, sealed batches and sealed files (docs/crypto.md).
 *
 * Secrets live in sodium_malloc'd memory (guard pages, wiped by sodium_free)
 * or in caller storage wiped with sodium_memzero; no key byte is ever put in
 * a message or a log line. A sealer holds one session: a fresh random salt,
 * the subkey derived from it and, for AES-256-GCM, libsodium's precomputed
 * key schedule, so sealing is one call without allocation. An opener keeps
 * the last 16 sessions it met (salt -> subkey and AES state), replaced round
 * robin: a consumer fed by a handful of producers derives each subkey once.
 *
 * Invariants: a sealer refuses a sequence number that is not above the
 * previous one, so a nonce is never reused under its subkey; a sealed file
 * is read in bounded memory (one record, at most 8 + SS_MAX_MESSAGE bytes),
 * and written through a temporary file so OUT is complete or absent.
 */
#include "crypto/crypto.h"
#include "base/file.h"
#include "wire/pack.h"

#include "wire/codec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <msgpack.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define SUBKEY_CONTEXT "securestreams batch v1"
#define OPEN_CACHE 16                 /* sessions an opener remembers */
#define NONCE_MAX 24                  /* XChaCha20; AES-256-GCM uses 12 */
#define KEYFILE_MAX 4096              /* a key file is ~110 bytes */
#define KEYFILE_MAGIC "securestreams-key 1"
#define READ_BUF (1u << 20)           /* initial read buffer of encrypt and decrypt */
#define RECORD_LENGTHS 8              /* u32 lineage length | u32 payload length */
#define RECORD_MAX (RECORD_LENGTHS + SS_MAX_MESSAGE)
/* The largest MessagePack batch encrypt builds: header, lineage and sealed
 * payload together fit in SS_MAX_MESSAGE, so a record can travel as is. */
#define EOS_PAYLOAD_MAX 128           /* the sealed file's EOS map is ~60 bytes */

/* ---- ciphers -------------------------------------------------------------- */

ss_err ss_crypto_init(void)
{
    if (sodium_init() < 0) {
        ss_log("error: libsodium failed to initialise");
        return SS_ERR_CRYPTO;
    }
    const char *want = getenv("SS_CIPHER");
    if (!want || !*want || !strcmp(want, "xchacha20"))
        return SS_OK;
    if (!strcmp(want, "aes256gcm")) {
        if (crypto_aead_aes256gcm_is_available())
            return SS_OK;
        ss_log("error: SS_CIPHER=aes256gcm, but this CPU has no AES-NI, which libsodium's "
               "AES-256-GCM needs; unset SS_CIPHER (XChaCha20-Poly1305 is used then) or set "
               "SS_CIPHER=xchacha20");
        return SS_ERR_USAGE;
    }
    ss_log("error: SS_CIPHER=%s: unknown cipher (aes256gcm or xchacha20)", want);
    return SS_ERR_USAGE;
}

ss_cipher ss_crypto_default_cipher(void)
{
    const char *want = getenv("SS_CIPHER");
    if (want && !strcmp(want, "xchacha20"))
        return SS_CIPHER_XCHACHA20;
    return crypto_aead_aes256gcm_is_available() ? SS_CIPHER_AES256GCM : SS_CIPHER_XCHACHA20;
}

const char *ss_cipher_name(ss_cipher c)
{
    switch (c) {
    case SS_CIPHER_AES256GCM: return "AES-256-GCM";
    case SS_CIPHER_XCHACHA20: return "XChaCha20-Poly1305";
    }
    return "unknown cipher";
}

static int cipher_known(unsigned c)
{
    return c == SS_CIPHER_AES256GCM || c == SS_CIPHER_XCHACHA20;
}

/* ---- keys ------------------------------------------------------------------ */

static void key_id(const uint8_t key[SS_KEY_BYTES], uint8_t id[SS_KEY_ID_BYTES])
{
    uint8_t h[32];
    crypto_generichash(h, sizeof h, key, SS_KEY_BYTES, NULL, 0);
    memcpy(id, h, SS_KEY_ID_BYTES);
}

void ss_key_generate(ss_key_t *k)
{
    randombytes_buf(k->key, sizeof k->key);
    key_id(k->key, k->id);
}

void ss_key_cleanup(ss_key_t *k)
{
    if (k)
        sodium_memzero(k, sizeof *k);
}

void ss_key_id_hex(const uint8_t id[SS_KEY_ID_BYTES], char out[2 * SS_KEY_ID_BYTES + 1])
{
    sodium_bin2hex(out, 2 * SS_KEY_ID_BYTES + 1, id, SS_KEY_ID_BYTES);
}

/*
 * O_EXCL: an existing file (a key, or anything else) is never replaced. The
 * text sits in a locked stack buffer wiped before returning; on a failed
 * write the half-written file is removed.
 */
ss_err ss_key_save(const ss_key_t *k, const char *path, char *err, size_t errlen)
{
    char text[160], idhex[2 * SS_KEY_ID_BYTES + 1], keyhex[2 * SS_KEY_BYTES + 1];
    sodium_mlock(text, sizeof text);
    sodium_mlock(keyhex, sizeof keyhex);
    ss_key_id_hex(k->id, idhex);
    sodium_bin2hex(keyhex, sizeof keyhex, k->key, SS_KEY_BYTES);
    int n = snprintf(text, sizeof text, "%s\nid %s\nkey %s\n", KEYFILE_MAGIC, idhex, keyhex);
    ss_err rc = ss_file_write_new(path, 0600, text, (size_t)n, err, errlen);
    sodium_munlock(text, sizeof text);     /* munlock also wipes */
    sodium_munlock(keyhex, sizeof keyhex);
    return rc;
}

/* Line `no` of a key file: "<word> <hex of exactly n bytes>". */
static int parse_hex_line(const char *line, size_t len, const char *word, uint8_t *bin, size_t n)
{
    size_t w = strlen(word);
    if (len != w + 1 + 2 * n || memcmp(line, word, w) != 0 || line[w] != ' ')
        return -1;
    size_t got = 0;
    const char *end = NULL;
    if (sodium_hex2bin(bin, n, line + w + 1, 2 * n, NULL, &got, &end) != 0 || got != n
        || end != line + len)
        return -1;
    return 0;
}

ss_err ss_key_load(ss_key_t *k, const char *path, char *err, size_t errlen)
{
    uint8_t id[SS_KEY_ID_BYTES];
    char *text = NULL;
    size_t len = 0;
    mode_t mode = 0;
    ss_err rc = ss_file_read(path, KEYFILE_MAX, SS_FILE_SECRET, &text, &len, &mode, err, errlen);
    if (rc == SS_ERR_TOOBIG) {
        ss_say(err, errlen, "%s: not a securestreams key file (larger than %u bytes)", path,
               KEYFILE_MAX);
        return SS_ERR_FORMAT;
    }
    if (rc != SS_OK)
        return rc;
    rc = SS_ERR_FORMAT;
    if (mode & 077) {
        ss_say(err, errlen, "%s: readable or writable by others (mode %04o); chmod 600 it", path,
               (unsigned)mode);
        rc = SS_ERR_CRYPTO;
        goto out;
    }

    /* Three lines, the last newline optional, nothing after. */
    const char *p = text, *end = text + len;
    for (int no = 1; no <= 4; no++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (no == 1 && (n != strlen(KEYFILE_MAGIC) || memcmp(p, KEYFILE_MAGIC, n) != 0)) {
            ss_say(err, errlen, "%s:1: not a securestreams data key file (expected '%s')", path,
                KEYFILE_MAGIC);
            goto out;
        }
        if (no == 2 && parse_hex_line(p, n, "id", id, sizeof id) != 0) {
            ss_say(err, errlen, "%s:2: expected 'id' and %d hex digits", path, 2 * SS_KEY_ID_BYTES);
            goto out;
        }
        if (no == 3 && parse_hex_line(p, n, "key", k->key, sizeof k->key) != 0) {
            ss_say(err, errlen, "%s:3: expected 'key' and %d hex digits", path, 2 * SS_KEY_BYTES);
            goto out;
        }
        if (no == 4 && p != end) {
            ss_say(err, errlen, "%s:4: unexpected text after the key", path);
            goto out;
        }
        if (no < 4 && !nl && no != 3) {
            ss_say(err, errlen, "%s:%d: file ends early (expected 3 lines)", path, no + 1);
            goto out;
        }
        p = nl ? nl + 1 : end;
    }
    key_id(k->key, k->id);
    if (sodium_memcmp(k->id, id, sizeof id) != 0) {
        ss_say(err, errlen, "%s:2: the key id does not match the key (damaged file?)", path);
        goto out;
    }
    rc = SS_OK;
out:
    ss_file_free(text, len, SS_FILE_SECRET);
    if (rc != SS_OK)
        sodium_memzero(k, sizeof *k);
    return rc;
}

/* ---- sealing ---------------------------------------------------------------- */

static void derive(const uint8_t key[SS_KEY_BYTES], const uint8_t salt[SS_SALT_BYTES],
                   uint8_t subkey[SS_KEY_BYTES])
{
    uint8_t msg[sizeof SUBKEY_CONTEXT - 1 + SS_SALT_BYTES];
    memcpy(msg, SUBKEY_CONTEXT, sizeof SUBKEY_CONTEXT - 1);
    memcpy(msg + sizeof SUBKEY_CONTEXT - 1, salt, SS_SALT_BYTES);
    crypto_generichash(subkey, SS_KEY_BYTES, msg, sizeof msg, key, SS_KEY_BYTES);
}

static void make_nonce(uint8_t nonce[NONCE_MAX], uint64_t seq)
{
    memset(nonce, 0, NONCE_MAX);
    ss_put_u64(nonce, seq);
}

/* ---- AES-256-GCM ---------------------------------------------------------
 * Through OpenSSL's EVP interface: the same algorithm and the same bytes as
 * libsodium's crypto_aead_aes256gcm (12-byte nonce, 16-byte tag; a test
 * opens with each what the other sealed), but OpenSSL's VAES/AVX-512 code
 * seals about three times as fast on current x86 CPUs (4.4 against 1.5 GB/s
 * on the development machine), and every batch is opened and sealed at each
 * hop. libsodium still decides whether AES is used at all (AES-NI). A
 * context holds one key's schedule; it is made before any lockdown and
 * reused for every message. */

/* A context for `enc` (1) or decryption (0), keyed when key is not NULL. */
static EVP_CIPHER_CTX *gcm_new(int enc, const uint8_t *key)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(c);
        c = NULL;
    }
    return c;
}

static int gcm_seal(EVP_CIPHER_CTX *c, uint8_t *ct, uint8_t *tag, const uint8_t *m, size_t len,
                    const uint8_t *ad, size_t adlen, const uint8_t *nonce)
{
    int n;
    if (len > INT_MAX || adlen > INT_MAX || EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (adlen && EVP_EncryptUpdate(c, NULL, &n, ad, (int)adlen) != 1)
        return -1;
    if (len && EVP_EncryptUpdate(c, ct, &n, m, (int)len) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(c, ct + len, &n) != 1)
        return -1;
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1 ? 0 : -1;
}

static int gcm_open(EVP_CIPHER_CTX *c, uint8_t *m, const uint8_t *ct, size_t len, const uint8_t *tag,
                    const uint8_t *ad, size_t adlen, const uint8_t *nonce)
{
    int n;
    uint8_t t[16];
    memcpy(t, tag, sizeof t);
    if (len > INT_MAX || adlen > INT_MAX || EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (adlen && EVP_DecryptUpdate(c, NULL, &n, ad, (int)adlen) != 1)
        return -1;
    if (len && EVP_DecryptUpdate(c, m, &n, ct, (int)len) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, sizeof t, t) != 1)
        return -1;
    return EVP_DecryptFinal_ex(c, m + len, &n) == 1 ? 0 : -1;
}

/* sodium_malloc places the block at the end of a page, so it is aligned only
 * if its size is a multiple of the alignment: round up. */
static void *secure_alloc(size_t n)
{
    void *p = sodium_malloc((n + 63) & ~(size_t)63);
    if (p)
        memset(p, 0, n);
    return p;
}

struct ss_sealer {
    EVP_CIPHER_CTX *aes;               /* keyed with the subkey (AES only) */
    uint8_t subkey[SS_KEY_BYTES];
    uint8_t prefix[SS_SEAL_PREFIX];    /* cipher | 0 | key id | salt, copied into each payload */
    ss_cipher cipher;
    int used;                          /* a payload was sealed: `last` is meaningful */
    uint64_t last;                     /* seq of the last payload */
};

ss_err ss_sealer_new(const ss_key_t *k, ss_cipher c, ss_sealer_t **out)
{
    *out = NULL;
    if (!cipher_known(c))
        return SS_ERR_USAGE;
    if (c == SS_CIPHER_AES256GCM && !crypto_aead_aes256gcm_is_available())
        return SS_ERR_CRYPTO;
    ss_sealer_t *s = secure_alloc(sizeof *s);
    if (!s)
        return SS_ERR_NOMEM;
    uint8_t salt[SS_SALT_BYTES];
    randombytes_buf(salt, sizeof salt);
    derive(k->key, salt, s->subkey);
    if (c == SS_CIPHER_AES256GCM && !(s->aes = gcm_new(1, s->subkey))) {
        sodium_free(s);
        return SS_ERR_CRYPTO;
    }
    s->prefix[0] = (uint8_t)c;
    s->prefix[1] = 0;
    memcpy(s->prefix + 2, k->id, SS_KEY_ID_BYTES);
    memcpy(s->prefix + 2 + SS_KEY_ID_BYTES, salt, SS_SALT_BYTES);
    s->cipher = c;
    *out = s;
    return SS_OK;
}

void ss_sealer_destroy(ss_sealer_t **s)
{
    if (!s || !*s)
        return;
    EVP_CIPHER_CTX_free((*s)->aes);
    sodium_free(*s);
    *s = NULL;
}

ss_err ss_seal(ss_sealer_t *s, uint64_t seq, const void *ad, size_t adlen,
               const void *plain, size_t len, void *out, size_t *outlen)
{
    if (s->used && seq <= s->last)
        return SS_ERR_USAGE;
    if (len > crypto_aead_aes256gcm_MESSAGEBYTES_MAX
        || len > crypto_aead_xchacha20poly1305_ietf_MESSAGEBYTES_MAX)
        return SS_ERR_TOOBIG;
    uint8_t *o = out, nonce[NONCE_MAX];
    make_nonce(nonce, seq);
    memcpy(o, s->prefix, SS_SEAL_PREFIX);
    uint8_t *ct = o + SS_SEAL_PREFIX, *tag = ct + len;
    unsigned long long taglen;
    int rc;
    if (s->cipher == SS_CIPHER_AES256GCM)
        rc = gcm_seal(s->aes, ct, tag, plain, len, ad, adlen, nonce);
    else
        rc = crypto_aead_xchacha20poly1305_ietf_encrypt_detached(ct, tag, &taglen, plain, len, ad,
                                                                 adlen, NULL, nonce, s->subkey);
    if (rc != 0)
        return SS_ERR_CRYPTO;
    s->used = 1;
    s->last = seq;
    *outlen = len + SS_SEAL_OVERHEAD;
    return SS_OK;
}

/* ---- opening ---------------------------------------------------------------- */

typedef struct {
    EVP_CIPHER_CTX *aes;               /* made with the opener; keyed when has_aes */
    uint8_t subkey[SS_KEY_BYTES];
    uint8_t salt[SS_SALT_BYTES];
    uint8_t used, has_aes;
} session;

struct ss_opener {
    session cache[OPEN_CACHE];
    uint8_t key[SS_KEY_BYTES];
    uint8_t id[SS_KEY_ID_BYTES];
    unsigned next;                     /* slot the next new session replaces */
};

ss_err ss_opener_new(const ss_key_t *k, ss_opener_t **out)
{
    *out = NULL;
    ss_opener_t *o = secure_alloc(sizeof *o);
    if (!o)
        return SS_ERR_NOMEM;
    memcpy(o->key, k->key, SS_KEY_BYTES);
    memcpy(o->id, k->id, SS_KEY_ID_BYTES);
    *out = o;
    /* every context now, not at the first AES batch: an enclave opens
     * batches after its lockdown */
    for (unsigned i = 0; crypto_aead_aes256gcm_is_available() && i < OPEN_CACHE; i++) {
        if (!(o->cache[i].aes = gcm_new(0, NULL))) {
            ss_opener_destroy(out);
            return SS_ERR_CRYPTO;
        }
    }
    return SS_OK;
}

void ss_opener_destroy(ss_opener_t **o)
{
    if (!o || !*o)
        return;
    for (unsigned i = 0; i < OPEN_CACHE; i++)
        EVP_CIPHER_CTX_free((*o)->cache[i].aes);
    sodium_free(*o);
    *o = NULL;
}

static session *find_session(ss_opener_t *o, const uint8_t salt[SS_SALT_BYTES])
{
    for (unsigned i = 0; i < OPEN_CACHE; i++)
        if (o->cache[i].used && memcmp(o->cache[i].salt, salt, SS_SALT_BYTES) == 0)
            return &o->cache[i];
    session *s = &o->cache[o->next];
    o->next = (o->next + 1) % OPEN_CACHE;
    memcpy(s->salt, salt, SS_SALT_BYTES);
    derive(o->key, salt, s->subkey);
    s->used = 1;
    s->has_aes = 0;
    return s;
}

ss_err ss_open(ss_opener_t *o, uint64_t seq, const void *ad, size_t adlen,
               const void *sealed, size_t len, void *out, size_t *outlen,
               char *why, size_t whylen)
{
    const uint8_t *p = sealed;
    if (len < SS_SEAL_OVERHEAD) {
        ss_say(why, whylen, "too short (%zu bytes; a sealed payload has at least %d)", len,
            SS_SEAL_OVERHEAD);
        return SS_ERR_FORMAT;
    }
    if (!cipher_known(p[0])) {
        ss_say(why, whylen, "unknown cipher %u", p[0]);
        return SS_ERR_CRYPTO;
    }
    if (p[1] != 0) {
        ss_say(why, whylen, "reserved byte is %u, not 0", p[1]);
        return SS_ERR_FORMAT;
    }
    if (sodium_memcmp(p + 2, o->id, SS_KEY_ID_BYTES) != 0) {
        char got[2 * SS_KEY_ID_BYTES + 1], want[2 * SS_KEY_ID_BYTES + 1];
        ss_key_id_hex(p + 2, got);
        ss_key_id_hex(o->id, want);
        ss_say(why, whylen, "sealed with another key (key id %s, expected %s)", got, want);
        return SS_ERR_CRYPTO;
    }
    if (p[0] == SS_CIPHER_AES256GCM && !crypto_aead_aes256gcm_is_available()) {
        ss_say(why, whylen, "sealed with AES-256-GCM, which this CPU cannot run (no AES-NI)");
        return SS_ERR_CRYPTO;
    }
    session *s = find_session(o, p + 2 + SS_KEY_ID_BYTES);
    size_t n = len - SS_SEAL_OVERHEAD;
    const uint8_t *ct = p + SS_SEAL_PREFIX, *tag = ct + n;
    uint8_t nonce[NONCE_MAX];
    make_nonce(nonce, seq);
    int rc;
    if (p[0] == SS_CIPHER_AES256GCM) {
        rc = 0;
        if (!s->has_aes) {
            rc = EVP_DecryptInit_ex(s->aes, NULL, NULL, s->subkey, NULL) == 1 ? 0 : -1;
            s->has_aes = rc == 0;
        }
        if (rc == 0)
            rc = gcm_open(s->aes, out, ct, n, tag, ad, adlen, nonce);
    } else {
        rc = crypto_aead_xchacha20poly1305_ietf_decrypt_detached(out, NULL, ct, n, tag, ad, adlen,
                                                                 nonce, s->subkey);
    }
    if (rc != 0) {
        sodium_memzero(out, n);
        ss_say(why, whylen, "authentication failed (tampered, reordered or replayed under another "
            "position)");
        return SS_ERR_CRYPTO;
    }
    *outlen = n;
    return SS_OK;
}

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
    if (!(f->path = strdup(path)) || !(f->buf = malloc(READ_BUF))) {
        ss_say(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    f->cap = READ_BUF;
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
    if (!cipher_known(h[9])) {
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
    if (msgpack_unpack_next(&u, (const char *)plain, len, &off) != MSGPACK_UNPACK_SUCCESS
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
    if ((llen != 0 && llen != SS_LINEAGE_ENTRY) || plen < SS_SEAL_OVERHEAD
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
        if (plen > sizeof plain + SS_SEAL_OVERHEAD) {
            ss_say(err, errlen, "%s: end-of-stream payload of %u bytes is too long", where, plen);
            return SS_ERR_FORMAT;
        }
        if ((rc = ss_open(f->opener, h->seq, r, SS_HEADER_SIZE, pl, plen, plain, &n, why,
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
    size_t need = RECORD_LENGTHS + SS_HEADER_SIZE + llen + plen + SS_SEAL_OVERHEAD;
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
    ss_put_u32(e->rec + 4, (uint32_t)(plen + SS_SEAL_OVERHEAD));
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
    if ((rc = ss_sealer_new(k, o->cipher, &e.sealer)) != SS_OK) {
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
        if (!plain || plen - SS_SEAL_OVERHEAD > plaincap) {
            size_t c = plen - SS_SEAL_OVERHEAD < 64 ? 64 : plen - SS_SEAL_OVERHEAD;
            uint8_t *p = realloc(plain, c);
            if (!p) {
                ss_say(err, errlen, "out of memory for a batch of %zu bytes", c);
                rc = SS_ERR_NOMEM;
                goto out;
            }
            plain = p;
            plaincap = c;
        }
        rc = ss_open(f->opener, h.seq, raw, SS_HEADER_SIZE + llen, pl, plen, plain, &n, why,
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

