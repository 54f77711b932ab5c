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

typedef struct ss_pool ss_pool;

/* A new pool; limit 0 for none. NULL when out of memory. */
ss_pool *ss_pool_new(size_t limit);
/* Give everything back; the Lua state using it must be closed first. NULL
 * ok. */
void ss_pool_close(ss_pool *p);
/* Bytes the pool holds from malloc: blocks in use and blocks on the lists. */
size_t ss_pool_footprint(const ss_pool *p);
/* A lua_Alloc over the pool `ud`. */
void *ss_pool_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
