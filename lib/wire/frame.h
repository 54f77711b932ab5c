/*
 * frame.h - THE wire format of docs/protocol.md: every constant and layout
 * that travels between components is defined here, and only here. The
 * 16-byte link frame that opens every message (kinds, flags, roles), the
 * routing id a link sets, the 40-byte stream header plus lineage frame that
 * travel end to end with each batch (types, flags), the size bounds, the keys
 * of the end-of-stream map (built and read by wire/eos.h), and the protocol's
 * timing defaults that both sides of a link must agree on. net/link.h and
 * net/router.h keep only their APIs.
 *
 * Encoding never fails (fixed sizes, caller-provided storage). Decoding checks
 * the size and version and returns SS_ERR_FORMAT for anything else, so data
 * from the network never reaches an assert.
 */
#ifndef SS_FRAME_H
#define SS_FRAME_H

#include "base/common.h"

/* ---- sizes and bounds ---- */
#define SS_WIRE_VERSION 1             /* first byte of link frames and stream headers */
#define SS_LINK_SIZE 16
#define SS_HEADER_SIZE 40
#define SS_LINEAGE_ENTRY 16           /* one (source, seq) pair of a lineage frame */
#define SS_MAX_MESSAGE (16u << 20)    /* header + lineage + payload; ZMQ_MAXMSGSIZE of links */
#define SS_BATCH_BYTES (1u << 20)     /* default batch size */
#define SS_BATCH_BYTES_MAX (SS_MAX_MESSAGE / 2)   /* the largest batch size a source may be given */
#define SS_REPLAY_WINDOW 16384        /* sequence numbers a consumer remembers below a producer's newest */
/* The associated data of a sealed record opens with this tag, then its
 * context: no stream message's associated data (a header) can be taken for it. */
#define SS_RECORD_AD "securestreams record "
#define SS_DEFAULT_STREAM 0x53530001u /* pipeline id when none is given (env SS_STREAM) */

/* ---- producer windows (docs/protocol.md, "Router rules" 2) ----
 * A producer declares its window (unreceipted batches in flight) in the
 * `flags` of its JOIN, 0 meaning the default; the router grants at most its
 * own maximum and says so in the `n` of its WELCOME. A PUBLISH beyond the
 * granted window is an overrun: dropped, counted, and grounds for eviction. */
#define SS_DEFAULT_WINDOW 8           /* a producer's window when its JOIN declares none */
#define SS_MAX_WINDOW 1024            /* the largest window a link uses or a router grants */
#define SS_DEFAULT_MAX_WINDOW 64      /* a router's cap on granted windows (--max-window) */

/* ---- protocol timing (docs/protocol.md, "Router rules" 1) ---- */
#define SS_DEFAULT_HEARTBEAT_MS 250   /* send a HEARTBEAT after this long without sending */
#define SS_DEFAULT_LIVENESS_MS 10000  /* a peer or router silent this long is dead */

/* ---- routing id ----
 * The ZMQ_ROUTING_ID a link sets: the prefix byte 'S' then the 8-byte peer
 * id (little-endian). Routing ids starting with a zero byte are reserved by
 * libzmq, so the id alone could not be used. Under CurveZMQ the link's
 * public key (32 bytes) and 16 random bytes drawn when the link opens
 * follow: the router drops every message whose routing id does not carry
 * its sender's key, and the random part, which travels only inside the
 * CurveZMQ session, keeps another client from naming (and so taking over)
 * the connection (docs/curve.md, "Identities"). */
#define SS_ROUTING_ID_PREFIX 'S'
#define SS_ROUTING_ID_SIZE 9
#define SS_ROUTING_ID_KEY 32          /* CurveZMQ: the client's public key, after the peer id */
#define SS_ROUTING_ID_NONCE 16        /* CurveZMQ: random, after the key */
#define SS_ROUTING_ID_CURVE_SIZE (SS_ROUTING_ID_SIZE + SS_ROUTING_ID_KEY + SS_ROUTING_ID_NONCE)

/* ---- link frame ---- */

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

/* Link-frame flags. */
#define SS_LINK_REDELIVERED 0x1   /* DELIVER: the batch went back to the queue once */
#define SS_LINK_LATE 0x2          /* DELIVER of an EOS: the consumer joined after the end.
                                     Informational only: not authenticated, so consumers
                                     forward every EOS (docs/protocol.md, rule 6) */
#define SS_LINK_REFUSED 0x4       /* RECEIPT: the router did not store the batch (malformed,
                                     oversized, another stream, or after end of stream);
                                     it logged why */
#define SS_LINK_REJECTED 0x8      /* ACK: the consumer did not accept the batch (failed
                                     authentication, malformed, a replay): the router
                                     forgets the batch's lineage claims */

/* Roles, in `n` of a JOIN. */
#define SS_ROLE_PRODUCER 1
#define SS_ROLE_CONSUMER 2

typedef struct {
    uint8_t kind;    /* ss_link_kind */
    uint16_t flags;  /* SS_LINK_*, or the producer's window on JOIN */
    uint32_t n;      /* credits, role on JOIN, granted window on WELCOME */
    uint64_t tag;    /* peer id, publish sequence or delivery tag */
} ss_link_t;

/* ---- stream header ---- */
typedef enum { SS_MSG_DATA = 1, SS_MSG_EOS = 2 } ss_msg_type;

#define SS_HDR_SEALED 0x1   /* the payload is sealed (AEAD); a router refuses a sealed EOS */

typedef struct {
    uint8_t type;      /* ss_msg_type */
    uint16_t flags;    /* SS_HDR_* */
    uint32_t stream;   /* pipeline id */
    uint64_t producer; /* id of the process that made the message */
    uint64_t seq;      /* producer's sequence number */
    uint32_t count;    /* events (DATA) or members (EOS) */
    uint64_t origin;   /* input line of the first event, for source batches */
} ss_header_t;

/* ---- end-of-stream map ----
 * The payload of an EOS: a MessagePack map {members = [u64...], stats =
 * {[id in hex] = record}} (wire/eos.h builds and reads it). It is never
 * sealed, its lineage frame is empty, so it is bounded by what is left of a
 * message after the header. */
#define SS_EOS_MEMBERS "members"
#define SS_EOS_STATS "stats"
#define SS_EOS_ID_HEX 16          /* hex digits of a component id as a stats key */
#define SS_EOS_MAX_BYTES (SS_MAX_MESSAGE - SS_HEADER_SIZE)

/* ---- lineage frame ---- */
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
