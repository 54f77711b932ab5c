/*
 * router.c - the rendezvous between two stages (docs/protocol.md, "Router
 * rules"), in two parts:
 *
 *  1. the protocol state machine (router_state.h): members, the batch queue,
 *     credit dispatch, acknowledgements, the lineage set, receipts and
 *     backpressure, end of stream. It sees decoded input and a clock passed
 *     in, and answers through a send callback, so tests drive it without
 *     sockets.
 *  2. the sockets: two ROUTER sockets polled together, a bounded number of
 *     messages read from each in turn per round, frames handed to the state.
 *     With CurveZMQ (docs/curve.md) both are CURVE servers; the same loop
 *     answers the ZAP handler's requests and reads the sockets' monitors,
 *     which report clients that fail the handshake before ZAP is asked.
 *
 * Invariants of the state:
 *  - a batch is in exactly one place: the queue, one consumer's unacked list,
 *    or the free list; bytes_held is the size of the first two;
 *  - every (source, seq) of an accepted batch is in `seen`, forever;
 *  - receipts to one producer leave in publish order: once one is withheld,
 *    later ones queue behind it;
 *  - a member marked gone is buried (its batches re-queued, its receipts
 *    dropped) before the input or tick that marked it returns.
 *
 * Memory: batches are held as the zmq_msg_t frames received (no copy; a
 * DELIVER sends zmq_msg_copy references). Held bytes stay below max_bytes
 * plus the windows of honest producers; the lineage set costs 16 bytes per
 * accepted id (open addressing, load at most 3/4).
 */
#include "net/router.h"

#include "crypto/curve.h"
#include "net/router_state.h"

#include <errno.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define LOG_LIMIT 10                      /* first occurrences logged per kind of event */
#define MAX_MEMBERS 4096                  /* live peers */
#define MAX_KNOWN 65536                   /* producer ids remembered for end of stream */
#define MAX_WITHHELD 65536                /* withheld receipts */
#define MAX_CREDIT (1u << 20)             /* credit a consumer may accumulate */
#define MAX_FREE_BATCHES 1024             /* recycled batch records kept */
#define SEEN_MIN_SLOTS 1024
#define SEEN_MAX_SLOTS ((size_t)1 << 26)  /* 1 GiB of lineage ids */
#define STATS_MAX_BYTES (SS_MAX_MESSAGE / 2)

/* ---- batches ---- */

typedef struct batch batch;
struct batch {
    batch *next, *prev;
    zmq_msg_t part[3];   /* header, lineage, payload, as received */
    size_t bytes;        /* sum of the three frames */
    uint16_t flags;      /* SS_LINK_REDELIVERED once it went back to the queue */
    uint64_t tag;        /* delivery tag while delivered */
};

typedef struct {
    batch *head, *tail;
    size_t n;
} blist;

static void blist_push_tail(blist *l, batch *b)
{
    b->next = NULL;
    b->prev = l->tail;
    if (l->tail)
        l->tail->next = b;
    else
        l->head = b;
    l->tail = b;
    l->n++;
}

static void blist_push_head(blist *l, batch *b)
{
    b->prev = NULL;
    b->next = l->head;
    if (l->head)
        l->head->prev = b;
    else
        l->tail = b;
    l->head = b;
    l->n++;
}

static void blist_remove(blist *l, batch *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        l->head = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        l->tail = b->prev;
    b->next = b->prev = NULL;
    l->n--;
}

/* ---- the lineage set: open addressing, linear probing, (0,0) kept aside ---- */

typedef struct {
    ss_lineage_id *slot;
    size_t cap;          /* power of two, or 0 */
    size_t n;
    int has_zero;
} idset;

static size_t id_hash(ss_lineage_id id)
{
    uint64_t h = id.source * 0x9E3779B97F4A7C15ull ^ id.seq;
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return (size_t)h;
}

static int id_zero(ss_lineage_id id)
{
    return id.source == 0 && id.seq == 0;
}

static int idset_has(const idset *s, ss_lineage_id id)
{
    if (id_zero(id))
        return s->has_zero;
    if (s->cap == 0)
        return 0;
    for (size_t i = id_hash(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        ss_lineage_id e = s->slot[i];
        if (id_zero(e))
            return 0;
        if (e.source == id.source && e.seq == id.seq)
            return 1;
    }
}

static void idset_place(ss_lineage_id *slot, size_t cap, ss_lineage_id id)
{
    size_t i = id_hash(id) & (cap - 1);
    while (!id_zero(slot[i]))
        i = (i + 1) & (cap - 1);
    slot[i] = id;
}

/* Room for one more id. -1 when the hard bound is reached or memory is out. */
static int idset_reserve(idset *s, size_t more)
{
    if ((s->n + more) * 4 <= s->cap * 3)
        return 0;
    size_t cap = s->cap ? s->cap : SEEN_MIN_SLOTS;
    while ((s->n + more) * 4 > cap * 3)
        cap *= 2;
    if (cap > SEEN_MAX_SLOTS)
        return -1;
    ss_lineage_id *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return -1;
    for (size_t i = 0; i < s->cap; i++)
        if (!id_zero(s->slot[i]))
            idset_place(slot, cap, s->slot[i]);
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
    return 0;
}

/* The caller reserved room and checked the id is absent. */
static void idset_add(idset *s, ss_lineage_id id)
{
    if (id_zero(id)) {
        s->has_zero = 1;
        return;
    }
    idset_place(s->slot, s->cap, id);
    s->n++;
}

/* ---- members ---- */

enum { EOS_NONE, EOS_PENDING, EOS_SENT, EOS_ACKED };

typedef struct {
    int side;               /* SS_SIDE_*: producer on the frontend, consumer on the backend */
    uint8_t idlen;
    uint8_t ident[255];     /* routing id */
    uint64_t id;            /* peer id from JOIN */
    char name[64];          /* from JOIN, for logs */
    int64_t heard, sent;    /* last message from it, to it */
    int gone;               /* declared dead or left; buried at the end of the call */
    char why[64];           /* reason, for the log */
    uint32_t credit;        /* consumer: batches it may still be sent */
    uint64_t wait_seq;      /* consumer: smaller has waited longer */
    blist unacked;          /* consumer: delivered, not acknowledged */
    int eos;                /* consumer: EOS_* */
    int eos_listed;         /* consumer: named in the EOS members (else LATE) */
    uint64_t eos_tag;       /* consumer: delivery tag of its EOS */
} member;

typedef struct {
    uint64_t id;
    uint8_t joined;         /* was a producer member at some time */
    uint8_t listed;         /* named in some EOS members list */
    uint8_t sent_eos;       /* its EOS was received */
    int64_t listed_at;
} known;

typedef struct {
    member *m;
    uint64_t pubseq;
    uint16_t flags;
} receipt;

typedef struct {
    size_t off, len;        /* a packed key in the stats buffer */
} stat_key;

enum { PHASE_RUNNING, PHASE_ENDING, PHASE_DONE };

struct ss_router_state {
    ss_router_send_fn *send;
    void *arg;
    uint32_t stream;
    uint64_t self_id;
    size_t max_bytes;
    int heartbeat_ms, liveness_ms;
    int64_t now;

    member **mem;
    size_t nmem, capmem;

    blist queue;            /* batches waiting for a consumer */
    size_t unacked;         /* delivered, not yet acknowledged, over all consumers */
    batch *free_batches;
    size_t nfree;
    uint64_t next_tag;      /* last delivery tag given */
    uint64_t wait_counter;
    idset seen;

    receipt *rc;            /* withheld receipts, FIFO in rc[rc_start .. rc_start + rc_n) */
    size_t rc_start, rc_n, rc_cap;

    known *known;
    size_t nknown, capknown;
    int eos_seen;           /* at least one producer sent EOS */
    int phase;
    int64_t done_at;
    msgpack_sbuffer stats;  /* merged statistics: packed key/value pairs */
    stat_key *keys;
    size_t nkeys, capkeys;
    int stats_full_logged;
    zmq_msg_t eos[3];       /* the EOS this router delivers */

    ss_router_stats st;
    uint64_t log_refused, log_stranger, log_odd;
};

static const char *role_name(int side)
{
    return side == SS_SIDE_FRONTEND ? "producer" : "consumer";
}

static void ident_str(const uint8_t *ident, size_t len, char *out, size_t outlen)
{
    if (len == SS_ROUTING_ID_SIZE && ident[0] == SS_ROUTING_ID_PREFIX) {
        snprintf(out, outlen, "id %016llx", (unsigned long long)ss_get_u64(ident + 1));
        return;
    }
    size_t o = (size_t)snprintf(out, outlen, "routing id ");
    for (size_t i = 0; i < len && o + 3 < outlen; i++, o += 2)
        snprintf(out + o, outlen - o, "%02x", ident[i]);
}

static member *find_member(ss_router_state_t *s, int side, const void *ident, size_t idlen)
{
    for (size_t i = 0; i < s->nmem; i++) {
        member *m = s->mem[i];
        if (!m->gone && m->side == side && m->idlen == idlen && memcmp(m->ident, ident, idlen) == 0)
            return m;
    }
    return NULL;
}

static member *find_producer(ss_router_state_t *s, uint64_t id)
{
    for (size_t i = 0; i < s->nmem; i++) {
        member *m = s->mem[i];
        if (!m->gone && m->side == SS_SIDE_FRONTEND && m->id == id)
            return m;
    }
    return NULL;
}

static known *find_known(ss_router_state_t *s, uint64_t id, int create)
{
    for (size_t i = 0; i < s->nknown; i++)
        if (s->known[i].id == id)
            return &s->known[i];
    if (!create || s->nknown == MAX_KNOWN)
        return NULL;
    if (s->nknown == s->capknown) {
        size_t cap = s->capknown ? 2 * s->capknown : 16;
        known *k = realloc(s->known, cap * sizeof *k);
        if (!k)
            return NULL;
        s->known = k;
        s->capknown = cap;
    }
    known *k = &s->known[s->nknown++];
    memset(k, 0, sizeof *k);
    k->id = id;
    return k;
}

static void declare_dead(member *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void declare_dead(member *m, const char *fmt, ...)
{
    if (m->gone)
        return;
    m->gone = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->why, sizeof m->why, fmt, ap);
    va_end(ap);
}

static int emit(ss_router_state_t *s, member *m, uint8_t kind, uint16_t flags, uint32_t n,
                uint64_t tag, zmq_msg_t *stream)
{
    if (m->gone)
        return -1;
    ss_link_t l = { .kind = kind, .flags = flags, .n = n, .tag = tag };
    if (s->send(s->arg, m->side, m->ident, m->idlen, &l, stream) != 0) {
        declare_dead(m, "its connection is closed");
        return -1;
    }
    m->sent = s->now;
    return 0;
}

/* ---- batches: allocation and release ---- */

static batch *batch_new(ss_router_state_t *s)
{
    batch *b = s->free_batches;
    if (b) {
        s->free_batches = b->next;
        s->nfree--;
        b->next = NULL;
        return b;
    }
    b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    for (int i = 0; i < 3; i++)
        zmq_msg_init(&b->part[i]);
    return b;
}

static void batch_release(ss_router_state_t *s, batch *b)
{
    for (int i = 0; i < 3; i++) {
        zmq_msg_close(&b->part[i]);
        zmq_msg_init(&b->part[i]);
    }
    b->flags = 0;
    b->tag = 0;
    b->bytes = 0;
    if (s->nfree < MAX_FREE_BATCHES) {
        b->next = s->free_batches;
        s->free_batches = b;
        s->nfree++;
        return;
    }
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&b->part[i]);
    free(b);
}

static void batch_free(batch *b)
{
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&b->part[i]);
    free(b);
}

/* ---- receipts and backpressure ---- */

static int over_bound(const ss_router_state_t *s)
{
    return s->st.bytes_held > s->max_bytes;
}

static void receipt_send(ss_router_state_t *s, member *m, uint64_t pubseq, uint16_t flags)
{
    if (s->rc_n == 0 && !over_bound(s)) {
        emit(s, m, SS_LINK_RECEIPT, flags, 0, pubseq, NULL);
        return;
    }
    if (s->rc_start + s->rc_n == s->rc_cap) {
        if (s->rc_start > 0) {
            memmove(s->rc, s->rc + s->rc_start, s->rc_n * sizeof *s->rc);
            s->rc_start = 0;
        } else {
            size_t cap = s->rc_cap ? 2 * s->rc_cap : 64;
            receipt *r = cap <= MAX_WITHHELD ? realloc(s->rc, cap * sizeof *r) : NULL;
            if (!r) {
                /* Only a producer ignoring its window gets here. */
                s->st.refused++;
                ss_log_limited(&s->log_odd, LOG_LIMIT, "%s %s: more than %d receipts withheld; "
                               "dropped its batch %llu without receipt", role_name(m->side),
                               m->name, MAX_WITHHELD, (unsigned long long)pubseq);
                return;
            }
            s->rc = r;
            s->rc_cap = cap;
        }
    }
    s->rc[s->rc_start + s->rc_n++] = (receipt){ m, pubseq, flags };
}

static void receipts_release(ss_router_state_t *s)
{
    while (s->rc_n > 0 && !over_bound(s)) {
        receipt r = s->rc[s->rc_start++];
        s->rc_n--;
        emit(s, r.m, SS_LINK_RECEIPT, r.flags, 0, r.pubseq, NULL);
    }
    if (s->rc_n == 0)
        s->rc_start = 0;
}

static void receipts_forget(ss_router_state_t *s, const member *m)
{
    size_t o = s->rc_start;
    for (size_t i = s->rc_start; i < s->rc_start + s->rc_n; i++)
        if (s->rc[i].m != m)
            s->rc[o++] = s->rc[i];
    s->rc_n = o - s->rc_start;
}

/* ---- refusals ---- */

static void refuse(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void refuse(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                   const char *fmt, ...)
{
    char why[256], who[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    member *m = find_member(s, side, ident, idlen);
    if (m)
        snprintf(who, sizeof who, "%s %s", role_name(side), m->name);
    else
        ident_str(ident, idlen, who, sizeof who);
    s->st.refused++;
    ss_log_limited(&s->log_refused, LOG_LIMIT, "refused a message on the %s from %s: %s",
                   side == SS_SIDE_FRONTEND ? "frontend" : "backend", who, why);
}

/* A PUBLISH from a member that we cannot store: count, log, and receipt it
 * flagged REFUSED so the producer's window does not shrink for good. */
static void refuse_batch(ss_router_state_t *s, member *m, uint64_t pubseq, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse_batch(ss_router_state_t *s, member *m, uint64_t pubseq, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    s->st.refused++;
    ss_log_limited(&s->log_refused, LOG_LIMIT, "refused batch %llu from producer %s: %s",
                   (unsigned long long)pubseq, m->name, why);
    receipt_send(s, m, pubseq, SS_LINK_REFUSED);
}

/* ---- dispatch ---- */

static member *longest_waiting(ss_router_state_t *s)
{
    member *best = NULL;
    for (size_t i = 0; i < s->nmem; i++) {
        member *m = s->mem[i];
        if (m->gone || m->side != SS_SIDE_BACKEND || m->credit == 0)
            continue;
        if (!best || m->wait_seq < best->wait_seq)
            best = m;
    }
    return best;
}

static void dispatch(ss_router_state_t *s)
{
    if (s->phase != PHASE_RUNNING) {
        for (size_t i = 0; i < s->nmem; i++) {
            member *c = s->mem[i];
            if (c->gone || c->side != SS_SIDE_BACKEND || c->eos != EOS_PENDING || c->credit == 0)
                continue;
            uint64_t tag = ++s->next_tag;
            if (emit(s, c, SS_LINK_DELIVER, c->eos_listed ? 0 : SS_LINK_LATE, 0, tag, s->eos) != 0)
                continue;
            c->credit--;
            c->eos = EOS_SENT;
            c->eos_tag = tag;
        }
        return;
    }
    while (s->queue.head) {
        member *c = longest_waiting(s);
        if (!c)
            return;
        batch *b = s->queue.head;
        blist_remove(&s->queue, b);
        uint64_t tag = ++s->next_tag;
        if (emit(s, c, SS_LINK_DELIVER, b->flags, 0, tag, b->part) != 0) {
            blist_push_head(&s->queue, b);   /* c is gone now: not picked again */
            continue;
        }
        c->credit--;
        c->wait_seq = ++s->wait_counter;
        b->tag = tag;
        blist_push_tail(&c->unacked, b);
        s->unacked++;
        s->st.batches_out++;
    }
}

/* ---- death ---- */

static void bury(ss_router_state_t *s, member *m)
{
    size_t n = m->unacked.n;
    /* Back to the head of the queue, keeping their order. */
    while (m->unacked.tail) {
        batch *b = m->unacked.tail;
        blist_remove(&m->unacked, b);
        b->flags |= SS_LINK_REDELIVERED;
        b->tag = 0;
        blist_push_head(&s->queue, b);
    }
    s->unacked -= n;
    s->st.redelivered += n;
    receipts_forget(s, m);
    if (n)
        ss_log("%s %s (id %016llx): %s; %zu unacknowledged batches go back to the queue",
               role_name(m->side), m->name, (unsigned long long)m->id, m->why, n);
    else
        ss_log_info("%s %s (id %016llx): %s", role_name(m->side), m->name,
               (unsigned long long)m->id, m->why);
    free(m);
}

static int reap(ss_router_state_t *s)
{
    int buried = 0;
    for (size_t i = s->nmem; i-- > 0;) {
        member *m = s->mem[i];
        if (!m->gone)
            continue;
        s->mem[i] = s->mem[--s->nmem];
        bury(s, m);
        buried = 1;
    }
    return buried;
}

/* ---- end of stream ---- */

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void pack_str(msgpack_packer *pk, const char *str)
{
    size_t n = strlen(str);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, str, n);
}

/* Build the EOS we deliver: members = the live consumers, stats = merged. */
static ss_err build_eos(ss_router_state_t *s, size_t nconsumers)
{
    uint64_t *ids = malloc((nconsumers ? nconsumers : 1) * sizeof *ids);
    if (!ids)
        return SS_ERR_NOMEM;
    size_t n = 0;
    for (size_t i = 0; i < s->nmem; i++)
        if (!s->mem[i]->gone && s->mem[i]->side == SS_SIDE_BACKEND)
            ids[n++] = s->mem[i]->id;
    qsort(ids, n, sizeof *ids, cmp_u64);

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 2);
    pack_str(&pk, "members");
    rc |= msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++)
        rc |= msgpack_pack_uint64(&pk, ids[i]);
    pack_str(&pk, "stats");
    rc |= msgpack_pack_map(&pk, s->nkeys);
    if (s->stats.size)
        rc |= msgpack_sbuffer_write(&sb, s->stats.data, s->stats.size);
    free(ids);

    ss_header_t h = { .type = SS_MSG_EOS, .flags = 0, .stream = s->stream,
                      .producer = s->self_id, .seq = 0, .count = (uint32_t)n, .origin = 0 };
    ss_err err = SS_ERR_NOMEM;
    if (rc == 0 && zmq_msg_init_size(&s->eos[0], SS_HEADER_SIZE) == 0) {
        ss_header_encode(&h, zmq_msg_data(&s->eos[0]));
        zmq_msg_init(&s->eos[1]);
        if (zmq_msg_init_size(&s->eos[2], sb.size) == 0) {
            memcpy(zmq_msg_data(&s->eos[2]), sb.data, sb.size);
            err = SS_OK;
        } else {
            zmq_msg_init(&s->eos[2]);
        }
    }
    msgpack_sbuffer_destroy(&sb);
    return err;
}

static void check_end(ss_router_state_t *s)
{
    if (s->phase == PHASE_RUNNING) {
        if (!s->eos_seen || s->queue.n || s->unacked)
            return;
        for (size_t i = 0; i < s->nknown; i++) {
            known *k = &s->known[i];
            if (!k->listed || k->sent_eos)
                continue;
            if (find_producer(s, k->id))
                return;   /* alive and not finished */
            if (!k->joined && s->now - k->listed_at <= s->liveness_ms)
                return;   /* give it time to join */
        }
        size_t nconsumers = 0;
        for (size_t i = 0; i < s->nmem; i++)
            if (!s->mem[i]->gone && s->mem[i]->side == SS_SIDE_BACKEND)
                nconsumers++;
        if (nconsumers == 0)
            return;       /* end of stream must reach someone */
        if (build_eos(s, nconsumers) != SS_OK) {
            ss_log_limited(&s->log_odd, LOG_LIMIT, "out of memory building end of stream; retrying");
            return;
        }
        s->phase = PHASE_ENDING;
        for (size_t i = 0; i < s->nmem; i++) {
            member *c = s->mem[i];
            if (!c->gone && c->side == SS_SIDE_BACKEND) {
                c->eos = EOS_PENDING;
                c->eos_listed = 1;
            }
        }
        ss_log_info("end of stream: every producer finished, %llu batches in, %llu duplicates; "
               "delivering EOS to %zu consumers", (unsigned long long)s->st.batches_in,
               (unsigned long long)s->st.duplicates, nconsumers);
        dispatch(s);
    }
    if (s->phase == PHASE_ENDING) {
        for (size_t i = 0; i < s->nmem; i++) {
            member *c = s->mem[i];
            if (!c->gone && c->side == SS_SIDE_BACKEND && c->eos_listed && c->eos != EOS_ACKED)
                return;
        }
        s->phase = PHASE_DONE;
        s->done_at = s->now;
        ss_log_info("end of stream acknowledged by every consumer");
    }
}

static void settle(ss_router_state_t *s)
{
    do {
        dispatch(s);
        check_end(s);
        receipts_release(s);
    } while (reap(s));
}

/* Statistics keys compare as packed bytes; integer keys are packed as u64 so
 * that an id written as a negative Lua integer matches its unsigned form. */
static int pack_key(msgpack_packer *pk, msgpack_object key)
{
    if (key.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return msgpack_pack_uint64(pk, key.via.u64);
    if (key.type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return msgpack_pack_uint64(pk, (uint64_t)key.via.i64);
    return msgpack_pack_object(pk, key);
}

static void merge_stats(ss_router_state_t *s, const msgpack_object_map *map)
{
    msgpack_sbuffer kb;
    msgpack_packer kp, sp;
    msgpack_sbuffer_init(&kb);
    msgpack_packer_init(&kp, &kb, msgpack_sbuffer_write);
    msgpack_packer_init(&sp, &s->stats, msgpack_sbuffer_write);
    for (uint32_t i = 0; i < map->size; i++) {
        kb.size = 0;
        if (pack_key(&kp, map->ptr[i].key) != 0)
            break;
        size_t j;
        for (j = 0; j < s->nkeys; j++)
            if (s->keys[j].len == kb.size
                && memcmp(s->stats.data + s->keys[j].off, kb.data, kb.size) == 0)
                break;
        if (j < s->nkeys)
            continue;   /* first one wins: the same component seen through two paths */
        if (s->nkeys == s->capkeys) {
            size_t cap = s->capkeys ? 2 * s->capkeys : 16;
            stat_key *k = realloc(s->keys, cap * sizeof *k);
            if (!k)
                break;
            s->keys = k;
            s->capkeys = cap;
        }
        size_t off = s->stats.size;
        if (msgpack_sbuffer_write(&s->stats, kb.data, kb.size) != 0
            || msgpack_pack_object(&sp, map->ptr[i].val) != 0
            || s->stats.size > STATS_MAX_BYTES) {
            s->stats.size = off;
            if (!s->stats_full_logged)
                ss_log("end-of-stream statistics exceed %u bytes; further entries dropped",
                       (unsigned)STATS_MAX_BYTES);
            s->stats_full_logged = 1;
            break;
        }
        s->keys[s->nkeys++] = (stat_key){ off, kb.size };
    }
    msgpack_sbuffer_destroy(&kb);
}

static int is_key(msgpack_object k, const char *name)
{
    size_t n = strlen(name);
    return k.type == MSGPACK_OBJECT_STR && k.via.str.size == n && memcmp(k.via.str.ptr, name, n) == 0;
}

static void on_eos(ss_router_state_t *s, member *m, uint64_t pubseq, const ss_header_t *h,
                   zmq_msg_t *payload)
{
    if (h->flags & SS_HDR_SEALED) {
        refuse_batch(s, m, pubseq, "EOS payload is sealed; the router must read it");
        return;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    const msgpack_object *members = NULL, *stats = NULL;
    const char *bad = NULL;
    if (msgpack_unpack_next(&u, zmq_msg_data(payload), zmq_msg_size(payload), &off)
            != MSGPACK_UNPACK_SUCCESS || off != zmq_msg_size(payload))
        bad = "EOS payload is not one MessagePack value";
    else if (u.data.type != MSGPACK_OBJECT_MAP)
        bad = "EOS payload is not a map";
    if (!bad) {
        for (uint32_t i = 0; i < u.data.via.map.size; i++) {
            if (is_key(u.data.via.map.ptr[i].key, "members"))
                members = &u.data.via.map.ptr[i].val;
            else if (is_key(u.data.via.map.ptr[i].key, "stats"))
                stats = &u.data.via.map.ptr[i].val;
        }
        if (!members || members->type != MSGPACK_OBJECT_ARRAY)
            bad = "EOS payload has no members array";
        else if (stats && stats->type != MSGPACK_OBJECT_MAP && stats->type != MSGPACK_OBJECT_NIL)
            bad = "EOS stats is not a map";
    }
    if (!bad) {
        for (uint32_t i = 0; i < members->via.array.size; i++) {
            msgpack_object_type t = members->via.array.ptr[i].type;
            if (t != MSGPACK_OBJECT_POSITIVE_INTEGER && t != MSGPACK_OBJECT_NEGATIVE_INTEGER)
                bad = "EOS members are not all integer ids";
        }
        if (!bad && s->nknown + 1 + members->via.array.size > MAX_KNOWN)
            bad = "EOS lists too many members";
    }
    if (bad) {
        refuse_batch(s, m, pubseq, "%s", bad);
        msgpack_unpacked_destroy(&u);
        return;
    }
    if (s->phase != PHASE_RUNNING) {
        ss_log_limited(&s->log_odd, LOG_LIMIT, "producer %s sent EOS after end of stream; ignored",
                       m->name);
        receipt_send(s, m, pubseq, 0);
        msgpack_unpacked_destroy(&u);
        return;
    }
    known *k = find_known(s, h->producer, 1);
    if (k)
        k->sent_eos = 1;
    for (uint32_t i = 0; i < members->via.array.size; i++) {
        msgpack_object o = members->via.array.ptr[i];
        uint64_t id = o.type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o.via.u64 : (uint64_t)o.via.i64;
        k = find_known(s, id, 1);
        if (k && !k->listed) {
            k->listed = 1;
            k->listed_at = s->now;
        }
    }
    if (stats && stats->type == MSGPACK_OBJECT_MAP)
        merge_stats(s, &stats->via.map);
    s->eos_seen = 1;
    ss_log_info("EOS from producer %s (id %016llx) listing %u members", m->name,
           (unsigned long long)h->producer, members->via.array.size);
    msgpack_unpacked_destroy(&u);
    receipt_send(s, m, pubseq, 0);
}

/* ---- input ---- */

static void on_publish(ss_router_state_t *s, member *m, const ss_link_t *l, zmq_msg_t *parts,
                       size_t nparts)
{
    if (nparts != 3) {
        refuse_batch(s, m, l->tag, "%zu frames after the link frame, not 3", nparts);
        return;
    }
    size_t bytes = zmq_msg_size(&parts[0]) + zmq_msg_size(&parts[1]) + zmq_msg_size(&parts[2]);
    if (bytes > SS_MAX_MESSAGE) {
        refuse_batch(s, m, l->tag, "%zu bytes, more than the %u-byte limit", bytes,
                     (unsigned)SS_MAX_MESSAGE);
        return;
    }
    ss_header_t h;
    if (ss_header_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), &h) != SS_OK) {
        refuse_batch(s, m, l->tag, "malformed stream header (%zu bytes)", zmq_msg_size(&parts[0]));
        return;
    }
    if (h.stream != s->stream) {
        refuse_batch(s, m, l->tag, "stream id 0x%08x is not this pipeline's 0x%08x", h.stream,
                     s->stream);
        return;
    }
    size_t nids;
    const void *lin = zmq_msg_data(&parts[1]);
    if (ss_lineage_check(lin, zmq_msg_size(&parts[1]), &nids) != SS_OK) {
        refuse_batch(s, m, l->tag, "lineage frame of %zu bytes is not sorted 16-byte ids",
                     zmq_msg_size(&parts[1]));
        return;
    }
    if (h.type == SS_MSG_EOS) {
        on_eos(s, m, l->tag, &h, &parts[2]);
        return;
    }
    if (s->phase != PHASE_RUNNING) {
        refuse_batch(s, m, l->tag, "data after end of stream");
        return;
    }
    for (size_t i = 0; i < nids; i++) {
        if (idset_has(&s->seen, ss_lineage_get(lin, i))) {
            s->st.duplicates++;
            receipt_send(s, m, l->tag, 0);
            return;
        }
    }
    batch *b = NULL;
    if (idset_reserve(&s->seen, nids) != 0 || !(b = batch_new(s))) {
        refuse_batch(s, m, l->tag, "out of memory (lineage set or batch record)");
        return;
    }
    for (size_t i = 0; i < nids; i++)
        idset_add(&s->seen, ss_lineage_get(lin, i));
    for (int i = 0; i < 3; i++)
        zmq_msg_move(&b->part[i], &parts[i]);
    b->bytes = bytes;
    blist_push_tail(&s->queue, b);
    s->st.batches_in++;
    s->st.bytes_held += bytes;
    if (s->st.bytes_held > s->st.bytes_held_max)
        s->st.bytes_held_max = s->st.bytes_held;
    receipt_send(s, m, l->tag, 0);
}

static void on_ack(ss_router_state_t *s, member *c, uint64_t tag)
{
    if (c->eos == EOS_SENT && tag == c->eos_tag) {
        c->eos = EOS_ACKED;
        return;
    }
    for (batch *b = c->unacked.head; b; b = b->next) {
        if (b->tag != tag)
            continue;
        blist_remove(&c->unacked, b);
        s->unacked--;
        s->st.bytes_held -= b->bytes;
        batch_release(s, b);
        return;
    }
    ss_log_limited(&s->log_odd, LOG_LIMIT, "consumer %s acknowledged unknown delivery tag %llu",
                   c->name, (unsigned long long)tag);
}

static void on_join(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                    const ss_link_t *l, zmq_msg_t *parts, size_t nparts)
{
    uint32_t want = side == SS_SIDE_FRONTEND ? SS_ROLE_PRODUCER : SS_ROLE_CONSUMER;
    if (l->n != want) {
        refuse(s, side, ident, idlen, "JOIN with role %u where role %u is expected", l->n, want);
        return;
    }
    if (nparts > 2 || idlen == 0 || idlen > 255) {
        refuse(s, side, ident, idlen, "malformed JOIN (%zu frames)", nparts);
        return;
    }
    member *old = find_member(s, side, ident, idlen);
    if (old) {
        declare_dead(old, "joined again: the earlier membership ends");
        reap(s);
    }
    size_t live = 0;
    for (size_t i = 0; i < s->nmem; i++)
        live += !s->mem[i]->gone;
    if (live >= MAX_MEMBERS) {
        refuse(s, side, ident, idlen, "JOIN beyond %d members", MAX_MEMBERS);
        return;
    }
    if (s->nmem == s->capmem) {
        size_t cap = s->capmem ? 2 * s->capmem : 16;
        member **mm = realloc(s->mem, cap * sizeof *mm);
        if (!mm) {
            refuse(s, side, ident, idlen, "out of memory for a new member");
            return;
        }
        s->mem = mm;
        s->capmem = cap;
    }
    member *m = calloc(1, sizeof *m);
    if (!m) {
        refuse(s, side, ident, idlen, "out of memory for a new member");
        return;
    }
    m->side = side;
    m->idlen = (uint8_t)idlen;
    memcpy(m->ident, ident, idlen);
    m->id = l->tag;
    size_t n = 0;
    if (nparts == 2) {
        const char *name = zmq_msg_data(&parts[1]);
        size_t len = zmq_msg_size(&parts[1]);
        for (size_t i = 0; i < len && n + 1 < sizeof m->name; i++)
            m->name[n++] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
    }
    if (n == 0)
        snprintf(m->name, sizeof m->name, "%016llx", (unsigned long long)m->id);
    m->heard = m->sent = s->now;
    if (side == SS_SIDE_FRONTEND) {
        known *k = find_known(s, m->id, 1);
        if (k)
            k->joined = 1;
    } else if (s->phase != PHASE_RUNNING) {
        m->eos = EOS_PENDING;   /* late: gets the EOS flagged LATE */
    }
    s->mem[s->nmem++] = m;
    ss_log_info("%s %s (id %016llx) joined", role_name(side), m->name, (unsigned long long)m->id);
    emit(s, m, SS_LINK_WELCOME, 0, 0, s->self_id, NULL);
}

void ss_router_state_input(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                           zmq_msg_t *parts, size_t nparts, int64_t now)
{
    ss_link_t l;
    s->now = now;
    if (nparts == 0
        || ss_link_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), &l) != SS_OK) {
        refuse(s, side, ident, idlen, "not a link frame (%zu bytes)",
               nparts ? zmq_msg_size(&parts[0]) : 0);
        goto out;
    }
    if (l.kind == SS_LINK_JOIN) {
        on_join(s, side, ident, idlen, &l, parts, nparts);
        goto out;
    }
    member *m = find_member(s, side, ident, idlen);
    if (!m) {
        char who[80];
        ident_str(ident, idlen, who, sizeof who);
        ss_log_limited(&s->log_stranger, LOG_LIMIT, "ignored a message of kind %u from %s, not a "
                       "member (never joined, or declared dead)", l.kind, who);
        goto out;
    }
    m->heard = now;
    int front = side == SS_SIDE_FRONTEND;
    switch (l.kind) {
    case SS_LINK_HEARTBEAT:
        break;
    case SS_LINK_LEAVE:
        declare_dead(m, "left");
        break;
    case SS_LINK_PUBLISH:
        if (front)
            on_publish(s, m, &l, parts + 1, nparts - 1);
        else
            refuse(s, side, ident, idlen, "PUBLISH from a consumer");
        break;
    case SS_LINK_CREDIT:
        if (front || nparts != 1) {
            refuse(s, side, ident, idlen, "malformed CREDIT");
            break;
        }
        if (m->credit == 0)
            m->wait_seq = ++s->wait_counter;
        m->credit = l.n > MAX_CREDIT - m->credit ? MAX_CREDIT : m->credit + l.n;
        break;
    case SS_LINK_ACK:
        if (front || nparts != 1)
            refuse(s, side, ident, idlen, "malformed ACK");
        else
            on_ack(s, m, l.tag);
        break;
    default:
        refuse(s, side, ident, idlen, "a peer may not send kind %u", l.kind);
    }
out:
    settle(s);
}

void ss_router_state_tick(ss_router_state_t *s, int64_t now)
{
    s->now = now;
    for (size_t i = 0; i < s->nmem; i++) {
        member *m = s->mem[i];
        if (m->gone)
            continue;
        if (now - m->heard > s->liveness_ms)
            declare_dead(m, "silent for %lld ms", (long long)(now - m->heard));
        else if (now - m->sent >= s->heartbeat_ms)
            emit(s, m, SS_LINK_HEARTBEAT, 0, 0, 0, NULL);
    }
    settle(s);
}

int ss_router_state_done(const ss_router_state_t *s, int64_t *at)
{
    if (s->phase != PHASE_DONE)
        return 0;
    if (at)
        *at = s->done_at;
    return 1;
}

void ss_router_state_stats(const ss_router_state_t *s, ss_router_stats *st)
{
    *st = s->st;
    st->producers = st->consumers = 0;
    for (size_t i = 0; i < s->nmem; i++) {
        if (s->mem[i]->gone)
            continue;
        if (s->mem[i]->side == SS_SIDE_FRONTEND)
            st->producers++;
        else
            st->consumers++;
    }
}

ss_err ss_router_state_new(const ss_router_opts *o, uint64_t self_id,
                           ss_router_send_fn *send, void *arg, ss_router_state_t **out)
{
    ss_router_state_t *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s)
        return SS_ERR_NOMEM;
    s->send = send;
    s->arg = arg;
    s->stream = o->stream;
    s->self_id = self_id;
    s->max_bytes = o->max_bytes;
    s->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : SS_DEFAULT_HEARTBEAT_MS;
    s->liveness_ms = o->liveness_ms > s->heartbeat_ms ? o->liveness_ms : 2 * s->heartbeat_ms;
    msgpack_sbuffer_init(&s->stats);
    for (int i = 0; i < 3; i++)
        zmq_msg_init(&s->eos[i]);
    *out = s;
    return SS_OK;
}

void ss_router_state_destroy(ss_router_state_t **sp)
{
    if (!sp || !*sp)
        return;
    ss_router_state_t *s = *sp;
    for (size_t i = 0; i < s->nmem; i++) {
        member *m = s->mem[i];
        while (m->unacked.head) {
            batch *b = m->unacked.head;
            blist_remove(&m->unacked, b);
            batch_free(b);
        }
        free(m);
    }
    free(s->mem);
    while (s->queue.head) {
        batch *b = s->queue.head;
        blist_remove(&s->queue, b);
        batch_free(b);
    }
    while (s->free_batches) {
        batch *b = s->free_batches;
        s->free_batches = b->next;
        batch_free(b);
    }
    free(s->seen.slot);
    free(s->rc);
    free(s->known);
    msgpack_sbuffer_destroy(&s->stats);
    free(s->keys);
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&s->eos[i]);
    free(s);
    *sp = NULL;
}

/* ---- sockets ---- */

#define ROUTER_BURST 64            /* messages read from each socket per round */
#define ROUTER_LINGER_MS 500       /* to flush the last receipts and EOS at close */
#define ROUTER_RCVHWM 1000
/* The socket drops a peer sending a frame above this; messages between
 * SS_MAX_MESSAGE and this are read, refused and counted by the state. */
#define ROUTER_MAX_FRAME (2 * (int64_t)SS_MAX_MESSAGE)
#define ROUTER_HANDSHAKE_MS 5000   /* CurveZMQ: a client's handshake must be done by then */
#define ROUTER_MON_EVENTS (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
/* A refused client reconnects every 100 ms: one line per kind of failure
 * and side at most this often, with the count of those not logged. */
#define HS_LOG_EVERY_MS 10000

struct ss_router {
    void *sock[2];                       /* SS_SIDE_FRONTEND, SS_SIDE_BACKEND */
    char endpoint[2][256];
    int tick_ms;
    int linger_ms;
    ss_router_state_t *st;
    zmq_msg_t in[2 + SS_ROUTER_MAX_PARTS];   /* routing id, frames, surplus */
    ss_curve_zap_t *zap;                 /* CurveZMQ: the ZAP handler, or NULL */
    void *mon[2];                        /* CurveZMQ: handshake monitors (may be NULL) */
    uint64_t hs_refused;                 /* handshakes failed before ZAP */
    struct {
        int64_t at;                      /* last line logged (0: none yet) */
        uint64_t quiet;                  /* failures since, not logged */
    } hs_log[2][3];                      /* per side: mismatch, decryption, other */
};

void ss_router_opts_init(ss_router_opts *o)
{
    memset(o, 0, sizeof *o);
    o->name = "router";
    o->stream = SS_DEFAULT_STREAM;
    o->max_bytes = (size_t)64 << 20;
    o->heartbeat_ms = ss_env_int("SS_HEARTBEAT_MS", SS_DEFAULT_HEARTBEAT_MS);
    o->liveness_ms = ss_env_int("SS_LIVENESS_MS", SS_DEFAULT_LIVENESS_MS);
    o->linger_ms = 0;
}

/* The state's send callback. ROUTER_MANDATORY turns a peer without a
 * connection into EHOSTUNREACH; SNDHWM 0 means EAGAIN never happens (what
 * is queued is bounded by credit and windows, and shares the held frames). */
static int sock_send(void *arg, int side, const uint8_t *ident, size_t idlen,
                     const ss_link_t *link, zmq_msg_t *stream)
{
    ss_router_t *r = arg;
    void *sock = r->sock[side];
    uint8_t lb[SS_LINK_SIZE];
    ss_link_encode(link, lb);
    if (zmq_send(sock, ident, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(sock, lb, sizeof lb, ZMQ_DONTWAIT | (stream ? ZMQ_SNDMORE : 0)) < 0)
        return -1;
    for (int i = 0; stream && i < 3; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_copy(&m, &stream[i]) != 0
            || zmq_msg_send(&m, sock, ZMQ_DONTWAIT | (i < 2 ? ZMQ_SNDMORE : 0)) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
    }
    return 0;
}

/* Read one message from a side and hand it to the state. 1 when one was
 * read, 0 when none was pending, -1 on a socket error (errno set). */
static int read_one(ss_router_t *r, int side)
{
    void *sock = r->sock[side];
    if (zmq_msg_recv(&r->in[0], sock, ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    size_t n = 0;
    int more = zmq_msg_more(&r->in[0]);
    while (more) {
        zmq_msg_t *m = &r->in[1 + (n < SS_ROUTER_MAX_PARTS ? n : SS_ROUTER_MAX_PARTS)];
        if (zmq_msg_recv(m, sock, 0) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        more = zmq_msg_more(m);
        if (n <= SS_ROUTER_MAX_PARTS)
            n++;
    }
    ss_router_state_input(r->st, side, zmq_msg_data(&r->in[0]), zmq_msg_size(&r->in[0]),
                          &r->in[1], n, ss_now_ms());
    return 1;
}

/* A handshake failure on a side's socket, reported by its monitor (which
 * does not say who the client was). A ZAP refusal (HANDSHAKE_FAILED_AUTH)
 * is the ZAP handler's to log and count. */
static void handshake_failed(ss_router_t *r, int side, uint16_t event, uint32_t value)
{
    const char *why;
    char buf[64];
    int kind = 2;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
        && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        why = "it does not use CurveZMQ (set SS_CURVE_KEY and SS_CURVE_SERVER for it)";
        kind = 0;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
               && value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) {
        why = "its CurveZMQ handshake does not decrypt (is its SS_CURVE_SERVER this router's "
              "public key?)";
        kind = 1;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        snprintf(buf, sizeof buf, "handshake protocol error 0x%08x", (unsigned)value);
        why = buf;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        why = "the handshake did not complete (the client hung up or timed out: does it use "
              "CurveZMQ with this router's public key?)";
    } else {
        return;
    }
    r->hs_refused++;
    int64_t now = ss_now_ms();
    if (r->hs_log[side][kind].at && now - r->hs_log[side][kind].at < HS_LOG_EVERY_MS) {
        r->hs_log[side][kind].quiet++;
        return;
    }
    char more[80] = "";
    if (r->hs_log[side][kind].quiet)
        snprintf(more, sizeof more, " (%llu more like it in the last %lld s)",
                 (unsigned long long)r->hs_log[side][kind].quiet,
                 (long long)(now - r->hs_log[side][kind].at) / 1000);
    r->hs_log[side][kind].at = now;
    r->hs_log[side][kind].quiet = 0;
    ss_log("refused a client on the %s (%s): %s%s",
           side == SS_SIDE_FRONTEND ? "frontend" : "backend", r->endpoint[side], why, more);
}

/* CurveZMQ, before any socket exists: the router's key pair into pub/sec,
 * and the ZAP handler (libzmq lets every client in when none is bound). */
static ss_err curve_begin(ss_router_t *r, void *zctx, const ss_router_opts *o,
                          char pub[SS_Z85_KEY], char sec[SS_Z85_KEY], char *err, size_t errlen)
{
    char why[1024];
    ss_err rc = ss_curve_load_secret(o->curve_key, pub, sec, why, sizeof why);
    if (rc != SS_OK) {
        snprintf(err, errlen, "the router's CurveZMQ key: %s", why);
        return rc;
    }
    rc = ss_curve_zap_new(zctx, o->curve_allow, &r->zap, why, sizeof why);
    if (rc != SS_OK)
        snprintf(err, errlen, "the router's CurveZMQ allow-list: %s", why);
    return rc;
}

/* CurveZMQ on one socket, before it binds: server key, handshake bound,
 * monitor of failed handshakes (diagnosis only: may stay NULL). */
static ss_err curve_socket(ss_router_t *r, void *zctx, int side, const char *sec,
                           char *err, size_t errlen)
{
    char why[1024];
    int ivl = ROUTER_HANDSHAKE_MS;
    ss_err rc = ss_curve_server_setup(r->sock[side], sec, why, sizeof why);
    if (rc == SS_OK && zmq_setsockopt(r->sock[side], ZMQ_HANDSHAKE_IVL, &ivl, sizeof ivl) != 0) {
        snprintf(why, sizeof why, "cannot set the handshake interval: %s", zmq_strerror(errno));
        rc = SS_ERR_IO;
    }
    if (rc != SS_OK) {
        snprintf(err, errlen, "the router's %s: %s", side ? "backend" : "frontend", why);
        return rc;
    }
    r->mon[side] = ss_curve_monitor_open(zctx, r->sock[side], ROUTER_MON_EVENTS, why, sizeof why);
    return SS_OK;
}

ss_err ss_router_new(void *zctx, const ss_router_opts *o, ss_router_t **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    if (!o->frontend || !*o->frontend || !o->backend || !*o->backend) {
        snprintf(err, errlen, "the router needs a frontend and a backend address");
        return SS_ERR_USAGE;
    }
    int has_key = o->curve_key && *o->curve_key, has_allow = o->curve_allow && *o->curve_allow;
    if (has_key != has_allow) {
        snprintf(err, errlen, "CurveZMQ on the router needs both its secret key file "
                 "(--curve-key) and the allow-list of client keys (--curve-allow); only %s "
                 "was given", has_key ? "the key" : "the allow-list");
        return SS_ERR_USAGE;
    }
    if (o->heartbeat_ms <= 0 || o->liveness_ms <= o->heartbeat_ms || o->linger_ms < 0) {
        snprintf(err, errlen, "heartbeat (%d ms) must be positive and below liveness (%d ms)",
                 o->heartbeat_ms, o->liveness_ms);
        return SS_ERR_USAGE;
    }
    ss_router_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory creating the router");
        return SS_ERR_NOMEM;
    }
    for (size_t i = 0; i < sizeof r->in / sizeof r->in[0]; i++)
        zmq_msg_init(&r->in[i]);
    r->tick_ms = o->heartbeat_ms / 4 > 0 ? o->heartbeat_ms / 4 : 1;
    if (r->tick_ms > 100)
        r->tick_ms = 100;
    r->linger_ms = o->linger_ms;
    ss_err rc = SS_ERR_IO;
    const char *addr[2] = { o->frontend, o->backend };
    const char *what[2] = { "frontend", "backend" };
    char pub[SS_Z85_KEY], sec[SS_Z85_KEY] = "";
    if (has_key && (rc = curve_begin(r, zctx, o, pub, sec, err, errlen)) != SS_OK)
        goto fail;
    for (int side = 0; side < 2; side++) {
        int one = 1, zero = 0, hwm = ROUTER_RCVHWM, linger = ROUTER_LINGER_MS;
        int64_t maxmsg = ROUTER_MAX_FRAME;
        void *sock = r->sock[side] = zmq_socket(zctx, ZMQ_ROUTER);
        if (!sock) {
            snprintf(err, errlen, "cannot create the %s socket: %s", what[side], zmq_strerror(errno));
            goto fail;
        }
        if (zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0
            || zmq_setsockopt(sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one) != 0
            || zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0
            || zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof zero) != 0
            || zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0
            || zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
            snprintf(err, errlen, "cannot set %s socket options: %s", what[side], zmq_strerror(errno));
            goto fail;
        }
        if (has_key && (rc = curve_socket(r, zctx, side, sec, err, errlen)) != SS_OK)
            goto fail;
        if (zmq_bind(sock, addr[side]) != 0) {
            snprintf(err, errlen, "cannot bind the %s to %s: %s", what[side], addr[side],
                     zmq_strerror(errno));
            goto fail;
        }
        size_t len = sizeof r->endpoint[side];
        if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, r->endpoint[side], &len) != 0)
            snprintf(r->endpoint[side], sizeof r->endpoint[side], "%s", addr[side]);
    }
    if (ss_router_state_new(o, ss_random_id(), sock_send, r, &r->st) != SS_OK) {
        snprintf(err, errlen, "out of memory creating the router");
        rc = SS_ERR_NOMEM;
        goto fail;
    }
    sodium_memzero(sec, sizeof sec);
    if (has_key)
        ss_log("CurveZMQ: server public key %s; %zu client keys allowed (%s)", pub,
               ss_curve_zap_allowed(r->zap), o->curve_allow);
    *out = r;
    return SS_OK;
fail:
    sodium_memzero(sec, sizeof sec);
    ss_router_destroy(&r);
    return rc;
}

const char *ss_router_frontend(const ss_router_t *r)
{
    return r->endpoint[SS_SIDE_FRONTEND];
}

const char *ss_router_backend(const ss_router_t *r)
{
    return r->endpoint[SS_SIDE_BACKEND];
}

ss_err ss_router_run(ss_router_t *r, volatile int *stop)
{
    /* The router sockets, then (CurveZMQ) the ZAP handler and the monitors. */
    zmq_pollitem_t items[5] = {
        { r->sock[SS_SIDE_FRONTEND], 0, ZMQ_POLLIN, 0 },
        { r->sock[SS_SIDE_BACKEND], 0, ZMQ_POLLIN, 0 },
    };
    int nitems = 2, mon_at[2] = { -1, -1 };
    if (r->zap)
        items[nitems++] = (zmq_pollitem_t){ ss_curve_zap_socket(r->zap), 0, ZMQ_POLLIN, 0 };
    for (int side = 0; side < 2; side++)
        if (r->mon[side]) {
            mon_at[side] = nitems;
            items[nitems++] = (zmq_pollitem_t){ r->mon[side], 0, ZMQ_POLLIN, 0 };
        }
    int64_t next_tick = 0, done_at;
    for (;;) {
        int64_t now = ss_now_ms();
        int done = ss_router_state_done(r->st, &done_at);
        if (done && now >= done_at + r->linger_ms)
            return SS_OK;
        if (stop && *stop) {
            if (done)
                return SS_OK;   /* only the linger was cut short */
            ss_log("stopped before end of stream");
            return SS_ERR_CLOSED;
        }
        int64_t wake = next_tick;
        if (done && done_at + r->linger_ms < wake)
            wake = done_at + r->linger_ms;
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (zmq_poll(items, nitems, timeout) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ETERM)
                return SS_ERR_CLOSED;
            ss_log("polling the router sockets: %s", zmq_strerror(errno));
            return SS_ERR_IO;
        }
        /* Alternate between the sides so that neither starves the other. */
        for (int round = 0; round < ROUTER_BURST; round++) {
            int got = 0;
            for (int side = 0; side < 2; side++) {
                int rc = read_one(r, side);
                if (rc < 0) {
                    if (errno == ETERM)
                        return SS_ERR_CLOSED;
                    ss_log("receiving on the %s: %s", side ? "backend" : "frontend",
                           zmq_strerror(errno));
                    return SS_ERR_IO;
                }
                got += rc;
            }
            if (!got)
                break;
        }
        if (r->zap && (items[2].revents & ZMQ_POLLIN)) {
            ss_err e = ss_curve_zap_serve(r->zap);
            if (e != SS_OK)
                return e;
        }
        for (int side = 0; side < 2; side++) {
            uint16_t event;
            uint32_t value;
            if (mon_at[side] < 0 || !(items[mon_at[side]].revents & ZMQ_POLLIN))
                continue;
            while (ss_curve_monitor_read(r->mon[side], &event, &value) > 0)
                handshake_failed(r, side, event, value);
        }
        now = ss_now_ms();
        if (now >= next_tick) {
            ss_router_state_tick(r->st, now);
            next_tick = now + r->tick_ms;
        }
    }
}

void ss_router_get_stats(const ss_router_t *r, ss_router_stats *s)
{
    ss_router_state_stats(r->st, s);
    s->auth_refused = r->hs_refused + (r->zap ? ss_curve_zap_refused(r->zap) : 0);
}

void ss_router_destroy(ss_router_t **rp)
{
    if (!rp || !*rp)
        return;
    ss_router_t *r = *rp;
    ss_router_state_destroy(&r->st);
    for (int side = 0; side < 2; side++) {
        ss_curve_monitor_close(r->sock[side], &r->mon[side]);
        if (r->sock[side])
            zmq_close(r->sock[side]);
    }
    ss_curve_zap_destroy(&r->zap);   /* after the sockets it serves */
    for (size_t i = 0; i < sizeof r->in / sizeof r->in[0]; i++)
        zmq_msg_close(&r->in[i]);
    free(r);
    *rp = NULL;
}
