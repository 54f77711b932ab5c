/*
 * test_pool.c - the Lua allocator (lib/enclave/lpool.c): random allocate, grow,
 * shrink and free sequences keep every block's bytes; the bound on what the
 * pool takes from malloc holds, shrinking never fails even at the bound,
 * and a Lua state over a bounded pool raises "not enough memory" and
 * recovers once its garbage is collected.
 */
#include "test.h"

#include "enclave/lpool.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 4096

typedef struct {
    unsigned char *p;
    size_t n;
    unsigned char fill;
} block;

static void check(const block *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->p[i] != b->fill)
            fail_msg("block of %zu bytes changed at byte %zu", b->n, i);
}

static size_t pick_size(unsigned r)
{
    switch (r % 4) {
    case 0: return 1 + r % 16;
    case 1: return 1 + r % 256;        /* every small class */
    case 2: return 200 + r % 120;      /* across the small/large edge */
    default: return 1 + r % 5000;
    }
}

static void random_sequences(void **state)
{
    (void)state;
    ss_pool *pool = ss_pool_new(0);
    assert_non_null(pool);
    block *b = calloc(SLOTS, sizeof *b);
    srand(12345);
    for (int step = 0; step < 400000; step++) {
        unsigned r = (unsigned)rand();
        block *s = &b[r % SLOTS];
        size_t n = pick_size((unsigned)rand());
        if (!s->p) {
            s->p = ss_pool_alloc(pool, NULL, 5 /* a type tag */, n);
            assert_non_null(s->p);
            s->n = n;
        } else if (r % 3 == 0) {
            check(s);
            assert_null(ss_pool_alloc(pool, s->p, s->n, 0));
            s->p = NULL;
            continue;
        } else {
            check(s);
            unsigned char *p = ss_pool_alloc(pool, s->p, s->n, n);
            assert_non_null(p);
            for (size_t i = 0; i < (n < s->n ? n : s->n); i++)
                if (p[i] != s->fill)
                    fail_msg("resizing %zu -> %zu bytes lost byte %zu", s->n, n, i);
            s->p = p;
            s->n = n;
        }
        s->fill = (unsigned char)(r >> 8);
        memset(s->p, s->fill, s->n);
        assert_int_equal((uintptr_t)s->p % 16, 0);
    }
    for (int i = 0; i < SLOTS; i++)
        if (b[i].p) {
            check(&b[i]);
            ss_pool_alloc(pool, b[i].p, b[i].n, 0);
        }
    free(b);
    ss_pool_close(pool);
}

static void bounded(void **state)
{
    (void)state;
    size_t limit = 1 << 20;
    ss_pool *pool = ss_pool_new(limit);
    void *small[100000];
    size_t n = 0;
    while (n < 100000 && (small[n] = ss_pool_alloc(pool, NULL, 0, 48)) != NULL)
        n++;
    ASSERT_UINT_GT(n, 10000);   /* stopped by the bound */
    ASSERT_UINT_LT(n, 100000);
    ASSERT_UINT_LE(ss_pool_footprint(pool), limit);
    assert_null(ss_pool_alloc(pool, NULL, 0, 4096));
    /* shrinking succeeds at the bound, in place or not */
    void *s = ss_pool_alloc(pool, small[0], 48, 16);
    assert_non_null(s);
    small[0] = s;
    /* what is freed is reused, without passing the bound */
    for (size_t i = 0; i < n; i++)
        ss_pool_alloc(pool, small[i], i == 0 ? 16 : 48, 0);
    size_t again = 0;
    while (again < 100000 && (small[again] = ss_pool_alloc(pool, NULL, 0, 48)) != NULL)
        again++;
    ASSERT_UINT_GE(again, n - 1);
    ASSERT_UINT_LE(ss_pool_footprint(pool), limit);
    for (size_t i = 0; i < again; i++)
        ss_pool_alloc(pool, small[i], 48, 0);
    ss_pool_close(pool);

    /* a large block shrunk into a small one at the bound */
    pool = ss_pool_new(64 << 10);
    void *big = ss_pool_alloc(pool, NULL, 0, 60000);
    assert_non_null(big);
    memset(big, 7, 100);
    void *shrunk = ss_pool_alloc(pool, big, 60000, 100);
    assert_non_null(shrunk);
    assert_int_equal(((unsigned char *)shrunk)[99], 7);
    ASSERT_UINT_LE(ss_pool_footprint(pool), 64 << 10);
    ss_pool_alloc(pool, shrunk, 100, 0);
    ss_pool_close(pool);
}

static void lua_over_a_bounded_pool(void **state)
{
    (void)state;
    ss_pool *pool = ss_pool_new(8 << 20);
    lua_State *L = lua_newstate(ss_pool_alloc, pool);
    assert_non_null(L);
    luaL_openlibs(L);
    const char *code =
        "local ok, err = pcall(function() local t = {} for i = 1, 1e8 do t[i] = {i} end end)\n"
        "assert(not ok and tostring(err):find('not enough memory'), tostring(err))\n"
        "collectgarbage()\n"
        "local t = {} for i = 1, 10000 do t[i] = ('x'):rep(i % 300) .. i end\n"
        "return #t";
    assert_int_equal(luaL_loadstring(L, code), LUA_OK);
    if (lua_pcall(L, 0, 1, 0) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    assert_int_equal(lua_tointeger(L, -1), 10000);
    ASSERT_UINT_LE(ss_pool_footprint(pool), 8 << 20);
    lua_close(L);
    ss_pool_close(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_sequences),
        cmocka_unit_test(bounded),
        cmocka_unit_test(lua_over_a_bounded_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
