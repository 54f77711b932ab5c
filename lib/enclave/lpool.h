/*
 * lpool.h - the allocator of our Lua states: a block of up to 256 bytes
 * that Lua frees is kept on a free list of its 16-byte size class and
 * reused by the next allocation of that class (no malloc call per event in
 * a steady stream); larger blocks go straight to malloc. Optionally
 * bounded: the bytes taken from malloc never pass `limit`; at the bound the
 * lists are given back to malloc, and an allocation that still does not
 * fit fails (Lua then collects garbage, then raises "not enough memory").
 */
#ifndef SS_LPOOL_H
#define SS_LPOOL_H

#include <stddef.h>

#define SS_POOL_CLASSES 16

/* The fields are the pool's own; the struct is public only so that a pool
 * can be the first member of a bigger allocator state (the enclave's
 * sandbox), which then passes itself as the lua_Alloc's `ud`. */
typedef struct ss_pool {
    void *free[SS_POOL_CLASSES + 1];  /* free list per 16-byte class (1..16) */
    size_t footprint;                 /* bytes taken from malloc */
    size_t limit;                     /* 0: none */
} ss_pool;

/* Set up a pool in place; limit 0 for none. */
void ss_pool_init(ss_pool *p, size_t limit);
/* Give every listed block back to malloc; the Lua state using the pool
 * must be closed first. */
void ss_pool_release(ss_pool *p);

/* A new pool on the heap, or NULL; ss_pool_close releases and frees it
 * (NULL ok). */
ss_pool *ss_pool_new(size_t limit);
void ss_pool_close(ss_pool *p);
/* Bytes the pool holds from malloc: blocks in use and blocks on the lists. */
size_t ss_pool_footprint(const ss_pool *p);
/* A lua_Alloc over the pool `ud`. */
void *ss_pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
