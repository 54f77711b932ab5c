/*
 * crypto.h - data keys and sealed batches (docs/crypto.md).
 *
 * A data key is 32 random bytes with an 8-byte key id (the first bytes of its
 * BLAKE2b-256 hash). A batch payload is sealed with an AEAD: AES-256-GCM when
 * the CPU has AES-NI, else XChaCha20-Poly1305 (libsodium), under a per-session
 * subkey derived from the data key and a fresh 128-bit session salt; the nonce
 * is the message's sequence number from the stream header, and the header and
 * lineage frames are the associated data. A (salt, seq) pair never repeats, so
 * a nonce never repeats under one subkey, across restarts too.
 *
 * Every stream payload also names its maker: the run it belongs to, the
 * maker's role (source or worker) and its stage position; these go into the
 * subkey, so they cannot be changed without breaking authentication.
 *
 * Sealed payload layout (a stream message): cipher (1) | maker role (1: 1
 * source, 2 worker) | key id (8) | salt (16) | run id (16) | position (u16)
 * | ciphertext | tag (16): SS_SEAL_OVERHEAD bytes longer than the plaintext.
 * A sealed file's record (sealed.h) keeps the first layout: cipher | 0 |
 * key id | salt | ciphertext | tag, SS_SEAL_OVERHEAD_FILE bytes of overhead.
 */
#ifndef SS_CRYPTO_H
#define SS_CRYPTO_H

#include "base/common.h"
#include "wire/frame.h"

#define SS_KEY_BYTES 32
#define SS_KEY_ID_BYTES 8
#define SS_SALT_BYTES 16
#define SS_TAG_BYTES 16
#define SS_RUN_BYTES 16
#define SS_SEAL_PREFIX_FILE (2 + SS_KEY_ID_BYTES + SS_SALT_BYTES)
#define SS_SEAL_OVERHEAD_FILE (SS_SEAL_PREFIX_FILE + SS_TAG_BYTES)
#define SS_SEAL_PREFIX (SS_SEAL_PREFIX_FILE + SS_RUN_BYTES + 2)
#define SS_SEAL_OVERHEAD (SS_SEAL_PREFIX + SS_TAG_BYTES)

typedef enum { SS_CIPHER_AES256GCM = 1, SS_CIPHER_XCHACHA20 = 2 } ss_cipher;

typedef struct {
    uint8_t key[SS_KEY_BYTES];
    uint8_t id[SS_KEY_ID_BYTES];
} ss_key_t;

/* Who made a sealed payload: byte 1 of the payload. */
typedef enum {
    SS_MAKER_FILE = 0,      /* a sealed file's record (securestreams encrypt) */
    SS_MAKER_SOURCE = 1,    /* a source: only cmd_source.c and zmq-rx.lua's source loop */
    SS_MAKER_WORKER = 2,    /* a worker or an enclave */
} ss_maker_role;

/* The maker a payload names, authenticated with it (bound into its subkey). */
typedef struct {
    uint8_t run[SS_RUN_BYTES];   /* the run id (zeros in a file record) */
    uint8_t role;                /* ss_maker_role */
    uint16_t pos;                /* stage position: 0 a source, 1..n the stages */
} ss_maker;

const char *ss_maker_role_name(unsigned role);

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
/* 1 when c is the number of a cipher this build knows (a byte read from a
 * sealed payload or file), else 0. */
int ss_cipher_known(unsigned c);

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

/* One producer session: a subkey for a fresh salt and the maker m (its
 * run, role and position), or, with m NULL, a sealed file's session (the
 * file layout, no maker). Sealing is not thread-safe; one sealer per
 * producer. SS_ERR_USAGE for an unknown cipher or a maker whose role is
 * not source or worker, SS_ERR_CRYPTO for AES-256-GCM without AES-NI,
 * SS_ERR_NOMEM. The caller destroys *out with ss_sealer_destroy (accepts
 * NULL, wipes the subkeys). */
typedef struct ss_sealer ss_sealer_t;
ss_err ss_sealer_new(const ss_key_t *k, ss_cipher c, const ss_maker *m, ss_sealer_t **out);
void ss_sealer_destroy(ss_sealer_t **s);

/* Seal as maker m from now on (a component that learnt its run or position
 * from its first input): same salt, a new subkey. Allocates nothing and
 * makes no system call (an enclave calls it after its lockdown).
 * SS_ERR_USAGE for a file sealer or a role that is not source or worker. */
ss_err ss_sealer_bind(ss_sealer_t *s, const ss_maker *m);

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

/* Open sealed[0..len) into out (capacity >= len - SS_SEAL_OVERHEAD_FILE,
 * not overlapping sealed); *maker (if non-NULL) gets the maker the payload
 * names, authenticated (role SS_MAKER_FILE for a file record): whether that
 * maker is acceptable is the caller's decision. SS_ERR_CRYPTO when the key
 * id differs ("sealed with another key"), the cipher is unknown or
 * unavailable, or the authentication fails; SS_ERR_FORMAT when the payload
 * is shorter than its layout or names an unknown maker role. why (if
 * non-NULL) says which. Allocates nothing; out is zeroed on failure. */
ss_err ss_open(ss_opener_t *o, uint64_t seq, const void *ad, size_t adlen,
               const void *sealed, size_t len, void *out, size_t *outlen,
               ss_maker *maker, char *why, size_t whylen);

/* Whether a sealed payload names another key than o's; its key id in
 * `id` (16 hex digits and a NUL) when it does. 0 for a payload too short to
 * say. */
int ss_open_foreign(const ss_opener_t *o, const void *sealed, size_t len,
                    char id[2 * SS_KEY_ID_BYTES + 1]);

#endif
