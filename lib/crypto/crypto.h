/*
 * crypto.h - data keys, sealed batches and sealed files (docs/crypto.md).
 *
 * A data key is 32 random bytes with an 8-byte key id (the first bytes of its
 * BLAKE2b-256 hash). A batch payload is sealed with an AEAD: AES-256-GCM when
 * the CPU has AES-NI, else XChaCha20-Poly1305 (libsodium), under a per-session
 * subkey derived from the data key and a fresh 128-bit session salt; the nonce
 * is the message's sequence number from the stream header, and the header and
 * lineage frames are the associated data. A (salt, seq) pair never repeats, so
 * a nonce never repeats under one subkey, across restarts too.
 *
 * Sealed payload layout: cipher (1) | reserved 0 (1) | key id (8) | salt (16)
 * | ciphertext | tag (16). SS_SEAL_OVERHEAD bytes longer than the plaintext.
 */
#ifndef SS_CRYPTO_H
#define SS_CRYPTO_H

#include "base/common.h"
#include "wire/frame.h"

#define SS_KEY_BYTES 32
#define SS_KEY_ID_BYTES 8
#define SS_SALT_BYTES 16
#define SS_TAG_BYTES 16
#define SS_SEAL_PREFIX (2 + SS_KEY_ID_BYTES + SS_SALT_BYTES)
#define SS_SEAL_OVERHEAD (SS_SEAL_PREFIX + SS_TAG_BYTES)
/* The largest batch payload a sealed file holds: one sealed message of at
 * most SS_MAX_MESSAGE bytes with a single lineage entry. */
#define SS_SEALED_BATCH_MAX (SS_MAX_MESSAGE - SS_HEADER_SIZE - SS_LINEAGE_ENTRY - SS_SEAL_OVERHEAD)

typedef enum { SS_CIPHER_AES256GCM = 1, SS_CIPHER_XCHACHA20 = 2 } ss_cipher;

typedef struct {
    uint8_t key[SS_KEY_BYTES];
    uint8_t id[SS_KEY_ID_BYTES];
} ss_key_t;

/* Must be called once per process before anything else here (sodium_init);
 * calling it again is harmless. Also checks SS_CIPHER: an unknown value, or
 * SS_CIPHER=aes256gcm on a CPU without AES-NI, is SS_ERR_USAGE with a message
 * on stderr; libsodium failing to start is SS_ERR_CRYPTO. */
ss_err ss_crypto_init(void);

/* The cipher this machine uses: AES-256-GCM with AES-NI, else XChaCha20;
 * SS_CIPHER=xchacha20 in the environment forces the latter (SS_CIPHER=
 * aes256gcm asks for the former; ss_crypto_init refused it if unavailable). */
ss_cipher ss_crypto_default_cipher(void);
const char *ss_cipher_name(ss_cipher c);

/* A new random key. */
void ss_key_generate(ss_key_t *k);
/* Wipe a key the caller owns (sodium_memzero). Accepts NULL. */
void ss_key_cleanup(ss_key_t *k);
/* The key id as 16 lowercase hex digits and a NUL. */
void ss_key_id_hex(const uint8_t id[SS_KEY_ID_BYTES], char out[2 * SS_KEY_ID_BYTES + 1]);

/* Key files: text, created 0600 with O_EXCL (saving never replaces an
 * existing file: SS_ERR_IO, "already exists"); loading refuses a file
 * readable or writable by group or others (SS_ERR_CRYPTO), and a file not in
 * our format (SS_ERR_FORMAT, naming the line), with a message naming the
 * file. No key byte ever reaches a message. */
ss_err ss_key_save(const ss_key_t *k, const char *path, char *err, size_t errlen);
ss_err ss_key_load(ss_key_t *k, const char *path, char *err, size_t errlen);

/* One producer session: a subkey for a fresh salt. Sealing is not
 * thread-safe; one sealer per producer. SS_ERR_USAGE for an unknown cipher,
 * SS_ERR_CRYPTO for AES-256-GCM without AES-NI, SS_ERR_NOMEM. The caller
 * destroys *out with ss_sealer_destroy (accepts NULL, wipes the subkey). */
typedef struct ss_sealer ss_sealer_t;
ss_err ss_sealer_new(const ss_key_t *k, ss_cipher c, ss_sealer_t **out);
void ss_sealer_destroy(ss_sealer_t **s);

/* Seal plain[0..len) into out (capacity >= len + SS_SEAL_OVERHEAD, not
 * overlapping plain) with nonce `seq` and associated data ad[0..adlen).
 * *outlen receives the size. The caller guarantees seq strictly increases per
 * sealer; the sealer checks it too and refuses a seq not above the last one
 * with SS_ERR_USAGE (a reused nonce would void the cipher's guarantees).
 * SS_ERR_TOOBIG beyond the cipher's message limit. Allocates nothing. */
ss_err ss_seal(ss_sealer_t *s, uint64_t seq, const void *ad, size_t adlen,
               const void *plain, size_t len, void *out, size_t *outlen);

/* Opening: keeps a small cache of subkeys by salt (the last 16 sessions).
 * Not thread-safe; one opener per thread. */
typedef struct ss_opener ss_opener_t;
ss_err ss_opener_new(const ss_key_t *k, ss_opener_t **out);
void ss_opener_destroy(ss_opener_t **o);

/* Open sealed[0..len) into out (capacity >= len - SS_SEAL_OVERHEAD, not
 * overlapping sealed). SS_ERR_CRYPTO when the key id differs ("sealed with
 * another key"), the cipher is unknown or unavailable, or the authentication
 * fails; SS_ERR_FORMAT when the payload is shorter than SS_SEAL_OVERHEAD or
 * its reserved byte is not 0. why (if non-NULL) says which. Allocates
 * nothing; out is zeroed on failure. */
ss_err ss_open(ss_opener_t *o, uint64_t seq, const void *ad, size_t adlen,
               const void *sealed, size_t len, void *out, size_t *outlen,
               char *why, size_t whylen);

/* Sealed files (docs/crypto.md): a 64-byte file header, then records that
 * are stream messages as they travel (header, lineage, sealed payload), the
 * last one a sealed EOS with the batch count. */
#define SS_SEALED_MAGIC "SSSEALED"
#define SS_SEALED_FILE_HEADER 64

typedef struct ss_sealed_file ss_sealed_file_t;

/* Is `path` a sealed file? 1 yes, 0 no, -1 unreadable (errno set). On yes,
 * *stream receives the stream id its records carry. */
int ss_sealed_file_probe(const char *path, uint32_t *stream);

/* Open for streaming: checks the file header and that the key id matches
 * (SS_ERR_CRYPTO, "PATH was sealed with another key (...)"); SS_ERR_FORMAT
 * for a file that is not sealed or has a damaged header; SS_ERR_IO. On
 * success the caller closes *out with ss_sealed_file_close (accepts NULL). */
ss_err ss_sealed_file_open(const char *path, const ss_key_t *k, ss_sealed_file_t **out,
                           char *err, size_t errlen);
uint64_t ss_sealed_file_id(const ss_sealed_file_t *f);
uint32_t ss_sealed_file_stream(const ss_sealed_file_t *f);
int ss_sealed_file_header_lines(const ss_sealed_file_t *f);

/* The next DATA record, as stored (pointers valid until the next call).
 * SS_ERR_CLOSED once the final EOS record was read and verified (its batch
 * count matches what came before, nothing follows it). SS_ERR_FORMAT or
 * SS_ERR_CRYPTO with a message naming the file, record and offset for a
 * truncated or damaged file. Payloads are not opened here; the EOS is. */
ss_err ss_sealed_file_next(ss_sealed_file_t *f, ss_header_t *h,
                           const uint8_t **lineage, size_t *lineage_len,
                           const uint8_t **payload, size_t *payload_len,
                           char *err, size_t errlen);
void ss_sealed_file_close(ss_sealed_file_t **f);

/* encrypt and decrypt as functions (the commands are thin wrappers).
 * Both stream in bounded memory, write OUT through a temporary file (OUT.tmp,
 * or an unnamed O_TMPFILE linked at the end) renamed over OUT on success and
 * removed on failure, so OUT is either complete or untouched. err names the
 * file and, for a damaged sealed file, the batch and offset. */
typedef struct {
    int header;          /* 1: the first line is a header, alone in batch 0 */
    size_t batch_bytes;  /* cut a batch once its encoding reaches this size */
    uint32_t stream;     /* stream id the records carry */
    ss_cipher cipher;
} ss_encrypt_opts;

/* header 1, SS_BATCH_BYTES, SS_DEFAULT_STREAM, ss_crypto_default_cipher(). */
void ss_encrypt_opts_init(ss_encrypt_opts *o);
ss_err ss_sealed_file_encrypt(const char *in, const char *out, const ss_key_t *k,
                              const ss_encrypt_opts *o, char *err, size_t errlen);
/* keyname (may be NULL) is used in the "sealed with another key" message. */
ss_err ss_sealed_file_decrypt(const char *in, const char *out, const ss_key_t *k,
                              const char *keyname, char *err, size_t errlen);


#endif
