/*
 * lpool.c - the allocator of our Lua states (see lpool.h).
 *
 * A stream worker allocates and frees a few small objects per event: the
 * event's table and its hash part, a long string per input line. Through
 * glibc's malloc each costs a call into its bins, and freeing a whole batch
 * of them makes malloc consolidate its fast bins again and again. Lua tells
 * its allocator the size of the block it frees, so a small block freed is
 * kept on a free list of its 16-byte size class and handed out again by the
 * next allocation of that class, in a few instructions: after the first
 * batches, a steady stream allocates from the lists alone.
 *
 * Invariants: a block of class c (1..CLASSES) spans at least c * 16 bytes
 * from malloc; `footprint` is the bytes taken from malloc and not given back
 * (blocks in use and blocks on the lists) and never passes `limit` when a
 * limit is set. When an allocation would pass the limit, or malloc fails,
 * every listed block is given back to malloc first (so memory freed in one
 * size class can serve another), then the allocation is tried once more.
 */
#include "enclave/lpool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GRAIN 16                  /* size class step */
#define CLASSES SS_POOL_CLASSES
#if defined(__SANITIZE_ADDRESS__)
#define SMALL_MAX 0               /* sanitized builds: every block from malloc, so
                                     AddressSanitizer sees each use after free */
#else
#define SMALL_MAX (CLASSES * GRAIN) /* larger blocks are not listed */
#endif

static size_t class_of(size_t n)
{
    return (n + GRAIN - 1) / GRAIN;
}

void ss_pool_init(ss_pool *p, size_t limit)
{
    memset(p, 0, sizeof *p);
    p->limit = limit;
}

ss_pool *ss_pool_new(size_t limit)
{
    ss_pool *p = malloc(sizeof *p);
    if (p)
        ss_pool_init(p, limit);
    return p;
}

/* Give every listed block back to malloc. */
static void flush(ss_pool *p)
{
    for (size_t c = 1; c <= CLASSES; c++) {
        void *b = p->free[c];
        while (b) {
            void *next;
            memcpy(&next, b, sizeof next);
            free(b);
            p->footprint -= c * GRAIN;
            b = next;
        }
        p->free[c] = NULL;
    }
}

void ss_pool_release(ss_pool *p)
{
    flush(p);
}

void ss_pool_close(ss_pool *p)
{
    if (!p)
        return;
    flush(p);
    free(p);
}

size_t ss_pool_footprint(const ss_pool *p)
{
    return p->footprint;
}

static int may_take(const ss_pool *p, size_t n)
{
    return !p->limit || (n <= p->limit && p->footprint <= p->limit - n);
}

/* Room for n more bytes within the limit, giving the lists back if needed. */
static int room(ss_pool *p, size_t n)
{
    if (may_take(p, n))
        return 1;
    flush(p);
    return may_take(p, n);
}

/* n bytes from malloc within the limit; when malloc fails, once more after
 * giving the lists back. */
static void *take(ss_pool *p, size_t n)
{
    void *b = room(p, n) ? malloc(n) : NULL;
    if (!b) {
        flush(p);
        if (!room(p, n) || !(b = malloc(n)))
            return NULL;
    }
    p->footprint += n;
    return b;
}

static void *small_alloc(ss_pool *p, size_t c)
{
    void *b = p->free[c];
    if (b) {
        memcpy(&p->free[c], b, sizeof(void *));
        return b;
    }
    return take(p, c * GRAIN);
}

static void small_free(ss_pool *p, void *b, size_t c)
{
    memcpy(b, &p->free[c], sizeof(void *));
    p->free[c] = b;
}

static void large_free(ss_pool *p, void *b, size_t n)
{
    free(b);
    p->footprint -= n;
}

void *ss_pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    ss_pool *p = ud;
    size_t old = ptr ? osize : 0;   /* with ptr NULL, osize is a type tag */
    if (nsize == 0) {
        if (ptr) {
            if (old <= SMALL_MAX)
                small_free(p, ptr, class_of(old));
            else
                large_free(p, ptr, old);
        }
        return NULL;
    }
    if (nsize <= SMALL_MAX) {
        size_t c = class_of(nsize);
        if (ptr && old <= SMALL_MAX && class_of(old) == c)
            return ptr;
        void *b = small_alloc(p, c);
        if (!b) {
            /* Lua expects shrinking to succeed: keep the block, which is
             * large enough; from now on it counts as class c, the size it
             * will be freed with (its tail is not counted) */
            if (ptr && old > nsize) {
                p->footprint -= (old <= SMALL_MAX ? class_of(old) * GRAIN : old) - c * GRAIN;
                return ptr;
            }
            return NULL;
        }
        if (ptr) {
            memcpy(b, ptr, old < nsize ? old : nsize);
            if (old <= SMALL_MAX)
                small_free(p, ptr, class_of(old));
            else
                large_free(p, ptr, old);
        }
        return b;
    }
    if (ptr && old > SMALL_MAX) {
        if (nsize > old && !room(p, nsize - old))
            return NULL;
        void *b = realloc(ptr, nsize);
        if (!b)
            return nsize < old ? ptr : NULL;
        p->footprint = p->footprint - old + nsize;
        return b;
    }
    void *b = take(p, nsize);
    if (b && ptr) {
        memcpy(b, ptr, old);
        small_free(p, ptr, class_of(old));
    }
    return b;
}
