/*
 * test_crypto.c - keys, sealed batches and sealed files (lib/crypto/crypto.c,
 * docs/crypto.md): seal/open round trips with both ciphers, every flipped
 * byte of a sealed payload or of its associated data refused, another key
 * and another nonce refused with their messages, fresh salts per session so
 * nonces never repeat across restarts, key files (mode, overwrite, format),
 * and sealed files: byte-identical round trips on edge cases, any damaged,
 * truncated or extended file refused without leaving output behind.
 */
#include "test.h"

#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "wire/frame.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static ss_key_t key_a, key_b;
/* a stream session: a worker at position 1 of some run */
static const ss_maker worker1 = { .run = { 0x52, 0x55, 0x4e, 1 }, .role = SS_MAKER_WORKER, .pos = 1 };

static int group_setup(void **state)
{
    if (ss_crypto_init() != SS_OK)
        return -1;
    ss_key_generate(&key_a);
    ss_key_generate(&key_b);
    return 0;
}

static const ss_cipher ciphers[] = { SS_CIPHER_AES256GCM, SS_CIPHER_XCHACHA20 };
#define NCIPHERS (sizeof ciphers / sizeof ciphers[0])

static int cipher_usable(ss_cipher c)
{
    return c != SS_CIPHER_AES256GCM || crypto_aead_aes256gcm_is_available();
}

/* ---- sealed batches ----------------------------------------------------- */

static void seal_open_round_trip(void **state)
{
    static const char *const plains[] = { "", "x", "a batch of lines\nand more", NULL };
    uint8_t ad[SS_HEADER_SIZE + SS_LINEAGE_ENTRY];
    for (size_t i = 0; i < sizeof ad; i++)
        ad[i] = (uint8_t)(i * 7);
    for (size_t c = 0; c < NCIPHERS; c++) {
        if (!cipher_usable(ciphers[c]))
            continue;
        ss_sealer_t *s = NULL;
        ss_opener_t *o = NULL;
        assert_int_equal(ss_sealer_new(&key_a, ciphers[c], &worker1, &s), SS_OK);
        assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
        for (size_t i = 0; plains[i]; i++) {
            size_t len = strlen(plains[i]), slen = 0, plen = 0;
            uint8_t sealed[128], plain[128];
            uint64_t seq = 10 + i;
            assert_int_equal(ss_seal(s, seq, ad, sizeof ad, plains[i], len, sealed, &slen), SS_OK);
            assert_int_equal(slen, len + SS_SEAL_OVERHEAD);
            assert_int_equal(sealed[0], ciphers[c]);
            assert_int_equal(sealed[1], SS_MAKER_WORKER);
            assert_memory_equal(sealed + 2, key_a.id, SS_KEY_ID_BYTES);
            if (len > 4)
                assert_null(memmem(sealed, slen, plains[i], len));
            memset(plain, 0xee, sizeof plain);
            assert_int_equal(ss_open(o, seq, ad, sizeof ad, sealed, slen, plain, &plen, NULL, NULL, 0),
                             SS_OK);
            assert_int_equal(plen, len);
            assert_memory_equal(plain, plains[i], len);
        }
        ss_sealer_destroy(&s);
        ss_opener_destroy(&o);
        assert_null(s);
        assert_null(o);
    }
}

/* The sealed format, rebuilt from its definition (docs/crypto.md) with
 * libsodium alone: subkey = BLAKE2b(key; context || salt || run || role ||
 * pos), the run and position read from the payload's prefix, nonce = the
 * sequence number (8 bytes, little-endian) then zeros, ciphertext || tag.
 * What the product seals, libsodium opens, and the other way round, for
 * every cipher, for lengths around the 16-byte blocks and a 1 MiB batch. */
static void format_matches_libsodium(void **state)
{
    (void)state;
    static const char context[] = "securestreams batch v2";
    static const size_t lens[] = { 0, 1, 15, 16, 17, 1000, 1 << 20 };
    uint8_t ad[40];
    for (size_t i = 0; i < sizeof ad; i++)
        ad[i] = (uint8_t)(i * 3 + 1);
    uint8_t *plain = malloc((1 << 20) + 1), *sealed = malloc((1 << 20) + SS_SEAL_OVERHEAD),
            *back = malloc((1 << 20) + 1);
    for (size_t i = 0; i < (1 << 20); i++)
        plain[i] = (uint8_t)(i * 131 + 7);
    for (size_t c = 0; c < NCIPHERS; c++) {
        if (!cipher_usable(ciphers[c]))
            continue;
        ss_sealer_t *s = NULL;
        ss_opener_t *o = NULL;
        assert_int_equal(ss_sealer_new(&key_a, ciphers[c], &worker1, &s), SS_OK);
        assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
        for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
            size_t len = lens[l], slen = 0, blen = 0;
            uint64_t seq = 1000 + 2 * l;
            assert_int_equal(ss_seal(s, seq, ad, sizeof ad, plain, len, sealed, &slen), SS_OK);
            uint8_t msg[sizeof context - 1 + SS_SALT_BYTES + SS_RUN_BYTES + 3], subkey[32],
                nonce[24] = { 0 };
            size_t at = sizeof context - 1;
            memcpy(msg, context, at);
            memcpy(msg + at, sealed + 2 + SS_KEY_ID_BYTES, SS_SALT_BYTES);
            at += SS_SALT_BYTES;
            assert_memory_equal(sealed + SS_SEAL_PREFIX_FILE, worker1.run, SS_RUN_BYTES);
            memcpy(msg + at, worker1.run, SS_RUN_BYTES);
            at += SS_RUN_BYTES;
            msg[at++] = SS_MAKER_WORKER;
            assert_int_equal(sealed[1], SS_MAKER_WORKER);
            assert_int_equal(ss_get_u16(sealed + SS_SEAL_PREFIX_FILE + SS_RUN_BYTES), 1);
            ss_put_u16(msg + at, 1);
            crypto_generichash(subkey, sizeof subkey, msg, sizeof msg, key_a.key, SS_KEY_BYTES);
            for (int b = 0; b < 8; b++)
                nonce[b] = (uint8_t)(seq >> (8 * b));
            const uint8_t *ct = sealed + SS_SEAL_PREFIX, *tag = ct + len;
            int rc = ciphers[c] == SS_CIPHER_AES256GCM
                         ? crypto_aead_aes256gcm_decrypt_detached(back, NULL, ct, len, tag, ad, sizeof ad,
                                                                  nonce, subkey)
                         : crypto_aead_xchacha20poly1305_ietf_decrypt_detached(back, NULL, ct, len, tag,
                                                                               ad, sizeof ad, nonce, subkey);
            assert_int_equal(rc, 0);
            assert_memory_equal(back, plain, len);
            /* the other way: libsodium seals the next sequence number */
            seq++;
            for (int b = 0; b < 8; b++)
                nonce[b] = (uint8_t)(seq >> (8 * b));
            uint8_t *ct2 = sealed + SS_SEAL_PREFIX;
            if (ciphers[c] == SS_CIPHER_AES256GCM)
                crypto_aead_aes256gcm_encrypt_detached(ct2, ct2 + len, NULL, plain, len, ad, sizeof ad,
                                                       NULL, nonce, subkey);
            else
                crypto_aead_xchacha20poly1305_ietf_encrypt_detached(ct2, ct2 + len, NULL, plain, len, ad,
                                                                    sizeof ad, NULL, nonce, subkey);
            memset(back, 0, len + 1);
            assert_int_equal(ss_open(o, seq, ad, sizeof ad, sealed, slen, back, &blen, NULL, NULL, 0), SS_OK);
            assert_int_equal(blen, len);
            assert_memory_equal(back, plain, len);
        }
        ss_sealer_destroy(&s);
        ss_opener_destroy(&o);
    }
    free(plain);
    free(sealed);
    free(back);
}

/* Any changed byte of a sealed payload or of its associated data is refused. */
static void every_flipped_byte_fails(void **state)
{
    const char *msg = "DATA: 3 lines, 41 bytes of MessagePack!!";
    size_t len = strlen(msg);
    uint8_t ad[SS_HEADER_SIZE + SS_LINEAGE_ENTRY];
    for (size_t i = 0; i < sizeof ad; i++)
        ad[i] = (uint8_t)(0x30 + i);
    for (size_t c = 0; c < NCIPHERS; c++) {
        if (!cipher_usable(ciphers[c]))
            continue;
        ss_sealer_t *s = NULL;
        ss_opener_t *o = NULL;
        uint8_t sealed[128], plain[128];
        size_t slen, plen;
        char why[256];
        assert_int_equal(ss_sealer_new(&key_a, ciphers[c], &worker1, &s), SS_OK);
        assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
        assert_int_equal(ss_seal(s, 5, ad, sizeof ad, msg, len, sealed, &slen), SS_OK);
        for (size_t i = 0; i < slen; i++) {
            for (int bit = 0; bit < 8; bit += 7) {   /* the lowest and the highest bit */
                sealed[i] ^= (uint8_t)(1u << bit);
                why[0] = '\0';
                ss_err rc = ss_open(o, 5, ad, sizeof ad, sealed, slen, plain, &plen, NULL, why, sizeof why);
                if (rc == SS_OK)
                    fail_msg("%s: flipping bit %d of byte %zu went unnoticed",
                             ss_cipher_name(ciphers[c]), bit, i);
                assert_true(why[0] != '\0');
                sealed[i] ^= (uint8_t)(1u << bit);
            }
        }
        for (size_t i = 0; i < sizeof ad; i++) {
            ad[i] ^= 0x01;
            ss_err rc = ss_open(o, 5, ad, sizeof ad, sealed, slen, plain, &plen, NULL, why, sizeof why);
            if (rc != SS_ERR_CRYPTO)
                fail_msg("flipping byte %zu of the associated data: rc %d", i, rc);
            ASSERT_CONTAINS(why, "authentication failed");
            ad[i] ^= 0x01;
        }
        assert_int_equal(ss_open(o, 5, ad, sizeof ad, sealed, slen - 1, plain, &plen, NULL, why,
                                 sizeof why), SS_ERR_CRYPTO);
        assert_int_equal(ss_open(o, 5, ad, sizeof ad - 1, sealed, slen, plain, &plen, NULL, why,
                                 sizeof why), SS_ERR_CRYPTO);
        assert_int_equal(ss_open(o, 5, ad, sizeof ad, sealed, SS_SEAL_OVERHEAD - 1, plain, &plen, NULL,
                                 why, sizeof why), SS_ERR_FORMAT);
        ASSERT_CONTAINS(why, "too short");
        /* and the untouched payload still opens */
        assert_int_equal(ss_open(o, 5, ad, sizeof ad, sealed, slen, plain, &plen, NULL, why, sizeof why),
                         SS_OK);
        assert_memory_equal(plain, msg, len);
        ss_sealer_destroy(&s);
        ss_opener_destroy(&o);
    }
}

static void distinct_messages(void **state)
{
    ss_sealer_t *s = NULL;
    ss_opener_t *ob = NULL, *oa = NULL;
    uint8_t sealed[128], plain[128];
    size_t slen, plen;
    char why[256], ida[17], idb[17];
    assert_int_equal(ss_sealer_new(&key_a, ss_crypto_default_cipher(), &worker1, &s), SS_OK);
    assert_int_equal(ss_opener_new(&key_b, &ob), SS_OK);
    assert_int_equal(ss_opener_new(&key_a, &oa), SS_OK);
    assert_int_equal(ss_seal(s, 1, "ad", 2, "hello", 5, sealed, &slen), SS_OK);

    /* another key: named by both ids */
    assert_int_equal(ss_open(ob, 1, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why),
                     SS_ERR_CRYPTO);
    ss_key_id_hex(key_a.id, ida);
    ss_key_id_hex(key_b.id, idb);
    char want[128];
    snprintf(want, sizeof want, "sealed with another key (key id %s, expected %s)", ida, idb);
    assert_string_equal(why, want);

    /* another nonce (seq): authentication */
    assert_int_equal(ss_open(oa, 2, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why),
                     SS_ERR_CRYPTO);
    ASSERT_CONTAINS(why, "authentication failed (tampered, reordered, replayed under another "
                         "position");
    assert_int_equal(ss_open(oa, 1ull << 40, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why),
                     SS_ERR_CRYPTO);

    /* unknown cipher and a nonzero reserved byte */
    sealed[0] = 9;
    assert_int_equal(ss_open(oa, 1, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why),
                     SS_ERR_CRYPTO);
    assert_string_equal(why, "unknown cipher 9");
    sealed[0] = (uint8_t)ss_crypto_default_cipher();
    sealed[1] = 7;
    assert_int_equal(ss_open(oa, 1, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why),
                     SS_ERR_FORMAT);
    assert_string_equal(why, "unknown maker role 7");
    sealed[1] = SS_MAKER_WORKER;
    assert_int_equal(ss_open(oa, 1, "ad", 2, sealed, slen, plain, &plen, NULL, why, sizeof why), SS_OK);
    assert_memory_equal(plain, "hello", 5);
    ss_sealer_destroy(&s);
    ss_opener_destroy(&ob);
    ss_opener_destroy(&oa);
}

/* The maker a payload names (run, role, position) comes out of opening
 * authenticated: changing any byte of it in the prefix, or the role byte to
 * the other role, fails authentication; a rebound sealer names the new
 * maker; a file session (no maker) opens as role SS_MAKER_FILE. */
static void maker_is_bound(void **state)
{
    (void)state;
    ss_sealer_t *s = NULL, *f = NULL;
    ss_opener_t *o = NULL;
    uint8_t sealed[128], plain[128];
    size_t slen, plen;
    char why[256];
    ss_maker m, src = { .run = { 9, 9, 9 }, .role = SS_MAKER_SOURCE, .pos = 0 };
    assert_int_equal(ss_sealer_new(&key_a, ss_crypto_default_cipher(), &worker1, &s), SS_OK);
    assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
    assert_int_equal(ss_seal(s, 3, "ad", 2, "events", 6, sealed, &slen), SS_OK);
    assert_int_equal(ss_open(o, 3, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why), SS_OK);
    assert_memory_equal(m.run, worker1.run, SS_RUN_BYTES);
    assert_int_equal(m.role, SS_MAKER_WORKER);
    assert_int_equal(m.pos, 1);
    /* every byte of run and position, and the role turned into the other one */
    for (size_t i = SS_SEAL_PREFIX_FILE; i < SS_SEAL_PREFIX; i++) {
        sealed[i] ^= 0x01;
        assert_int_equal(ss_open(o, 3, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why),
                         SS_ERR_CRYPTO);
        ASSERT_CONTAINS(why, "authentication failed");
        sealed[i] ^= 0x01;
    }
    sealed[1] = SS_MAKER_SOURCE;
    assert_int_equal(ss_open(o, 3, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why),
                     SS_ERR_CRYPTO);
    sealed[1] = SS_MAKER_FILE;   /* read with the file layout: not the same subkey either */
    assert_int_equal(ss_open(o, 3, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why),
                     SS_ERR_CRYPTO);
    sealed[1] = SS_MAKER_WORKER;
    assert_int_equal(ss_open(o, 3, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why), SS_OK);
    /* rebound: the next payload names the new maker */
    assert_int_equal(ss_sealer_bind(s, &src), SS_OK);
    assert_int_equal(ss_seal(s, 4, "ad", 2, "events", 6, sealed, &slen), SS_OK);
    assert_int_equal(ss_open(o, 4, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why), SS_OK);
    assert_int_equal(m.role, SS_MAKER_SOURCE);
    assert_memory_equal(m.run, src.run, SS_RUN_BYTES);
    /* no sealer can be made or bound as a file record's maker or an unknown role */
    ss_maker bad = worker1;
    bad.role = SS_MAKER_FILE;
    assert_int_equal(ss_sealer_bind(s, &bad), SS_ERR_USAGE);
    bad.role = 3;
    assert_int_equal(ss_sealer_new(&key_a, ss_crypto_default_cipher(), &bad, &f), SS_ERR_USAGE);
    /* a file session: the old layout, role 0, and it cannot be rebound */
    assert_int_equal(ss_sealer_new(&key_a, ss_crypto_default_cipher(), NULL, &f), SS_OK);
    assert_int_equal(ss_seal(f, 1, "ad", 2, "events", 6, sealed, &slen), SS_OK);
    assert_int_equal(slen, 6 + SS_SEAL_OVERHEAD_FILE);
    assert_int_equal(sealed[1], 0);
    assert_int_equal(ss_open(o, 1, "ad", 2, sealed, slen, plain, &plen, &m, why, sizeof why), SS_OK);
    assert_int_equal(m.role, SS_MAKER_FILE);
    assert_int_equal(ss_sealer_bind(f, &worker1), SS_ERR_USAGE);
    ss_sealer_destroy(&s);
    ss_sealer_destroy(&f);
    ss_opener_destroy(&o);
}

/* Two sessions of one key (a restart) draw different salts: the same seq and
 * plaintext give different ciphertexts, and one opener reads both. */
static void nonces_never_repeat_across_restarts(void **state)
{
    for (size_t c = 0; c < NCIPHERS; c++) {
        if (!cipher_usable(ciphers[c]))
            continue;
        ss_sealer_t *s1 = NULL, *s2 = NULL;
        ss_opener_t *o = NULL;
        uint8_t a[128], b[128], plain[128];
        size_t alen, blen, plen;
        assert_int_equal(ss_sealer_new(&key_a, ciphers[c], &worker1, &s1), SS_OK);
        assert_int_equal(ss_sealer_new(&key_a, ciphers[c], &worker1, &s2), SS_OK);
        assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
        assert_int_equal(ss_seal(s1, 0, "h", 1, "same line", 9, a, &alen), SS_OK);
        assert_int_equal(ss_seal(s2, 0, "h", 1, "same line", 9, b, &blen), SS_OK);
        assert_int_equal(alen, blen);
        assert_memory_equal(a, b, 2 + SS_KEY_ID_BYTES);             /* cipher, key id */
        assert_memory_not_equal(a + 2 + SS_KEY_ID_BYTES, b + 2 + SS_KEY_ID_BYTES, SS_SALT_BYTES);
        assert_memory_not_equal(a + SS_SEAL_PREFIX, b + SS_SEAL_PREFIX, alen - SS_SEAL_PREFIX);
        assert_int_equal(ss_open(o, 0, "h", 1, a, alen, plain, &plen, NULL, NULL, 0), SS_OK);
        assert_memory_equal(plain, "same line", 9);
        assert_int_equal(ss_open(o, 0, "h", 1, b, blen, plain, &plen, NULL, NULL, 0), SS_OK);
        assert_memory_equal(plain, "same line", 9);
        ss_sealer_destroy(&s1);
        ss_sealer_destroy(&s2);
        ss_opener_destroy(&o);
    }
}

/* Within a session a seq may not be sealed twice, nor go back. */
static void sealer_refuses_reused_seq(void **state)
{
    ss_sealer_t *s = NULL;
    uint8_t out[128];
    size_t n;
    assert_int_equal(ss_sealer_new(&key_a, ss_crypto_default_cipher(), &worker1, &s), SS_OK);
    assert_int_equal(ss_seal(s, 0, NULL, 0, "a", 1, out, &n), SS_OK);
    assert_int_equal(ss_seal(s, 0, NULL, 0, "b", 1, out, &n), SS_ERR_USAGE);
    assert_int_equal(ss_seal(s, 7, NULL, 0, "c", 1, out, &n), SS_OK);
    assert_int_equal(ss_seal(s, 3, NULL, 0, "d", 1, out, &n), SS_ERR_USAGE);
    assert_int_equal(ss_seal(s, 8, NULL, 0, "e", 1, out, &n), SS_OK);
    ss_sealer_destroy(&s);
    ss_sealer_destroy(&s);   /* NULL is fine */
}

/* More sessions than the opener caches, interleaved: eviction re-derives. */
static void opener_cache_eviction(void **state)
{
    enum { N = 40 };
    ss_sealer_t *s[N];
    ss_opener_t *o = NULL;
    uint8_t sealed[N][128], plain[128];
    size_t slen[N], plen;
    assert_int_equal(ss_opener_new(&key_a, &o), SS_OK);
    for (int i = 0; i < N; i++) {
        char line[16];
        int n = snprintf(line, sizeof line, "line %d", i);
        assert_int_equal(ss_sealer_new(&key_a, ciphers[i % NCIPHERS] == SS_CIPHER_AES256GCM
                                                   && !cipher_usable(SS_CIPHER_AES256GCM)
                                               ? SS_CIPHER_XCHACHA20 : ciphers[i % NCIPHERS],
                                       &worker1, &s[i]), SS_OK);
        assert_int_equal(ss_seal(s[i], (uint64_t)i, "x", 1, line, (size_t)n, sealed[i], &slen[i]),
                         SS_OK);
    }
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < N; k++) {
            int i = (k * 17 + round) % N;
            char line[16];
            int n = snprintf(line, sizeof line, "line %d", i);
            assert_int_equal(ss_open(o, (uint64_t)i, "x", 1, sealed[i], slen[i], plain, &plen, NULL, NULL,
                                     0), SS_OK);
            assert_int_equal(plen, (size_t)n);
            assert_memory_equal(plain, line, plen);
        }
    }
    for (int i = 0; i < N; i++)
        ss_sealer_destroy(&s[i]);
    ss_opener_destroy(&o);
}

static void cipher_from_environment(void **state)
{
    const char *saved = getenv("SS_CIPHER");
    char *copy = saved ? strdup(saved) : NULL;
    setenv("SS_CIPHER", "xchacha20", 1);
    assert_int_equal(ss_crypto_init(), SS_OK);
    assert_int_equal(ss_crypto_default_cipher(), SS_CIPHER_XCHACHA20);
    setenv("SS_CIPHER", "rot13", 1);
    assert_int_equal(ss_crypto_init(), SS_ERR_USAGE);
    setenv("SS_CIPHER", "aes256gcm", 1);
    assert_int_equal(ss_crypto_init(),
                     crypto_aead_aes256gcm_is_available() ? SS_OK : SS_ERR_USAGE);
    unsetenv("SS_CIPHER");
    assert_int_equal(ss_crypto_init(), SS_OK);
    assert_int_equal(ss_crypto_default_cipher(), crypto_aead_aes256gcm_is_available()
                                                     ? SS_CIPHER_AES256GCM : SS_CIPHER_XCHACHA20);
    assert_string_equal(ss_cipher_name(SS_CIPHER_AES256GCM), "AES-256-GCM");
    assert_string_equal(ss_cipher_name(SS_CIPHER_XCHACHA20), "XChaCha20-Poly1305");
    if (copy)
        setenv("SS_CIPHER", copy, 1);
    free(copy);
}

/* ---- key files ------------------------------------------------------------ */

static void key_file_round_trip(void **state)
{
    const char *p = test_path("k1");
    char err[512];
    struct stat st;
    ss_key_t k;
    unlink(p);
    mode_t old = umask(0);   /* the file is 0600 whatever the umask */
    assert_int_equal(ss_key_save(&key_a, p, err, sizeof err), SS_OK);
    umask(old);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    memset(&k, 0, sizeof k);
    assert_int_equal(ss_key_load(&k, p, err, sizeof err), SS_OK);
    assert_memory_equal(k.key, key_a.key, SS_KEY_BYTES);
    assert_memory_equal(k.id, key_a.id, SS_KEY_ID_BYTES);

    /* the text format: three lines, the id in clear */
    size_t len;
    char *text = test_read_file(p, &len);
    char id[17];
    ss_key_id_hex(key_a.id, id);
    char want[64];
    snprintf(want, sizeof want, "securestreams-key 1\nid %s\nkey ", id);
    ASSERT_UINT_EQ(len, strlen(want) + 64 + 1);
    assert_memory_equal(text, want, strlen(want));
    free(text);

    /* never overwritten */
    assert_int_equal(ss_key_save(&key_b, p, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "already exists");
    assert_int_equal(ss_key_load(&k, p, err, sizeof err), SS_OK);
    assert_memory_equal(k.key, key_a.key, SS_KEY_BYTES);

    ss_key_cleanup(&k);
    static const uint8_t zero[sizeof k];
    assert_memory_equal(&k, zero, sizeof k);
    ss_key_cleanup(NULL);
}

static void key_file_mode_refused(void **state)
{
    static const mode_t modes[] = { 0644, 0640, 0604, 0602, 0620, 0660, 0666 };
    const char *p = test_path("k2");
    char err[512], want[512];
    ss_key_t k;
    unlink(p);
    assert_int_equal(ss_key_save(&key_a, p, err, sizeof err), SS_OK);
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        assert_int_equal(chmod(p, modes[i]), 0);
        assert_int_equal(ss_key_load(&k, p, err, sizeof err), SS_ERR_CRYPTO);
        snprintf(want, sizeof want, "%s: readable or writable by others (mode %04o); chmod 600 it",
                 p, (unsigned)modes[i]);
        assert_string_equal(err, want);
    }
    assert_int_equal(chmod(p, 0400), 0);
    assert_int_equal(ss_key_load(&k, p, err, sizeof err), SS_OK);
    assert_int_equal(ss_key_load(&k, test_path("no-such-key"), err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "no-such-key");
}

static void key_file_malformed(void **state)
{
    char id[17], hex[65], idb[17];
    ss_key_id_hex(key_a.id, id);
    ss_key_id_hex(key_b.id, idb);
    sodium_bin2hex(hex, sizeof hex, key_a.key, SS_KEY_BYTES);
    char good[160];
    snprintf(good, sizeof good, "securestreams-key 1\nid %s\nkey %s\n", id, hex);
    struct { const char *what; char text[256]; const char *line; } cases[] = {
        { "empty", "", ":1:" },
        { "another magic", "", ":1:" },
        { "version 2", "", ":1:" },
        { "id too short", "", ":2:" },
        { "id not hex", "", ":2:" },
        { "id of another key", "", ":2:" },
        { "key too short", "", ":3:" },
        { "key line missing", "", ":3:" },
        { "trailing text", "", ":4:" },
        { "CRLF", "", ":1:" },
        { "curve key file", "", ":1:" },
    };
    snprintf(cases[1].text, 256, "securestreams-kez 1\nid %s\nkey %s\n", id, hex);
    snprintf(cases[2].text, 256, "securestreams-key 2\nid %s\nkey %s\n", id, hex);
    snprintf(cases[3].text, 256, "securestreams-key 1\nid %.14s\nkey %s\n", id, hex);
    snprintf(cases[4].text, 256, "securestreams-key 1\nid %.15sg\nkey %s\n", id, hex);
    snprintf(cases[5].text, 256, "securestreams-key 1\nid %s\nkey %s\n", idb, hex);
    snprintf(cases[6].text, 256, "securestreams-key 1\nid %s\nkey %.62s\n", id, hex);
    snprintf(cases[7].text, 256, "securestreams-key 1\nid %s\n", id);
    snprintf(cases[8].text, 256, "%sextra\n", good);
    snprintf(cases[9].text, 256, "securestreams-key 1\r\nid %s\r\nkey %s\r\n", id, hex);
    snprintf(cases[10].text, 256, "#   ****  Generated on 2024 by CZMQ  ****\ncurve\n");
    const char *p = test_path("k3");
    char err[512];
    ss_key_t k;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unlink(p);
        test_write_file(p, cases[i].text, strlen(cases[i].text), 0644);
        assert_int_equal(chmod(p, 0600), 0);
        err[0] = '\0';
        ss_err rc = ss_key_load(&k, p, err, sizeof err);
        if (rc != SS_ERR_FORMAT)
            fail_msg("%s: accepted (rc %d)", cases[i].what, rc);
        ASSERT_CONTAINS(err, p);
        ASSERT_CONTAINS(err, cases[i].line);
        ASSERT_NOT_CONTAINS(err, hex);    /* no key byte in a message */
    }
    /* the good text, and without its final newline, loads */
    unlink(p);
    test_write_file(p, good, strlen(good) - 1, 0644);
    assert_int_equal(chmod(p, 0600), 0);
    assert_int_equal(ss_key_load(&k, p, err, sizeof err), SS_OK);
    assert_memory_equal(k.key, key_a.key, SS_KEY_BYTES);
}

/* ---- sealed files --------------------------------------------------------- */

/* Encrypt then decrypt `text`; the output must be byte-identical. Returns
 * the number of DATA records the sealed file holds (walked with the reader). */
static size_t file_round_trip(const char *text, size_t len, int header, size_t batch,
                              ss_cipher cipher, int *header_lines)
{
    const char *in = test_path("rt.in"), *sealed = test_path("rt.sealed"), *out = test_path("rt.out");
    char err[1024];
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    o.header = header;
    o.batch_bytes = batch;
    o.cipher = cipher;
    unlink(out);
    test_write_file(in, text, len, 0644);
    if (ss_sealed_file_encrypt(in, sealed, &key_a, &o, err, sizeof err) != SS_OK)
        fail_msg("encrypt: %s", err);
    if (ss_sealed_file_decrypt(sealed, out, &key_a, "KEY", err, sizeof err) != SS_OK)
        fail_msg("decrypt: %s", err);
    size_t got;
    uint8_t *back = (uint8_t *)test_read_file(out, &got);
    assert_int_equal(got, len);
    assert_memory_equal(back, text, len);
    free(back);
    assert_false(test_exists(test_path("rt.out.tmp")));
    assert_false(test_exists(test_path("rt.sealed.tmp")));

    /* walk it with the reader: records in order, lineage (file id, seq) */
    ss_sealed_file_t *f = NULL;
    uint32_t stream = 0;
    assert_int_equal(ss_sealed_file_probe(sealed, &stream), 1);
    assert_int_equal(stream, SS_DEFAULT_STREAM);
    assert_int_equal(ss_sealed_file_open(sealed, &key_a, &f, err, sizeof err), SS_OK);
    assert_int_equal(ss_sealed_file_stream(f), SS_DEFAULT_STREAM);
    *header_lines = ss_sealed_file_header_lines(f);
    size_t n = 0;
    uint64_t lines = 0;
    for (;;) {
        ss_header_t h;
        const uint8_t *lin, *pl;
        size_t llen, plen;
        ss_err rc = ss_sealed_file_next(f, &h, &lin, &llen, &pl, &plen, err, sizeof err);
        if (rc == SS_ERR_CLOSED)
            break;
        if (rc != SS_OK)
            fail_msg("next: %s", err);
        assert_int_equal(h.type, SS_MSG_DATA);
        assert_int_equal(h.flags, SS_HDR_SEALED);
        assert_int_equal(h.seq, n);
        assert_int_equal(h.producer, ss_sealed_file_id(f));
        assert_int_equal(h.origin, lines + 1);
        assert_int_equal(llen, SS_LINEAGE_ENTRY);
        assert_int_equal(ss_lineage_get(lin, 0).source, ss_sealed_file_id(f));
        assert_int_equal(ss_lineage_get(lin, 0).seq, n);
        ASSERT_UINT_GE(plen, SS_SEAL_OVERHEAD_FILE);
        if (*header_lines && n == 0)
            assert_int_equal(h.count, 1);
        lines += h.count;
        n++;
    }
    assert_int_equal(ss_sealed_file_next(f, NULL, NULL, NULL, NULL, NULL, err, sizeof err),
                     SS_ERR_CLOSED);
    ss_sealed_file_close(&f);
    assert_null(f);
    return n;
}

static void sealed_file_edge_cases(void **state)
{
    static char longline[200001];
    memset(longline, 'L', sizeof longline - 1);
    struct {
        const char *what;
        const char *text;
        size_t len;            /* 0: strlen */
        int header;
        size_t batch;
        size_t records;        /* DATA records expected */
        int header_lines;
    } cases[] = {
        { "empty file", "", 0, 1, 65536, 0, 0 },
        { "empty file, no header", "", 0, 0, 65536, 0, 0 },
        { "header only", "a,b,c\n", 0, 1, 65536, 1, 1 },
        { "header only, no newline", "a,b,c", 0, 1, 65536, 1, 1 },
        { "header and rows", "a,b\n1,2\n3,4\n", 0, 1, 65536, 2, 1 },
        { "no final newline", "a,b\n1,2\n3,4", 0, 1, 65536, 2, 1 },
        { "no header", "1,2\n3,4\n", 0, 0, 65536, 1, 0 },
        { "CRLF lines", "a,b\r\n1,2\r\n3,4\r\n", 0, 1, 65536, 2, 1 },
        { "CRLF, last without", "a\r\n1\r\n2\r", 0, 1, 65536, 2, 1 },
        { "empty lines", "\n\n\n", 0, 0, 65536, 1, 0 },
        { "one newline", "\n", 0, 1, 65536, 1, 1 },
        { "NUL bytes", "a\0b\n\0\n", 6, 0, 65536, 1, 0 },
        { "a line longer than a batch", longline, 0, 0, 65536, 1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        for (size_t c = 0; c < NCIPHERS; c++) {
            if (!cipher_usable(ciphers[c]))
                continue;
            int hl = -1;
            size_t n = file_round_trip(cases[i].text, len, cases[i].header, cases[i].batch,
                                       ciphers[c], &hl);
            if (n != cases[i].records || hl != cases[i].header_lines)
                fail_msg("%s: %zu records, header_lines %d; expected %zu, %d", cases[i].what, n,
                         hl, cases[i].records, cases[i].header_lines);
        }
    }
}

/* Lines around a long one, and many small batches. */
static void sealed_file_many_batches(void **state)
{
    size_t cap = 3u << 20, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    len += (size_t)snprintf(text, cap, "Year,Month,Delay\r\n");
    for (int i = 0; len < cap - 400000 && i < 60000; i++) {
        if (i == 1000) {   /* a line longer than a batch, amid others */
            memset(text + len, 'x', 300000);
            len += 300000;
            text[len++] = '\n';
        }
        len += (size_t)snprintf(text + len, cap - len, "%d,%d,%s\n", 1990 + i % 30, i % 12,
                                i % 7 ? "12" : "");
    }
    int hl;
    size_t n = file_round_trip(text, len, 1, 1024, SS_CIPHER_XCHACHA20, &hl);
    ASSERT_UINT_GT(n, 500);
    assert_int_equal(hl, 1);
    n = file_round_trip(text, len - 1, 0, 64, ss_crypto_default_cipher(), &hl);
    ASSERT_UINT_GT(n, 5000);
    assert_int_equal(hl, 0);
    free(text);
}

static void sealed_file_line_too_long(void **state)
{
    size_t len = SS_MAX_MESSAGE + 10;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, 'y', len);
    text[len - 1] = '\n';
    const char *in = test_path("long.in"), *out = test_path("long.sealed");
    test_write_file(in, text, len, 0644);
    free(text);
    unlink(out);
    char err[1024];
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    assert_int_equal(ss_sealed_file_encrypt(in, out, &key_a, &o, err, sizeof err), SS_ERR_TOOBIG);
    ASSERT_CONTAINS(err, "long.in:1: line");
    assert_false(test_exists(out));
    assert_false(test_exists(test_path("long.sealed.tmp")));
    unlink(in);
}

/* A sealed file of several batches for the damage tests; returns its bytes. */
static uint8_t *make_sealed(const char *name, size_t *len)
{
    char text[20000];
    size_t n = 0;
    n += (size_t)snprintf(text, sizeof text, "h1,h2\n");
    for (int i = 0; n < sizeof text - 64; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "row %d,%d\n", i, i * i);
    const char *in = test_path("dmg.in");
    test_write_file(in, text, n, 0644);
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    o.batch_bytes = 2048;
    char err[512];
    if (ss_sealed_file_encrypt(in, test_path(name), &key_a, &o, err, sizeof err) != SS_OK)
        fail_msg("%s", err);
    return (uint8_t *)test_read_file(test_path(name), len);
}

/* decrypt must fail and leave neither OUT nor OUT.tmp; returns its message. */
static void must_fail(const uint8_t *data, size_t len, const char *expect, const char *what)
{
    static char err[1024];
    const char *bad = test_path("bad.sealed"), *out = test_path("bad.out");
    test_write_file(bad, data, len, 0644);
    unlink(out);
    err[0] = '\0';
    if (ss_sealed_file_decrypt(bad, out, &key_a, "KEY", err, sizeof err) == SS_OK)
        fail_msg("%s: decrypt accepted it", what);
    if (test_exists(out) || test_exists(test_path("bad.out.tmp")))
        fail_msg("%s: output left behind", what);
    if (expect && !strstr(err, expect))
        fail_msg("%s: message \"%s\" lacks \"%s\"", what, err, expect);
}

static void sealed_file_any_flipped_byte_fails(void **state)
{
    size_t len;
    uint8_t *data = make_sealed("flip.sealed", &len);
    ASSERT_UINT_GT(len, 8000);
    size_t positions[300], np = 0;
    for (size_t i = 0; i < SS_SEALED_FILE_HEADER; i++)   /* the whole file header */
        positions[np++] = i;
    for (size_t i = 0; i < 100; i++)                     /* spread over the records */
        positions[np++] = SS_SEALED_FILE_HEADER + i * (len - SS_SEALED_FILE_HEADER) / 100;
    for (size_t i = 0; i < 120; i++)                     /* the last record: the EOS */
        positions[np++] = len - 120 + i;
    for (size_t k = 0; k < np; k++) {
        size_t i = positions[k];
        for (int v = 0; v < 2; v++) {
            uint8_t flip = v ? 0x80 : 0x01;
            char what[64];
            snprintf(what, sizeof what, "byte %zu ^ 0x%02x", i, flip);
            data[i] ^= flip;
            must_fail(data, len, NULL, what);
            data[i] ^= flip;
        }
    }
    must_fail(data, 0, "not a sealed file", "empty");
    /* the undamaged file still decrypts */
    char err[512];
    test_write_file(test_path("bad.sealed"), data, len, 0644);
    assert_int_equal(ss_sealed_file_decrypt(test_path("bad.sealed"), test_path("bad.out"), &key_a, "KEY",
                                            err, sizeof err), SS_OK);
    free(data);
}

/* Offsets of every record (the file header excluded), from the framing. */
static size_t record_offsets(const uint8_t *d, size_t len, size_t *off, size_t max)
{
    size_t n = 0, p = SS_SEALED_FILE_HEADER;
    while (p + 8 <= len && n < max) {
        off[n++] = p;
        p += 8 + SS_HEADER_SIZE + ss_get_u32(d + p) + ss_get_u32(d + p + 4);
    }
    assert_int_equal(p, len);
    return n;
}

static void sealed_file_truncated_or_extended(void **state)
{
    size_t len, off[64];
    uint8_t *data = make_sealed("trunc.sealed", &len);
    size_t n = record_offsets(data, len, off, 64);
    ASSERT_UINT_GE(n, 6);   /* batches and the EOS */

    must_fail(data, 30, "truncated in the file header", "30 bytes");
    must_fail(data, SS_SEALED_FILE_HEADER, "truncated after the file header", "header only");
    must_fail(data, SS_SEALED_FILE_HEADER + 5, "truncated after the file header", "lengths cut");
    must_fail(data, off[1], "truncated after batch 0 (no end-of-stream record)", "after batch 0");
    must_fail(data, off[3] + 100, "truncated after batch 2", "inside batch 3");
    must_fail(data, off[n - 1], "truncated after batch", "before the EOS");
    char want[64];
    snprintf(want, sizeof want, "truncated after batch %zu", n - 2);
    must_fail(data, off[n - 1], want, "before the EOS, batch number");
    must_fail(data, len - 1, "truncated", "EOS cut short");

    uint8_t *more = malloc(2 * len);
    assert_non_null(more);
    memcpy(more, data, len);
    memset(more + len, 0, 64);
    must_fail(more, len + 1, "after the end-of-stream", "one byte appended");
    must_fail(more, len + 64, "after the end-of-stream", "zeros appended");
    memcpy(more + len, data + off[n - 1], len - off[n - 1]);   /* the EOS twice */
    must_fail(more, len + (len - off[n - 1]), "after the end-of-stream", "EOS repeated");
    free(more);

    /* a record dropped, or two swapped: out of order */
    uint8_t *cut = malloc(len);
    assert_non_null(cut);
    size_t r2 = off[3] - off[2];
    memcpy(cut, data, off[2]);
    memcpy(cut + off[2], data + off[3], len - off[3]);
    must_fail(cut, len - r2, "out of order", "batch 2 dropped");
    free(cut);
    free(data);
}

/* A record of another file sealed with the same key does not fit in. */
static void sealed_file_spliced_record(void **state)
{
    size_t alen, blen, aoff[64], boff[64];
    uint8_t *a = make_sealed("spl-a.sealed", &alen);
    uint8_t *b = make_sealed("spl-b.sealed", &blen);
    size_t na = record_offsets(a, alen, aoff, 64);
    size_t nb = record_offsets(b, blen, boff, 64);
    assert_int_equal(na, nb);
    assert_int_equal(alen, blen);
    assert_int_equal(aoff[2], boff[2]);
    assert_int_equal(aoff[3], boff[3]);
    uint8_t *mix = malloc(alen);
    assert_non_null(mix);
    memcpy(mix, a, alen);
    memcpy(mix + aoff[2], b + boff[2], aoff[3] - aoff[2]);   /* b's batch 2 in a */
    must_fail(mix, alen, "producer is not the file id", "spliced batch");
    free(mix);
    free(a);
    free(b);
}

static void sealed_file_another_key(void **state)
{
    size_t len;
    uint8_t *data = make_sealed("key.sealed", &len);
    char err[1024], ida[17], idb[17], want[256];
    ss_key_id_hex(key_a.id, ida);
    ss_key_id_hex(key_b.id, idb);
    const char *out = test_path("key.out");
    unlink(out);
    assert_int_equal(ss_sealed_file_decrypt(test_path("key.sealed"), out, &key_b, "B.key", err,
                                            sizeof err), SS_ERR_CRYPTO);
    snprintf(want, sizeof want, "%s was sealed with another key (key id %s; B.key has %s)",
             test_path("key.sealed"), ida, idb);
    assert_string_equal(err, want);
    assert_false(test_exists(out));
    ss_sealed_file_t *f = NULL;
    assert_int_equal(ss_sealed_file_open(test_path("key.sealed"), &key_b, &f, err, sizeof err),
                     SS_ERR_CRYPTO);
    assert_null(f);
    ASSERT_CONTAINS(err, "another key");
    free(data);
}

static void sealed_file_probe(void **state)
{
    uint32_t stream = 0;
    test_write_file(test_path("plain.csv"), "a,b\n1,2\n", 8, 0644);
    assert_int_equal(ss_sealed_file_probe(test_path("plain.csv"), &stream), 0);
    test_write_file(test_path("tiny"), "SS", 2, 0644);
    assert_int_equal(ss_sealed_file_probe(test_path("tiny"), &stream), 0);
    errno = 0;
    assert_int_equal(ss_sealed_file_probe(test_path("missing"), &stream), -1);
    assert_int_equal(errno, ENOENT);

    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    o.stream = 0x12345678;
    char err[512];
    assert_int_equal(ss_sealed_file_encrypt(test_path("plain.csv"), test_path("probe.sealed"), &key_a, &o,
                                            err, sizeof err), SS_OK);
    assert_int_equal(ss_sealed_file_probe(test_path("probe.sealed"), &stream), 1);
    assert_int_equal(stream, 0x12345678);
    /* the plaintext is nowhere in the sealed file */
    size_t len;
    uint8_t *d = (uint8_t *)test_read_file(test_path("probe.sealed"), &len);
    assert_null(memmem(d, len, "1,2", 3));
    assert_null(memmem(d, len, "a,b", 3));
    free(d);
}

/* A failed encrypt leaves no OUT and does not touch an existing one. */
static void failed_output_untouched(void **state)
{
    char out[256];
    snprintf(out, sizeof out, "%s", test_path("keep.out"));
    test_write_file(out, "precious", 8, 0644);
    char err[512];
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    assert_int_equal(ss_sealed_file_encrypt(test_path("no-such-input"), out, &key_a, &o, err,
                                            sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "no-such-input");
    size_t len;
    uint8_t *d = (uint8_t *)test_read_file(out, &len);
    assert_int_equal(len, 8);
    assert_memory_equal(d, "precious", 8);
    free(d);
    must_fail((const uint8_t *)"SSSEALED", 8, "truncated in the file header", "magic only");
    assert_int_equal(ss_sealed_file_decrypt(test_path("bad.sealed"), out, &key_a, "KEY", err,
                                            sizeof err), SS_ERR_FORMAT);
    d = (uint8_t *)test_read_file(out, &len);
    assert_int_equal(len, 8);
    free(d);
}

/* OUT cannot be replaced (it is a directory): nothing is left behind. */
static void output_rename_fails(void **state)
{
    char err[512], out[256];
    size_t len;
    uint8_t *data = make_sealed("ren.sealed", &len);
    free(data);
    snprintf(out, sizeof out, "%s", test_path("ren.dir"));
    assert_int_equal(mkdir(out, 0700), 0);
    test_write_file(test_path("ren.dir/x"), "x", 1, 0644);
    assert_int_equal(ss_sealed_file_decrypt(test_path("ren.sealed"), out, &key_a, "KEY", err,
                                            sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "ren.dir");
    assert_false(test_exists(test_path("ren.dir.tmp")));
    assert_true(test_exists(test_path("ren.dir/x")));
}

/*
 * Files sealed with the right key but not as encrypt writes them (a buggy or
 * hostile key holder): the end of stream must match what came before.
 */
typedef struct {
    int fd;
    ss_sealer_t *s;
    uint64_t id;
} forger;

static void forge_header(forger *fg, const char *path, int header_lines)
{
    uint8_t h[SS_SEALED_FILE_HEADER] = { 0 };
    fg->id = 0x0102030405060708ull;
    fg->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_INT_GE(fg->fd, 0);
    assert_int_equal(ss_sealer_new(&key_a, SS_CIPHER_XCHACHA20, NULL, &fg->s), SS_OK);
    memcpy(h, SS_SEALED_MAGIC, 8);
    h[8] = 1;
    h[9] = SS_CIPHER_XCHACHA20;
    ss_put_u16(h + 10, (uint16_t)header_lines);
    memcpy(h + 16, key_a.id, SS_KEY_ID_BYTES);
    ss_put_u64(h + 24, fg->id);
    ss_put_u32(h + 32, SS_DEFAULT_STREAM);
    assert_int_equal(write(fg->fd, h, sizeof h), (ssize_t)sizeof h);
}

static void forge_record(forger *fg, int type, uint16_t flags, uint64_t seq, uint32_t count,
                         uint64_t origin, const void *plain, size_t len)
{
    uint8_t rec[1024];
    ss_header_t h = { .type = (uint8_t)type, .flags = flags, .stream = SS_DEFAULT_STREAM,
                      .producer = fg->id, .seq = seq, .count = count, .origin = origin };
    size_t llen = type == SS_MSG_DATA ? SS_LINEAGE_ENTRY : 0, slen;
    ASSERT_UINT_LT(len + 200, sizeof rec);
    ss_header_encode(&h, rec + 8);
    if (llen)
        ss_lineage_put(rec + 48, 0, (ss_lineage_id){ fg->id, seq });
    assert_int_equal(ss_seal(fg->s, seq, rec + 8, SS_HEADER_SIZE + llen, plain, len,
                             rec + 48 + llen, &slen), SS_OK);
    ss_put_u32(rec, (uint32_t)llen);
    ss_put_u32(rec + 4, (uint32_t)slen);
    size_t n = 48 + llen + slen;
    assert_int_equal(write(fg->fd, rec, n), (ssize_t)n);
}

/* {batches, records, header_lines, final_newline} in that order, or a map
 * with one more key when extra is set. */
static size_t forge_eos(uint8_t *p, uint64_t batches, uint64_t records, uint64_t hl, int fnl,
                        int extra)
{
    size_t n = 0;
    p[n++] = (uint8_t)(0x80 | (extra ? 5 : 4));
    static const char *const k[] = { "batches", "records", "header_lines" };
    uint64_t v[] = { batches, records, hl };
    for (int i = 0; i < 3; i++) {
        p[n++] = (uint8_t)(0xa0 | strlen(k[i]));
        memcpy(p + n, k[i], strlen(k[i]));
        n += strlen(k[i]);
        ASSERT_UINT_LT(v[i], 128);
        p[n++] = (uint8_t)v[i];
    }
    p[n++] = 0xa0 | 13;
    memcpy(p + n, "final_newline", 13);
    n += 13;
    p[n++] = fnl ? 0xc3 : 0xc2;
    if (extra) {
        p[n++] = 0xa1;
        p[n++] = 'x';
        p[n++] = 0x01;
    }
    return n;
}

static void sealed_file_forged_counts(void **state)
{
    /* the batch: ["h", "1", "2"] as a MessagePack array of strings */
    static const uint8_t batch0[] = { 0x91, 0xa1, 'h' };
    static const uint8_t batch1[] = { 0x92, 0xa1, '1', 0xa1, '2' };
    struct {
        const char *what;
        uint64_t batches, records, hl;
        int fnl, extra, file_hl;
        uint16_t flags;   /* of batch 1 */
        const char *expect;
    } cases[] = {
        { "correct", 2, 3, 1, 1, 0, 1, SS_HDR_SEALED, NULL },
        { "batches", 3, 3, 1, 1, 0, 1, SS_HDR_SEALED, "the end of stream says" },
        { "records", 2, 4, 1, 1, 0, 1, SS_HDR_SEALED, "the end of stream says" },
        { "header lines", 2, 3, 0, 1, 0, 1, SS_HDR_SEALED, "the end of stream says" },
        { "file header lines", 2, 3, 1, 1, 0, 0, SS_HDR_SEALED, "the end of stream says" },
        { "two header lines", 2, 3, 2, 1, 0, 2, SS_HDR_SEALED, "damaged file header" },
        { "extra key", 2, 3, 1, 1, 1, 1, SS_HDR_SEALED, "end-of-stream record" },
        { "batch not flagged sealed", 2, 3, 1, 1, 0, 1, 0, "not flagged sealed" },
        { "unknown flag", 2, 3, 1, 1, 0, 1, SS_HDR_SEALED | 0x8, "not flagged sealed" },
    };
    char err[1024];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        forger fg;
        uint8_t eos[64];
        forge_header(&fg, test_path("forged"), cases[i].file_hl);
        forge_record(&fg, SS_MSG_DATA, SS_HDR_SEALED, 0, 1, 1, batch0, sizeof batch0);
        forge_record(&fg, SS_MSG_DATA, cases[i].flags, 1, 2, 2, batch1, sizeof batch1);
        size_t n = forge_eos(eos, cases[i].batches, cases[i].records, cases[i].hl, cases[i].fnl,
                             cases[i].extra);
        forge_record(&fg, SS_MSG_EOS, SS_HDR_SEALED, 2, 0, 0, eos, n);
        close(fg.fd);
        ss_sealer_destroy(&fg.s);
        unlink(test_path("forged.out"));
        ss_err rc = ss_sealed_file_decrypt(test_path("forged"), test_path("forged.out"), &key_a, "KEY", err,
                                           sizeof err);
        if (!cases[i].expect) {
            if (rc != SS_OK)
                fail_msg("%s: %s", cases[i].what, err);
            size_t len;
            uint8_t *d = (uint8_t *)test_read_file(test_path("forged.out"), &len);
            assert_int_equal(len, 6);
            assert_memory_equal(d, "h\n1\n2\n", 6);
            free(d);
        } else {
            if (rc == SS_OK)
                fail_msg("%s: accepted", cases[i].what);
            ASSERT_CONTAINS(err, cases[i].expect);
            assert_false(test_exists(test_path("forged.out")));
        }
    }
    /* a batch whose first line number does not follow, and a header batch
     * of two lines: refused although every count adds up */
    static const uint8_t two[] = { 0x92, 0xa1, 'h', 0xa1, '1' }, one[] = { 0x91, 0xa1, '2' };
    for (int v = 0; v < 2; v++) {
        forger fg;
        uint8_t eos[64];
        forge_header(&fg, test_path("forged"), 1);
        if (v == 0) {
            forge_record(&fg, SS_MSG_DATA, SS_HDR_SEALED, 0, 1, 1, batch0, sizeof batch0);
            forge_record(&fg, SS_MSG_DATA, SS_HDR_SEALED, 1, 2, 3, batch1, sizeof batch1);
        } else {
            forge_record(&fg, SS_MSG_DATA, SS_HDR_SEALED, 0, 2, 1, two, sizeof two);
            forge_record(&fg, SS_MSG_DATA, SS_HDR_SEALED, 1, 1, 3, one, sizeof one);
        }
        size_t n = forge_eos(eos, 2, 3, 1, 1, 0);
        forge_record(&fg, SS_MSG_EOS, SS_HDR_SEALED, 2, 0, 0, eos, n);
        close(fg.fd);
        ss_sealer_destroy(&fg.s);
        assert_int_equal(ss_sealed_file_decrypt(test_path("forged"), test_path("forged.out"), &key_a,
                                                "KEY", err, sizeof err), SS_ERR_FORMAT);
        ASSERT_CONTAINS(err, "line count or first line number");
        ASSERT_CONTAINS(err, v == 0 ? "record 1" : "record 0");
    }

    /* an empty file whose end of stream says the last line lacks a newline */
    forger fg;
    uint8_t eos[64];
    forge_header(&fg, test_path("forged"), 0);
    size_t n = forge_eos(eos, 0, 0, 0, 0, 0);
    forge_record(&fg, SS_MSG_EOS, SS_HDR_SEALED, 0, 0, 0, eos, n);
    close(fg.fd);
    ss_sealer_destroy(&fg.s);
    assert_int_equal(ss_sealed_file_decrypt(test_path("forged"), test_path("forged.out"), &key_a, "KEY",
                                            err, sizeof err), SS_ERR_FORMAT);
    ASSERT_CONTAINS(err, "the end of stream says");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(seal_open_round_trip, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(format_matches_libsodium, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(every_flipped_byte_fails, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(distinct_messages, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(maker_is_bound, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(nonces_never_repeat_across_restarts, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealer_refuses_reused_seq, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(opener_cache_eviction, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(cipher_from_environment, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(key_file_round_trip, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(key_file_mode_refused, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(key_file_malformed, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_edge_cases, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_many_batches, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_line_too_long, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_any_flipped_byte_fails, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_truncated_or_extended, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_spliced_record, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_another_key, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_probe, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(failed_output_untouched, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(output_rename_fails, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(sealed_file_forged_counts, test_dir_setup, test_dir_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
