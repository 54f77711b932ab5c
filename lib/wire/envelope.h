/*
 * envelope.h - sealing and opening whole stream messages in the encrypted
 * modes (docs/crypto.md): the payload is sealed with the message's sequence
 * number as nonce and its header and lineage frames as associated data, so
 * neither can be changed, swapped or replayed under another position.
 *
 * An envelope also knows where its component stands in its run: the run id,
 * the role it seals as (source or worker) and its stage position. What it
 * seals names them (crypto.h: they are bound into the subkey); what it
 * opens must name this run and the position just before this one, and only
 * a source may be at position 0. A component not told its run (or
 * position) adopts the one of the first input that authenticates, then holds
 * every later input to it.
 *
 * An envelope owns the buffers it needs, sized once for the largest message
 * (SS_MAX_MESSAGE): sealing and opening allocate nothing per message.
 */
#ifndef SS_ENVELOPE_H
#define SS_ENVELOPE_H

#include "crypto/crypto.h"
#include "wire/frame.h"

typedef struct ss_envelope ss_envelope_t;

/* Where a component stands in its run. */
typedef struct {
    const uint8_t *run;   /* SS_RUN_BYTES; NULL: adopt the first authentic input's */
    ss_maker_role role;   /* what it seals as: SS_MAKER_SOURCE or SS_MAKER_WORKER */
    int pos;              /* its stage position (0 a source, 1..n stages, n+1 the sink);
                             -1: one after the first authentic input's maker;
                             SS_ENVELOPE_ANY_POS: input of any position (a data owner's
                             tool that opens what it chooses), and it seals nothing */
} ss_envelope_opts;
#define SS_ENVELOPE_ANY_POS (-2)

/* For a producer (seal) and a consumer (open) sharing one data key; o NULL
 * is a worker that adopts both run and position. SS_ERR_NOMEM, or
 * SS_ERR_USAGE for a role that is neither source nor worker. */
ss_err ss_envelope_new(const ss_key_t *k, const ss_envelope_opts *o, ss_envelope_t **out);
void ss_envelope_destroy(ss_envelope_t **e);

/* This component as a maker: *m gets its run, role and position; *run_known
 * and *pos_known (if non-NULL) whether they were given or adopted yet. */
void ss_envelope_self(const ss_envelope_t *e, ss_maker *m, int *run_known, int *pos_known);

/* Take the run and position `from` knows where e does not know its own
 * (a worker's output link following its input link). */
ss_err ss_envelope_follow(ss_envelope_t *e, const ss_envelope_t *from);

/* Seal a DATA payload: sets SS_HDR_SEALED in h->flags; *out points into the
 * envelope's buffer, valid until the next call. h->seq must increase from
 * one call to the next. SS_ERR_USAGE when the run or position is not known
 * yet (a worker seals only what it made from an input). */
ss_err ss_envelope_seal(ss_envelope_t *e, ss_header_t *h, const void *lineage, size_t lineage_len,
                        const void *payload, size_t len, const uint8_t **out, size_t *outlen);

/* What opening found out besides the plaintext. */
typedef struct {
    ss_maker maker;    /* the maker the payload names (when it authenticated) */
    int authentic;     /* it authenticated (it may still be refused for its maker) */
    int foreign;       /* sealed with another key: key_id names it */
    char key_id[2 * SS_KEY_ID_BYTES + 1];
} ss_open_info;

/* Open a received message whose header says SS_HDR_SEALED; header_bytes are
 * the 40 bytes as received. SS_ERR_CRYPTO with the reason in why: another
 * key (info->foreign), tampering, a sealed file's record, a maker of
 * another run ("batch of another run (run X, this run is Y)"), at another
 * position than the one before this component's ("made at stage position
 * 2, expected 1"), or a role at a position it cannot hold. The first
 * message accepted fixes the run and position of a component not given
 * them. info may be NULL. */
ss_err ss_envelope_open(ss_envelope_t *e, const uint8_t *header_bytes, const void *lineage,
                        size_t lineage_len, const void *sealed, size_t len,
                        const uint8_t **out, size_t *outlen, ss_open_info *info, char *why,
                        size_t whylen);

/* Seal and open small records that are not stream messages (statistics in
 * an end of stream): nonce `seq` from the producer's sequence (never reused
 * for a message), associated data SS_RECORD_AD || context, sealed as this
 * component's maker (a run not known yet is sealed as zeros). Opening gives
 * the record's maker in *maker (if non-NULL) and checks nothing about it:
 * the caller decides what a record of that maker counts for. */
ss_err ss_envelope_seal_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *plain, size_t len, const uint8_t **out, size_t *outlen);
ss_err ss_envelope_open_record(ss_envelope_t *e, uint64_t seq, const char *context,
                               const void *sealed, size_t len, const uint8_t **out, size_t *outlen,
                               ss_maker *maker, char *why, size_t whylen);

/* Does the key of this envelope have this id? (to name a wrong key) */
const ss_key_t *ss_envelope_key(const ss_envelope_t *e);

/* ---- run ids ----
 * 16 random bytes chosen on the data owner's side for one run, written as 32
 * hex digits (docs/crypto.md). */

/* A fresh random run id. */
void ss_run_new(uint8_t run[SS_RUN_BYTES]);
/* 32 lowercase hex digits and a NUL. */
void ss_run_hex(const uint8_t run[SS_RUN_BYTES], char out[2 * SS_RUN_BYTES + 1]);
/* Exactly 32 hex digits; SS_ERR_USAGE otherwise. */
ss_err ss_run_parse(const char *hex, uint8_t run[SS_RUN_BYTES]);
/* SS_RUN from the environment: *given 1 and the id in run, or *given 0 when
 * it is unset or empty. SS_ERR_USAGE with a message naming the variable
 * when it is not 32 hex digits. */
ss_err ss_run_from_env(uint8_t run[SS_RUN_BYTES], int *given, char *err, size_t errlen);

#endif
