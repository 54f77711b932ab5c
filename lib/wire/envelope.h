/*
 * envelope.h - sealing and opening whole stream messages in the encrypted
 * modes (docs/crypto.md): the payload is sealed with the message's sequence
 * number as nonce and its header and lineage frames as associated data, so
 * neither can be changed, swapped or replayed under another position.
 *
 * An envelope owns the buffers it needs, sized once for the largest message
 * (SS_MAX_MESSAGE): sealing and opening allocate nothing per message.
 */
#ifndef SS_ENVELOPE_H
#define SS_ENVELOPE_H

#include "crypto/crypto.h"
#include "wire/frame.h"

typedef struct ss_envelope ss_envelope_t;

/* For a producer (seal) and a consumer (open) sharing one data key. */
ss_err ss_envelope_new(const ss_key_t *k, ss_envelope_t **out);
void ss_envelope_destroy(ss_envelope_t **e);

/* Seal a DATA payload: sets SS_HDR_SEALED in h->flags; *out points into the
 * envelope's buffer, valid until the next call. h->seq must increase from
 * one call to the next. */
ss_err ss_envelope_seal(ss_envelope_t *e, ss_header_t *h, const void *lineage, size_t lineage_len,
                        const void *payload, size_t len, const uint8_t **out, size_t *outlen);

/* Open a received message whose header says SS_HDR_SEALED; header_bytes are
 * the 40 bytes as received. SS_ERR_CRYPTO with the reason in why. */
ss_err ss_envelope_open(ss_envelope_t *e, const uint8_t *header_bytes, const void *lineage,
                        size_t lineage_len, const void *sealed, size_t len,
                        const uint8_t **out, size_t *outlen, char *why, size_t whylen);

/* Seal and open small records that are not stream messages (statistics in
 * an end of stream): nonce `seq` from the producer's sequence (never reused
 * for a message), associated data SS_RECORD_AD || context. */
ss_err ss_envelope_seal_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *plain, size_t len, const uint8_t **out, size_t *outlen);
ss_err ss_envelope_open_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *sealed, size_t len, const uint8_t **out, size_t *outlen,
                               char *why, size_t whylen);

/* Does the key of this envelope have this id? (to name a wrong key) */
const ss_key_t *ss_envelope_key(const ss_envelope_t *e);

#endif
