/*
 * frame.h - the wire format of docs/protocol.md: the 16-byte link frame that
 * opens every message, and the 40-byte stream header plus lineage frame that
 * travel end to end with each batch.
 *
 * Encoding never fails (fixed sizes, caller-provided storage). Decoding checks
 * the size and version and returns SS_ERR_FORMAT for anything else, so data
 * from the network never reaches an assert.
 */
#ifndef SS_FRAME_H
#define SS_FRAME_H

#include "base/common.h"

#define SS_WIRE_VERSION 1
#define SS_LINK_SIZE 16
#define SS_HEADER_SIZE 40
#define SS_LINEAGE_ENTRY 16
#define SS_MAX_MESSAGE (16u << 20)   /* ZMQ_MAXMSGSIZE on every socket */
#define SS_BATCH_BYTES (1u << 20)    /* default batch size */
#define SS_DEFAULT_STREAM 0x53530001u /* pipeline id when none is given (env SS_STREAM) */

typedef enum {
    SS_LINK_JOIN = 1,
    SS_LINK_WELCOME = 2,
    SS_LINK_CREDIT = 3,
    SS_LINK_PUBLISH = 4,
    SS_LINK_RECEIPT = 5,
    SS_LINK_DELIVER = 6,
    SS_LINK_ACK = 7,
    SS_LINK_HEARTBEAT = 8,
    SS_LINK_LEAVE = 9,
} ss_link_kind;

#define SS_LINK_REDELIVERED 0x1
#define SS_LINK_LATE 0x2

#define SS_ROLE_PRODUCER 1
#define SS_ROLE_CONSUMER 2

typedef struct {
    uint8_t kind;    /* ss_link_kind */
    uint16_t flags;  /* SS_LINK_* */
    uint32_t n;      /* credits, or role on JOIN */
    uint64_t tag;    /* peer id, publish sequence or delivery tag */
} ss_link_t;

typedef enum { SS_MSG_DATA = 1, SS_MSG_EOS = 2 } ss_msg_type;

#define SS_HDR_SEALED 0x1

typedef struct {
    uint8_t type;      /* ss_msg_type */
    uint16_t flags;    /* SS_HDR_* */
    uint32_t stream;   /* pipeline id */
    uint64_t producer; /* id of the process that made the message */
    uint64_t seq;      /* producer's sequence number */
    uint32_t count;    /* events (DATA) or members (EOS) */
    uint64_t origin;   /* input line of the first event, for source batches */
} ss_header_t;

typedef struct {
    uint64_t source; /* id of the source that read the batch */
    uint64_t seq;    /* that source's batch number */
} ss_lineage_id;

void ss_link_encode(const ss_link_t *l, uint8_t out[SS_LINK_SIZE]);
ss_err ss_link_decode(const void *buf, size_t len, ss_link_t *out);

void ss_header_encode(const ss_header_t *h, uint8_t out[SS_HEADER_SIZE]);
ss_err ss_header_decode(const void *buf, size_t len, ss_header_t *out);

/* Lineage frames: `len` must be a multiple of 16; ids are stored sorted. */
ss_err ss_lineage_check(const void *buf, size_t len, size_t *count);
ss_lineage_id ss_lineage_get(const void *buf, size_t i);
void ss_lineage_put(void *buf, size_t i, ss_lineage_id id);
/* Sort and remove duplicates in place; returns the new count. */
size_t ss_lineage_normalise(ss_lineage_id *ids, size_t n);

/* The pipeline id every component of one pipeline shares: SS_STREAM from
 * the environment (decimal or 0x hex), SS_DEFAULT_STREAM when it is unset or
 * empty. SS_ERR_USAGE, with a message naming the variable, when it is not a
 * 32-bit number. The one reader of SS_STREAM. */
ss_err ss_stream_from_env(uint32_t *out, char *err, size_t errlen);

#endif
