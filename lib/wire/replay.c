/*
 * replay.c - the replay window (replay.h).
 *
 * Producers live in an array of slots, found through an open-addressing
 * index of slot numbers (at most half full) hashed with SipHash under a
 * key of this window, so producer ids chosen by a sender cannot pile up on
 * one bucket. A slot's bit for sequence number q is bit q % 64 of word
 * (q % SS_REPLAY_WINDOW) / 64; the bits cover top - SS_REPLAY_WINDOW ..
 * top - 1, where top is the producer's newest sequence number plus one.
 */
#include "wire/replay.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_SLOTS 16   /* an unbounded window's first table */

typedef struct {
    uint64_t producer;
    uint64_t top;                           /* newest seq seen + 1 */
    uint64_t bits[SS_REPLAY_WINDOW / 64];   /* seen, for top - SS_REPLAY_WINDOW .. top - 1 */
} slot;

struct ss_replay {
    size_t max;                             /* producers at most; 0: no bound */
    slot *slots;
    size_t n, cap;                          /* slots in use, allocated */
    uint32_t *index;                        /* slot number + 1, or 0 for empty */
    size_t mask;                            /* index size - 1 (a power of two, >= 2 * cap) */
    uint8_t key[crypto_shorthash_KEYBYTES];
};

static size_t bucket(const ss_replay_t *r, uint64_t producer)
{
    uint8_t in[8], h[crypto_shorthash_BYTES];
    ss_put_u64(in, producer);
    crypto_shorthash(h, in, sizeof in, r->key);
    return (size_t)ss_get_u64(h) & r->mask;
}

static slot *find(const ss_replay_t *r, uint64_t producer)
{
    for (size_t i = bucket(r, producer);; i = (i + 1) & r->mask) {
        uint32_t at = r->index[i];
        if (at == 0)
            return NULL;
        if (r->slots[at - 1].producer == producer)
            return &r->slots[at - 1];
    }
}

static void insert(ss_replay_t *r, size_t at)
{
    size_t i = bucket(r, r->slots[at].producer);
    while (r->index[i] != 0)
        i = (i + 1) & r->mask;
    r->index[i] = (uint32_t)(at + 1);
}

/* Room for `cap` producers: the slots, and an index rebuilt at its new size.
 * On failure the window is as it was. */
static ss_err reserve(ss_replay_t *r, size_t cap)
{
    if (cap > (SIZE_MAX / 4) / sizeof(slot) || cap >= UINT32_MAX)
        return SS_ERR_NOMEM;
    size_t size = 2;
    while (size < 2 * cap)
        size *= 2;
    slot *s = realloc(r->slots, cap * sizeof *s);
    if (!s)
        return SS_ERR_NOMEM;
    r->slots = s;
    uint32_t *index = calloc(size, sizeof *index);
    if (!index)
        return SS_ERR_NOMEM;
    free(r->index);
    r->index = index;
    r->mask = size - 1;
    r->cap = cap;
    for (size_t i = 0; i < r->n; i++)
        insert(r, i);
    return SS_OK;
}

ss_err ss_replay_new(size_t max_producers, ss_replay_t **out)
{
    *out = NULL;
    if (sodium_init() < 0)
        return SS_ERR_CRYPTO;
    ss_replay_t *r = calloc(1, sizeof *r);
    if (!r)
        return SS_ERR_NOMEM;
    r->max = max_producers;
    randombytes_buf(r->key, sizeof r->key);
    if (reserve(r, max_producers ? max_producers : FIRST_SLOTS) != SS_OK) {
        ss_replay_destroy(&r);
        return SS_ERR_NOMEM;
    }
    *out = r;
    return SS_OK;
}

void ss_replay_destroy(ss_replay_t **rp)
{
    if (!rp || !*rp)
        return;
    ss_replay_t *r = *rp;
    free(r->slots);
    free(r->index);
    sodium_memzero(r->key, sizeof r->key);
    free(r);
    *rp = NULL;
}

/* A slot for a producer not seen yet, its window starting at seq; the
 * table has room. */
static slot *add(ss_replay_t *r, uint64_t producer, uint64_t seq)
{
    slot *s = &r->slots[r->n];
    memset(s, 0, sizeof *s);
    s->producer = producer;
    s->top = seq;
    insert(r, r->n++);
    return s;
}

int ss_replay_check(ss_replay_t *r, uint64_t producer, uint64_t seq, char *why, size_t whylen)
{
    /* Sequence numbers count up from 0: the last one can never be honest,
     * and the window's top (seq + 1) would wrap to 0 and let replays in. */
    if (seq == UINT64_MAX) {
        ss_say(why, whylen, "sequence number %llu is out of range", (unsigned long long)seq);
        return 0;
    }
    slot *s = find(r, producer);
    if (!s) {
        if (r->n == r->cap && r->max) {
            ss_say(why, whylen, "more than %zu producers upstream", r->max);
            return 0;
        }
        if (r->n == r->cap && reserve(r, r->cap * 2) != SS_OK) {
            ss_say(why, whylen, "out of memory for the replay window of producer %016llx",
                   (unsigned long long)producer);
            return -1;
        }
        s = add(r, producer, seq);
    }
    if (seq >= s->top) {
        if (seq - s->top >= SS_REPLAY_WINDOW) {
            memset(s->bits, 0, sizeof s->bits);
        } else {
            for (uint64_t q = s->top; q <= seq; q++)
                s->bits[(q % SS_REPLAY_WINDOW) / 64] &= ~((uint64_t)1 << (q % 64));
        }
        s->top = seq + 1;
    } else if (s->top - seq > SS_REPLAY_WINDOW) {
        ss_say(why, whylen,
               "too old to tell from a replay (more than %d batches behind its producer's newest)",
               SS_REPLAY_WINDOW);
        return 0;
    } else if (s->bits[(seq % SS_REPLAY_WINDOW) / 64] & ((uint64_t)1 << (seq % 64))) {
        ss_say(why, whylen, "replayed (already received from this producer)");
        return 0;
    }
    s->bits[(seq % SS_REPLAY_WINDOW) / 64] |= (uint64_t)1 << (seq % 64);
    return 1;
}
