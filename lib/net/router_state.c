/*
 * router_state.c - the router's protocol state machine (router_state.h):
 * every rule of docs/protocol.md ("Router rules") without a socket in sight.
 * It sees decoded input and a clock passed in, and answers through a send
 * callback, so router.c binds it to two ROUTER sockets and the tests drive
 * it with a recorder and a hand-moved clock.
 *
 * What lives here: members (JOIN, heartbeats, liveness, death and burial,
 * producers' windows and eviction), batches (the queue, the parked list,
 * each consumer's unacknowledged list, a free list), the lineage claims that
 * deduplicate, credit dispatch, receipts and backpressure, end of stream,
 * and the merged statistics that the end of stream carries.
 *
 * Invariants:
 *  - a batch is in exactly one place: the queue, the parked list, one
 *    consumer's unacked list, or the free list; bytes_held is the size of
 *    the first three;
 *  - every (source, seq) of a queued or delivered batch is claimed by it
 *    (pending) or by an earlier batch that was acknowledged (confirmed); a
 *    parked batch overlaps pending claims only, and claims nothing; a
 *    confirmed claim stays forever, a pending one is forgotten when its batch
 *    is acknowledged REJECTED;
 *  - a producer has at most `window` PUBLISHes read and not receipted
 *    (inflight); one more is an overrun and is never stored;
 *  - receipts to one producer leave in publish order: once one is withheld,
 *    later ones queue behind it;
 *  - a member marked gone is buried (its batches re-queued, its receipts
 *    dropped) before the input or tick that marked it returns;
 *  - every call ends with settle(): dispatch, the end-of-stream check and
 *    released receipts leave nothing that could be sent unsent.
 *
 * Memory: batches are held as the zmq_msg_t frames received (no copy; a
 * DELIVER sends zmq_msg_copy references). Held bytes stay below max_bytes
 * plus one window of batches per producer that was a member when the router
 * was last under max_bytes (a producer joining while over it waits for its
 * WELCOME); the claims cost 32 bytes per accepted id (open addressing, load
 * at most 3/4); the merged statistics are bounded by STATS_MAX_BYTES and the
 * members by MAX_MEMBERS.
 */
#include "net/router_state.h"

#include "wire/eos.h"
#include "wire/pack.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define LOG_LIMIT 10                      /* first occurrences logged per kind of event */
#define MAX_MEMBERS 4096                  /* live peers */
#define MAX_KNOWN 65536                   /* producer ids remembered for end of stream */
#define MAX_WITHHELD (1u << 20)           /* withheld receipts (at most the windows of
                                             the live producers) */
#define MAX_WAITING 64                    /* producer JOINs waiting for the bound */
#define MAX_CREDIT (1u << 20)             /* credit a consumer may accumulate */
#define MAX_FREE_BATCHES 1024             /* recycled batch records kept */
#define SEEN_MIN_SLOTS 1024
#define SEEN_MAX_SLOTS ((size_t)1 << 25)  /* 1 GiB of lineage claims */
#define STATS_MAX_BYTES (SS_MAX_MESSAGE / 2)

/* ---- batches ---- */

typedef struct batch batch;
struct batch {
    batch *next, *prev;
    zmq_msg_t part[3];   /* header, lineage, payload, as received */
    size_t bytes;        /* sum of the three frames */
    uint16_t flags;      /* SS_LINK_REDELIVERED once it went back to the queue */
    uint64_t tag;        /* delivery tag while delivered */
    uint64_t producer;   /* id of the member that published it */
    uint64_t seq;        /* its stream header's sequence number, for logs */
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

/* ---- lineage claims: open addressing, linear probing, (0,0) kept aside ----
 *
 * A claim says that one batch this router accepted covers a (source, seq)
 * lineage id. It is *pending* while that batch is queued or delivered and not
 * yet acknowledged (owner points at it), *confirmed* once a consumer
 * acknowledged it without REJECTED (owner NULL), and forgotten when a
 * consumer acknowledged it REJECTED. */

typedef struct batch batch;

typedef struct {
    ss_lineage_id id;
    uint64_t producer;   /* id of the member that published the claiming batch */
    batch *owner;        /* pending: the claiming batch; NULL once confirmed */
} claim;

typedef struct {
    claim *slot;
    size_t cap;          /* power of two, or 0 */
    size_t n;
    int has_zero;
    claim zero;          /* the claim of id (0,0), which marks empty slots */
} claimset;

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

static int id_eq(ss_lineage_id a, ss_lineage_id b)
{
    return a.source == b.source && a.seq == b.seq;
}

/* The claim on `id`, or NULL. */
static claim *claims_find(claimset *s, ss_lineage_id id)
{
    if (id_zero(id))
        return s->has_zero ? &s->zero : NULL;
    if (s->cap == 0)
        return NULL;
    for (size_t i = id_hash(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (id_zero(s->slot[i].id))
            return NULL;
        if (id_eq(s->slot[i].id, id))
            return &s->slot[i];
    }
}

static void claims_place(claim *slot, size_t cap, claim c)
{
    size_t i = id_hash(c.id) & (cap - 1);
    while (!id_zero(slot[i].id))
        i = (i + 1) & (cap - 1);
    slot[i] = c;
}

/* Room for `more` claims. -1 when the hard bound is reached or memory is out. */
static int claims_reserve(claimset *s, size_t more)
{
    if ((s->n + more) * 4 <= s->cap * 3)
        return 0;
    size_t cap = s->cap ? s->cap : SEEN_MIN_SLOTS;
    while ((s->n + more) * 4 > cap * 3)
        cap *= 2;
    if (cap > SEEN_MAX_SLOTS)
        return -1;
    claim *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return -1;
    for (size_t i = 0; i < s->cap; i++)
        if (!id_zero(s->slot[i].id))
            claims_place(slot, cap, s->slot[i]);
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
    return 0;
}

/* The caller reserved room and checked the id is not claimed. */
static void claims_add(claimset *s, ss_lineage_id id, uint64_t producer, batch *owner)
{
    claim c = { id, producer, owner };
    if (id_zero(id)) {
        s->zero = c;
        s->has_zero = 1;
        return;
    }
    claims_place(s->slot, s->cap, c);
    s->n++;
}

/* Forget the claim on `id` (backward-shift deletion keeps every probe
 * sequence unbroken). */
static void claims_remove(claimset *s, ss_lineage_id id)
{
    if (id_zero(id)) {
        s->has_zero = 0;
        return;
    }
    claim *c = claims_find(s, id);
    if (!c)
        return;
    size_t mask = s->cap - 1, hole = (size_t)(c - s->slot);
    for (size_t i = (hole + 1) & mask; !id_zero(s->slot[i].id); i = (i + 1) & mask) {
        size_t home = id_hash(s->slot[i].id) & mask;
        /* Move slot i into the hole unless its home lies cyclically in (hole, i]. */
        int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            s->slot[hole] = s->slot[i];
            hole = i;
        }
    }
    memset(&s->slot[hole], 0, sizeof s->slot[hole]);
    s->n--;
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
    uint32_t window;        /* producer: unreceipted batches granted at WELCOME */
    uint32_t inflight;      /* producer: PUBLISHes read and not yet receipted */
    uint64_t overruns;      /* producer: PUBLISHes beyond its window */
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
    char name[64];          /* from its last JOIN, for logs after it left */
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
    uint32_t max_window;
    int heartbeat_ms, liveness_ms;
    int64_t now;

    member **mem;
    size_t nmem, capmem;

    member *waiting[MAX_WAITING]; /* producers whose JOIN came while over the bound:
                               not members yet, welcomed (in order) once under it */
    size_t nwaiting;

    blist queue;            /* batches waiting for a consumer */
    blist parked;           /* batches whose lineage overlaps pending claims only */
    size_t unacked;         /* delivered, not yet acknowledged, over all consumers */
    batch *free_batches;
    size_t nfree;
    uint64_t next_tag;      /* last delivery tag given */
    uint64_t wait_counter;
    claimset claims;        /* lineage ids of accepted batches: pending or confirmed */

    receipt *rc;            /* withheld receipts, FIFO in rc[rc_start .. rc_start + rc_n) */
    size_t rc_start, rc_n, rc_cap;

    known *known;
    size_t nknown, capknown;
    int eos_seen;           /* at least one producer sent EOS */
    int phase;
    int64_t done_at;
    ss_growbuf stats;       /* merged statistics: packed key/value pairs */
    stat_key *keys;
    size_t nkeys, capkeys;
    int stats_full_logged;
    zmq_msg_t eos[3];       /* the EOS this router delivers */

    ss_router_stats st;
    uint64_t log_refused, log_stranger, log_odd, log_dup, log_overrun, log_evicted,
             log_rejected, log_deferred;
};

static const char *role_name(int side)
{
    return side == SS_SIDE_FRONTEND ? "producer" : "consumer";
}

static void ident_str(const uint8_t *ident, size_t len, char *out, size_t outlen)
{
    /* (a CurveZMQ routing id's random part is never logged) */
    if ((len == SS_ROUTING_ID_SIZE || len == SS_ROUTING_ID_CURVE_SIZE)
        && ident[0] == SS_ROUTING_ID_PREFIX) {
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

/* A RECEIPT leaves: the producer's window opens by one. */
static void receipt_emit(ss_router_state_t *s, member *m, uint64_t pubseq, uint16_t flags)
{
    if (m->inflight > 0)
        m->inflight--;
    emit(s, m, SS_LINK_RECEIPT, flags, 0, pubseq, NULL);
}

static void receipt_send(ss_router_state_t *s, member *m, uint64_t pubseq, uint16_t flags)
{
    if (s->rc_n == 0 && !over_bound(s)) {
        receipt_emit(s, m, pubseq, flags);
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
                /* Windows make this unreachable short of memory running out. */
                if (m->inflight > 0)
                    m->inflight--;
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
        receipt_emit(s, r.m, r.pubseq, r.flags);
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

/* Build the EOS we deliver into s->eos: members = the live consumers,
 * sorted; stats = the merged pairs. On failure eos is left empty and `why`
 * says what went wrong. */
static ss_err build_eos(ss_router_state_t *s, size_t nconsumers, char *why, size_t whylen)
{
    uint64_t *ids = malloc((nconsumers ? nconsumers : 1) * sizeof *ids);
    if (!ids) {
        ss_say(why, whylen, "out of memory building end of stream");
        return SS_ERR_NOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < s->nmem; i++)
        if (!s->mem[i]->gone && s->mem[i]->side == SS_SIDE_BACKEND)
            ids[n++] = s->mem[i]->id;
    qsort(ids, n, sizeof *ids, cmp_u64);

    ss_eos_writer w;
    const uint8_t *payload;
    size_t len;
    ss_eos_writer_init(&w, 0);
    ss_eos_writer_begin(&w, ids, n, (uint32_t)s->nkeys);
    ss_eos_writer_pairs(&w, s->stats.data, s->stats.len, (uint32_t)s->nkeys);
    ss_err err = ss_eos_writer_finish(&w, &payload, &len, why, whylen);
    free(ids);
    ss_header_t h = { .type = SS_MSG_EOS, .flags = 0, .stream = s->stream,
                      .producer = s->self_id, .seq = 0, .count = (uint32_t)n, .origin = 0 };
    if (err == SS_OK) {
        if (zmq_msg_init_size(&s->eos[0], SS_HEADER_SIZE) != 0) {
            err = SS_ERR_NOMEM;
        } else if (zmq_msg_init_size(&s->eos[2], len) != 0) {
            zmq_msg_close(&s->eos[0]);
            err = SS_ERR_NOMEM;
        }
        if (err != SS_OK) {
            ss_say(why, whylen, "out of memory building end of stream");
            zmq_msg_init(&s->eos[0]);
            zmq_msg_init(&s->eos[2]);
        }
    }
    if (err == SS_OK) {
        ss_header_encode(&h, zmq_msg_data(&s->eos[0]));
        memcpy(zmq_msg_data(&s->eos[2]), payload, len);
    }
    ss_eos_writer_cleanup(&w);
    return err;
}

static void check_end(ss_router_state_t *s)
{
    if (s->phase == PHASE_RUNNING) {
        if (!s->eos_seen || s->queue.n || s->unacked || s->parked.n)
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
        char why[160];
        if (build_eos(s, nconsumers, why, sizeof why) != SS_OK) {
            ss_log_limited(&s->log_odd, LOG_LIMIT, "%s; retrying", why);
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

static void resolve_parked(ss_router_state_t *s);
static void admit_waiting(ss_router_state_t *s);

static void settle(ss_router_state_t *s)
{
    do {
        resolve_parked(s);
        dispatch(s);
        check_end(s);
        receipts_release(s);
        admit_waiting(s);
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

static void stats_full(ss_router_state_t *s)
{
    if (!s->stats_full_logged)
        ss_log("end-of-stream statistics exceed %u bytes; further entries dropped",
               (unsigned)STATS_MAX_BYTES);
    s->stats_full_logged = 1;
}

/* Add the entries of one EOS's stats whose keys we have not seen. */
static void merge_stats(ss_router_state_t *s, const msgpack_object_map *map)
{
    ss_growbuf kb;
    msgpack_packer kp, sp;
    ss_growbuf_init(&kb, &kp, STATS_MAX_BYTES);
    msgpack_packer_init(&sp, &s->stats, ss_growbuf_write);
    for (uint32_t i = 0; i < map->size; i++) {
        kb.len = 0;
        if (pack_key(&kp, map->ptr[i].key) != 0) {
            if (kb.over)
                stats_full(s);
            break;
        }
        size_t j;
        for (j = 0; j < s->nkeys; j++)
            if (s->keys[j].len == kb.len
                && memcmp(s->stats.data + s->keys[j].off, kb.data, kb.len) == 0)
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
        size_t off = s->stats.len;
        if (ss_growbuf_write(&s->stats, (const char *)kb.data, kb.len) != 0
            || msgpack_pack_object(&sp, map->ptr[i].val) != 0) {
            s->stats.len = off;
            stats_full(s);
            break;
        }
        s->keys[s->nkeys++] = (stat_key){ off, kb.len };
    }
    ss_growbuf_cleanup(&kb);
}

/* An accepted EOS while running: its producer finished, the members it
 * lists are expected to, its statistics join ours. */
static void record_eos(ss_router_state_t *s, uint64_t producer, const ss_eos_reader *r)
{
    known *k = find_known(s, producer, 1);
    if (k)
        k->sent_eos = 1;
    for (uint32_t i = 0; i < ss_eos_nmembers(r); i++) {
        k = find_known(s, ss_eos_member(r, i), 1);
        if (k && !k->listed) {
            k->listed = 1;
            k->listed_at = s->now;
        }
    }
    if (r->stats)
        merge_stats(s, r->stats);
    s->eos_seen = 1;
}

static void on_eos(ss_router_state_t *s, member *m, uint64_t pubseq, const ss_header_t *h,
                   zmq_msg_t *payload)
{
    if (h->flags & SS_HDR_SEALED) {
        refuse_batch(s, m, pubseq, "EOS payload is sealed; the router must read it");
        return;
    }
    ss_eos_reader r;
    char bad[160];
    if (ss_eos_read(&r, zmq_msg_data(payload), zmq_msg_size(payload), bad, sizeof bad) != SS_OK) {
        refuse_batch(s, m, pubseq, "%s", bad);
    } else if (s->nknown + 1 + ss_eos_nmembers(&r) > MAX_KNOWN) {
        refuse_batch(s, m, pubseq, "EOS lists too many members");
    } else if (s->phase != PHASE_RUNNING) {
        ss_log_limited(&s->log_odd, LOG_LIMIT, "producer %s sent EOS after end of stream; ignored",
                       m->name);
        receipt_send(s, m, pubseq, 0);
    } else {
        record_eos(s, h->producer, &r);
        ss_log_info("EOS from producer %s (id %016llx) listing %u members", m->name,
                    (unsigned long long)h->producer, ss_eos_nmembers(&r));
        receipt_send(s, m, pubseq, 0);
    }
    ss_eos_reader_cleanup(&r);
}

/* ---- input ---- */

/* The checks every PUBLISH passes: frame count, size, header, stream id,
 * the header's producer (the publisher's own id), lineage. 0 with *h, *bytes and *nids filled, or -1 once the batch was
 * refused (and receipted so). */
static int check_publish(ss_router_state_t *s, member *m, uint64_t pubseq, zmq_msg_t *parts,
                         size_t nparts, ss_header_t *h, size_t *bytes, size_t *nids)
{
    if (nparts != 3) {
        refuse_batch(s, m, pubseq, "%zu frames after the link frame, not 3", nparts);
        return -1;
    }
    *bytes = zmq_msg_size(&parts[0]) + zmq_msg_size(&parts[1]) + zmq_msg_size(&parts[2]);
    if (*bytes > SS_MAX_MESSAGE) {
        refuse_batch(s, m, pubseq, "%zu bytes, more than the %u-byte limit", *bytes,
                     (unsigned)SS_MAX_MESSAGE);
        return -1;
    }
    if (ss_header_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), h) != SS_OK) {
        refuse_batch(s, m, pubseq, "malformed stream header (%zu bytes)", zmq_msg_size(&parts[0]));
        return -1;
    }
    if (h->stream != s->stream) {
        refuse_batch(s, m, pubseq, "stream id 0x%08x is not this pipeline's 0x%08x", h->stream,
                     s->stream);
        return -1;
    }
    if (h->producer != m->id) {
        /* the end of stream is counted by this field, and duplicates named by it */
        refuse_batch(s, m, pubseq, "header names producer %016llx, not the publisher's own id",
                     (unsigned long long)h->producer);
        return -1;
    }
    if (ss_lineage_check(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), nids) != SS_OK) {
        refuse_batch(s, m, pubseq, "lineage frame of %zu bytes is not sorted 16-byte ids",
                     zmq_msg_size(&parts[1]));
        return -1;
    }
    return 0;
}

/* ---- lineage claims of batches ---- */

enum { LIN_FREE, LIN_PENDING, LIN_CONFIRMED };

/* How a lineage frame stands against the claims: LIN_CONFIRMED when an id
 * is claimed by an acknowledged batch (*hit is that claim), LIN_PENDING when
 * ids are claimed only by batches not acknowledged yet, else LIN_FREE. */
static int lineage_state(ss_router_state_t *s, const void *lin, size_t nids, claim **hit)
{
    int st = LIN_FREE;
    for (size_t i = 0; i < nids; i++) {
        claim *c = claims_find(&s->claims, ss_lineage_get(lin, i));
        if (!c)
            continue;
        if (!c->owner) {
            *hit = c;
            return LIN_CONFIRMED;
        }
        st = LIN_PENDING;
    }
    return st;
}

static size_t batch_nids(const batch *b)
{
    return zmq_msg_size((zmq_msg_t *)&b->part[1]) / SS_LINEAGE_ENTRY;
}

/* "NAME (id HEX)" of a producer that joined (live or not), else "id HEX". */
static void producer_str(ss_router_state_t *s, uint64_t id, char *out, size_t len)
{
    member *p = find_producer(s, id);
    known *k = p ? NULL : find_known(s, id, 0);
    if (p || (k && k->name[0]))
        snprintf(out, len, "%s (id %016llx)", p ? p->name : k->name, (unsigned long long)id);
    else
        snprintf(out, len, "id %016llx", (unsigned long long)id);
}

/* A batch of `producer` overlaps the confirmed claim c: counted and logged
 * (first ones), naming both producers. */
static void log_duplicate(ss_router_state_t *s, uint64_t producer, uint64_t seq, const claim *c)
{
    char a[96], b[96];
    s->st.duplicates++;
    if (s->log_dup >= LOG_LIMIT) {
        s->log_dup++;
        return;
    }
    producer_str(s, producer, a, sizeof a);
    producer_str(s, c->producer, b, sizeof b);
    ss_log_limited(&s->log_dup, LOG_LIMIT, "dropped batch %llu of producer %s: lineage %016llx#%llu "
                   "already accepted from producer %s", (unsigned long long)seq, a,
                   (unsigned long long)c->id.source, (unsigned long long)c->id.seq, b);
}

/* Claim every id of b's lineage for b (pending). The caller reserved room. */
static void claim_batch(ss_router_state_t *s, batch *b)
{
    const void *lin = zmq_msg_data(&b->part[1]);
    for (size_t i = 0; i < batch_nids(b); i++)
        claims_add(&s->claims, ss_lineage_get(lin, i), b->producer, b);
}

/* b was acknowledged: its pending claims become confirmed, or are
 * forgotten when the consumer rejected it. */
static void settle_claims(ss_router_state_t *s, batch *b, int rejected)
{
    const void *lin = zmq_msg_data(&b->part[1]);
    for (size_t i = 0; i < batch_nids(b); i++) {
        ss_lineage_id id = ss_lineage_get(lin, i);
        claim *c = claims_find(&s->claims, id);
        if (!c || c->owner != b)
            continue;
        if (rejected)
            claims_remove(&s->claims, id);
        else
            c->owner = NULL;
    }
}

/* Parked batches whose blocking claims were settled: dropped as duplicates
 * when one became confirmed, queued when all were forgotten. In order, so
 * that of two parked batches that overlap, the older claims first. */
static void resolve_parked(ss_router_state_t *s)
{
    batch *next;
    for (batch *b = s->parked.head; b; b = next) {
        next = b->next;
        claim *hit = NULL;
        int st = lineage_state(s, zmq_msg_data(&b->part[1]), batch_nids(b), &hit);
        if (st == LIN_PENDING)
            continue;
        if (st == LIN_FREE && claims_reserve(&s->claims, batch_nids(b)) != 0) {
            ss_log_limited(&s->log_odd, LOG_LIMIT, "out of memory for lineage claims; batch %llu "
                           "stays parked", (unsigned long long)b->seq);
            continue;
        }
        blist_remove(&s->parked, b);
        if (st == LIN_CONFIRMED) {
            log_duplicate(s, b->producer, b->seq, hit);
            s->st.bytes_held -= b->bytes;
            batch_release(s, b);
        } else {
            claim_batch(s, b);
            blist_push_tail(&s->queue, b);
            s->st.batches_in++;
        }
    }
}

/* A DATA batch that passed the checks (its frames are moved out of parts
 * unless it is dropped): dropped as a duplicate when its lineage overlaps a
 * confirmed claim; queued with its ids claimed when none is claimed; else
 * parked until the pending claims it overlaps are settled. Receipted in
 * every case. */
static void accept_data(ss_router_state_t *s, member *m, uint64_t pubseq, const ss_header_t *h,
                        zmq_msg_t *parts, size_t bytes, size_t nids)
{
    claim *hit = NULL;
    int st = lineage_state(s, zmq_msg_data(&parts[1]), nids, &hit);
    if (st == LIN_CONFIRMED) {
        log_duplicate(s, m->id, h->seq, hit);
        receipt_send(s, m, pubseq, 0);
        return;
    }
    batch *b = NULL;
    if (claims_reserve(&s->claims, nids) != 0 || !(b = batch_new(s))) {
        refuse_batch(s, m, pubseq, "out of memory (lineage claims or batch record)");
        return;
    }
    for (int i = 0; i < 3; i++)
        zmq_msg_move(&b->part[i], &parts[i]);
    b->bytes = bytes;
    b->producer = m->id;
    b->seq = h->seq;
    s->st.bytes_held += bytes;
    if (s->st.bytes_held > s->st.bytes_held_max)
        s->st.bytes_held_max = s->st.bytes_held;
    if (st == LIN_FREE) {
        claim_batch(s, b);
        blist_push_tail(&s->queue, b);
        s->st.batches_in++;
    } else {
        blist_push_tail(&s->parked, b);
        s->st.parked++;
    }
    receipt_send(s, m, pubseq, 0);
}

/* A PUBLISH beyond the producer's window: not read, counted, the first ones
 * logged; more overruns than its window ends the membership (eviction). */
static void overrun(ss_router_state_t *s, member *m, uint64_t pubseq)
{
    s->st.overruns++;
    m->overruns++;
    ss_log_limited(&s->log_overrun, LOG_LIMIT, "producer %s (id %016llx) sent batch %llu beyond "
                   "its window of %u unreceipted batches: dropped unread", m->name,
                   (unsigned long long)m->id, (unsigned long long)pubseq, m->window);
    if (m->overruns <= m->window)
        return;
    s->st.evicted++;
    ss_log_limited(&s->log_evicted, LOG_LIMIT, "evicted producer %s (id %016llx): %llu batches "
                   "beyond its window of %u; its messages other than JOIN are ignored", m->name,
                   (unsigned long long)m->id, (unsigned long long)m->overruns, m->window);
    declare_dead(m, "evicted for overrunning its window");
}

static void on_publish(ss_router_state_t *s, member *m, const ss_link_t *l, zmq_msg_t *parts,
                       size_t nparts)
{
    ss_header_t h;
    size_t bytes, nids;
    if (m->inflight >= m->window) {
        overrun(s, m, l->tag);
        return;
    }
    m->inflight++;   /* every path below sends (or withholds) exactly one receipt */
    if (check_publish(s, m, l->tag, parts, nparts, &h, &bytes, &nids) != 0)
        return;
    if (h.type == SS_MSG_EOS)
        on_eos(s, m, l->tag, &h, &parts[2]);
    else if (s->phase != PHASE_RUNNING)
        refuse_batch(s, m, l->tag, "data after end of stream");
    else
        accept_data(s, m, l->tag, &h, parts, bytes, nids);
}

/* An ACK: the delivery is done with. Its lineage claims are confirmed, or
 * forgotten when flagged REJECTED (the consumer did not accept the batch). */
static void on_ack(ss_router_state_t *s, member *c, uint64_t tag, uint16_t flags)
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
        int rejected = (flags & SS_LINK_REJECTED) != 0;
        if (rejected) {
            char who[96];
            producer_str(s, b->producer, who, sizeof who);
            s->st.rejected++;
            ss_log_limited(&s->log_rejected, LOG_LIMIT, "consumer %s rejected batch %llu of "
                           "producer %s; its lineage claims are forgotten", c->name,
                           (unsigned long long)b->seq, who);
        }
        settle_claims(s, b, rejected);
        batch_release(s, b);
        return;
    }
    ss_log_limited(&s->log_odd, LOG_LIMIT, "consumer %s acknowledged unknown delivery tag %llu",
                   c->name, (unsigned long long)tag);
}

/* A new member from a JOIN that was accepted: its routing id, its id and
 * its printable name (the JOIN's second frame, else the id in hex). Not yet
 * in s->mem (member_add). NULL when memory is out. */
static member *member_new(ss_router_state_t *s, int side, const void *ident, size_t idlen,
                          uint64_t id, zmq_msg_t *name_frame)
{
    member *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->side = side;
    m->idlen = (uint8_t)idlen;
    memcpy(m->ident, ident, idlen);
    m->id = id;
    size_t n = 0;
    if (name_frame) {
        const char *name = zmq_msg_data(name_frame);
        size_t len = zmq_msg_size(name_frame);
        for (size_t i = 0; i < len && n + 1 < sizeof m->name; i++)
            m->name[n++] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
    }
    if (n == 0)
        snprintf(m->name, sizeof m->name, "%016llx", (unsigned long long)m->id);
    return m;
}

/* Make m a member and welcome it (with its window, for a producer). -1
 * (m freed) when memory is out. */
static int member_add(ss_router_state_t *s, member *m)
{
    if (s->nmem == s->capmem) {
        size_t cap = s->capmem ? 2 * s->capmem : 16;
        member **mm = realloc(s->mem, cap * sizeof *mm);
        if (!mm) {
            ss_log_limited(&s->log_odd, LOG_LIMIT, "out of memory for member %s", m->name);
            free(m);
            return -1;
        }
        s->mem = mm;
        s->capmem = cap;
    }
    s->mem[s->nmem++] = m;
    m->heard = m->sent = s->now;
    if (m->side == SS_SIDE_FRONTEND) {
        known *k = find_known(s, m->id, 1);
        if (k) {
            k->joined = 1;
            memcpy(k->name, m->name, sizeof k->name);
        }
    } else if (s->phase != PHASE_RUNNING) {
        m->eos = EOS_PENDING;   /* late: gets the EOS flagged LATE */
    }
    ss_log_info("%s %s (id %016llx) joined", role_name(m->side), m->name,
                (unsigned long long)m->id);
    emit(s, m, SS_LINK_WELCOME, 0, m->side == SS_SIDE_FRONTEND ? m->window : 0, s->self_id, NULL);
    return 0;
}

/* Producers that joined while the router was over its bound become members
 * once it is back under it, in the order they came. */
static void admit_waiting(ss_router_state_t *s)
{
    while (s->nwaiting > 0 && !over_bound(s)) {
        member *m = s->waiting[0];
        memmove(s->waiting, s->waiting + 1, --s->nwaiting * sizeof *s->waiting);
        member_add(s, m);
    }
}

/* A waiting JOIN from this routing id, which a new JOIN replaces. */
static void drop_waiting(ss_router_state_t *s, const void *ident, size_t idlen)
{
    for (size_t i = 0; i < s->nwaiting; i++) {
        member *m = s->waiting[i];
        if (m->idlen != idlen || memcmp(m->ident, ident, idlen) != 0)
            continue;
        free(m);
        memmove(s->waiting + i, s->waiting + i + 1, (s->nwaiting - i - 1) * sizeof *s->waiting);
        s->nwaiting--;
        return;
    }
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
    drop_waiting(s, ident, idlen);
    size_t live = s->nwaiting;
    for (size_t i = 0; i < s->nmem; i++)
        live += !s->mem[i]->gone;
    if (live >= MAX_MEMBERS) {
        refuse(s, side, ident, idlen, "JOIN beyond %d members", MAX_MEMBERS);
        return;
    }
    member *m = member_new(s, side, ident, idlen, l->tag, nparts == 2 ? &parts[1] : NULL);
    if (!m) {
        refuse(s, side, ident, idlen, "out of memory for a new member");
        return;
    }
    if (side == SS_SIDE_FRONTEND) {
        uint32_t asked = l->flags ? l->flags : SS_DEFAULT_WINDOW;
        m->window = asked < s->max_window ? asked : s->max_window;
        if (over_bound(s)) {
            /* A new membership brings a new window: not while over the bound,
             * or leaving and joining again would add a window each time. */
            if (s->nwaiting == MAX_WAITING) {
                free(m);
                refuse(s, side, ident, idlen, "JOIN while over the bound, with %d JOINs waiting "
                       "already", MAX_WAITING);
                return;
            }
            s->waiting[s->nwaiting++] = m;
            s->st.joins_deferred++;
            ss_log_limited(&s->log_deferred, LOG_LIMIT, "producer %s (id %016llx) is welcomed "
                           "once the router holds at most %zu bytes (it holds %llu)", m->name,
                           (unsigned long long)m->id, s->max_bytes,
                           (unsigned long long)s->st.bytes_held);
            return;
        }
    }
    member_add(s, m);
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
            on_ack(s, m, l.tag, l.flags);
        break;
    default:
        refuse(s, side, ident, idlen, "a peer may not send kind %u", l.kind);
    }
out:
    settle(s);
}

void ss_router_state_refuse_publish(ss_router_state_t *s, int side, const void *ident,
                                    size_t idlen, uint64_t pubseq, const char *why, int64_t now)
{
    s->now = now;
    member *m = side == SS_SIDE_FRONTEND ? find_member(s, side, ident, idlen) : NULL;
    if (m) {
        m->heard = now;
        refuse_batch(s, m, pubseq, "%s", why);
    } else {
        refuse(s, side, ident, idlen, "%s", why);
    }
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
    s->max_window = o->max_window == 0 ? SS_DEFAULT_MAX_WINDOW
                  : o->max_window > SS_MAX_WINDOW ? SS_MAX_WINDOW : o->max_window;
    s->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : SS_DEFAULT_HEARTBEAT_MS;
    s->liveness_ms = o->liveness_ms > s->heartbeat_ms ? o->liveness_ms : 2 * s->heartbeat_ms;
    ss_growbuf_init(&s->stats, NULL, STATS_MAX_BYTES);
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
    blist *lists[] = { &s->queue, &s->parked };
    for (size_t i = 0; i < 2; i++) {
        while (lists[i]->head) {
            batch *b = lists[i]->head;
            blist_remove(lists[i], b);
            batch_free(b);
        }
    }
    for (size_t i = 0; i < s->nwaiting; i++)
        free(s->waiting[i]);
    while (s->free_batches) {
        batch *b = s->free_batches;
        s->free_batches = b->next;
        batch_free(b);
    }
    free(s->claims.slot);
    free(s->rc);
    free(s->known);
    ss_growbuf_cleanup(&s->stats);
    free(s->keys);
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&s->eos[i]);
    free(s);
    *sp = NULL;
}
