/*
 * sealed.h - sealed files: lines at rest, sealed in streamable batches
 * (docs/crypto.md). A sealed file holds the stream's batches sealed with
 * the data key, bound to the file (not to a run): `securestreams encrypt`
 * writes one, a source opens each record and seals it again into its run,
 * `securestreams decrypt` checks every record and gives the lines back.
 */
#ifndef SS_SEALED_H
#define SS_SEALED_H

#include "crypto/crypto.h"

/* The largest batch payload a sealed file holds: once sealed again into a
 * run (SS_SEAL_OVERHEAD), one message of at most SS_MAX_MESSAGE bytes with
 * a single lineage entry. */
#define SS_SEALED_BATCH_MAX (SS_MAX_MESSAGE - SS_HEADER_SIZE - SS_LINEAGE_ENTRY - SS_SEAL_OVERHEAD)

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
/* The next DATA record opened: as ss_sealed_file_next, with the batch's
 * plaintext (AD = header || lineage checked) in plain[0..*plain_len), cap
 * at least SS_SEALED_BATCH_MAX; SS_ERR_CRYPTO, naming record and offset,
 * when it does not authenticate. Allocates nothing. */
ss_err ss_sealed_file_next_open(ss_sealed_file_t *f, ss_header_t *h, const uint8_t **lineage,
                                size_t *lineage_len, uint8_t *plain, size_t cap, size_t *plain_len,
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
