/*
 * test_replay.c - the replay window (lib/wire/replay.c): a new sequence
 * number is fresh once, a repeat is a replay, one more than the window
 * behind the newest is too old, the window slides and jumps with the
 * newest, producers are independent, a bounded table refuses one producer
 * too many and an unbounded one takes thousands.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "wire/replay.h"

#include <string.h>

#define W SS_REPLAY_WINDOW
#define TOO_OLD "too old to tell from a replay (more than 16384 batches behind its producer's newest)"
#define REPLAYED "replayed (already received from this producer)"

static ss_replay_t *window(size_t max)
{
    ss_replay_t *r = NULL;
    assert_int_equal(ss_replay_new(max, &r), SS_OK);
    assert_non_null(r);
    return r;
}

/* One check, its outcome and, when refused, its exact reason. */
typedef struct {
    uint64_t producer, seq;
    int fresh;
    const char *why;
} step;

static void run_steps(ss_replay_t *r, const step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char why[256] = "";
        int got = ss_replay_check(r, steps[i].producer, steps[i].seq, why, sizeof why);
        if (got != steps[i].fresh || strcmp(why, steps[i].why ? steps[i].why : "") != 0)
            print_message("step %zu: producer %llu, seq %llu\n", i,
                          (unsigned long long)steps[i].producer, (unsigned long long)steps[i].seq);
        assert_int_equal(got, steps[i].fresh);
        assert_string_equal(why, steps[i].why ? steps[i].why : "");
    }
}

static void fresh_then_duplicate(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    const step steps[] = {
        { 7, 100, 1, NULL },
        { 7, 100, 0, REPLAYED },
        { 7, 101, 1, NULL },
        { 7, 99, 1, NULL },          /* below the newest, within the window, unseen */
        { 7, 99, 0, REPLAYED },
        { 7, 101, 0, REPLAYED },
        { 8, 100, 1, NULL },          /* another producer: its own numbers */
        { 7, 0, 1, NULL },           /* 101 behind the newest: still in the window */
    };
    run_steps(r, steps, sizeof steps / sizeof *steps);
    ss_replay_destroy(&r);
    assert_null(r);
    ss_replay_destroy(&r);   /* accepts NULL */
}

/* The largest sequence number is refused: accepting it would wrap the
 * window's top to 0 (and a loop to it would never end), after which every
 * replay would pass. A hostile producer's header sets it in plain mode. */
static void last_sequence_number(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    const step steps[] = {
        { 1, 5, 1, NULL },
        { 1, UINT64_MAX, 0, "sequence number 18446744073709551615 is out of range" },
        { 1, 5, 0, REPLAYED },
        { 2, UINT64_MAX, 0, "sequence number 18446744073709551615 is out of range" },
        { 2, UINT64_MAX - 1, 1, NULL },
        { 2, UINT64_MAX - 1, 0, REPLAYED },
    };
    run_steps(r, steps, sizeof steps / sizeof *steps);
    ss_replay_destroy(&r);
}

static void too_old(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    const step steps[] = {
        { 1, W + 10, 1, NULL },      /* newest W + 10: the window is 11 .. W + 10 */
        { 1, 10, 0, TOO_OLD },
        { 1, 11, 1, NULL },          /* exactly the window's oldest */
        { 1, 11, 0, REPLAYED },
        { 1, 0, 0, TOO_OLD },
        { 2, 9, 1, NULL },           /* producer 2's first: no history, fresh */
    };
    run_steps(r, steps, sizeof steps / sizeof *steps);
    ss_replay_destroy(&r);
}

/* The window follows the newest one step at a time: what slides out is too
 * old, what stays is remembered, the bits of the numbers that slid out are
 * cleared for the new ones that share them. */
static void window_slides(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    char why[256];
    for (uint64_t q = 0; q < 3 * (uint64_t)W; q++)
        assert_int_equal(ss_replay_check(r, 5, q, why, sizeof why), 1);
    uint64_t newest = 3 * (uint64_t)W - 1;
    /* every number still in the window is a replay, the one below it too old */
    for (uint64_t q = newest + 1 - W; q <= newest; q += 997) {
        assert_int_equal(ss_replay_check(r, 5, q, why, sizeof why), 0);
        assert_string_equal(why, REPLAYED);
    }
    assert_int_equal(ss_replay_check(r, 5, newest - W, why, sizeof why), 0);
    assert_string_equal(why, TOO_OLD);
    /* a number skipped while sliding stays fresh until it falls out; a bit
     * is reused only once its old number is out of the window */
    assert_int_equal(ss_replay_check(r, 6, 0, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 6, 2, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 6, W, why, sizeof why), 1);   /* window 1 .. W */
    assert_int_equal(ss_replay_check(r, 6, 0, why, sizeof why), 0);
    assert_string_equal(why, TOO_OLD);
    assert_int_equal(ss_replay_check(r, 6, 1, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 6, 1, why, sizeof why), 0);
    assert_string_equal(why, REPLAYED);
    assert_int_equal(ss_replay_check(r, 6, W + 1, why, sizeof why), 1);   /* window 2 .. W + 1 */
    assert_int_equal(ss_replay_check(r, 6, 1, why, sizeof why), 0);
    assert_string_equal(why, TOO_OLD);
    assert_int_equal(ss_replay_check(r, 6, 2, why, sizeof why), 0);
    assert_string_equal(why, REPLAYED);
    assert_int_equal(ss_replay_check(r, 6, W + 1, why, sizeof why), 0);
    assert_string_equal(why, REPLAYED);
    ss_replay_destroy(&r);
}

/* A jump of more than a window forgets everything before it: the old
 * numbers are too old, the ones that share their bits are fresh. */
static void jump_past_window(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    char why[256];
    for (uint64_t q = 0; q < 64; q++)
        assert_int_equal(ss_replay_check(r, 3, q, why, sizeof why), 1);
    uint64_t far = 5 * (uint64_t)W + 7;
    assert_int_equal(ss_replay_check(r, 3, far, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 3, 63, why, sizeof why), 0);
    assert_string_equal(why, TOO_OLD);
    /* same bit positions as 0 .. 63, inside the new window: fresh once */
    for (uint64_t q = 4 * (uint64_t)W + 8; q < 4 * (uint64_t)W + 64; q++) {
        assert_int_equal(ss_replay_check(r, 3, q, why, sizeof why), 1);
        assert_int_equal(ss_replay_check(r, 3, q, why, sizeof why), 0);
        assert_string_equal(why, REPLAYED);
    }
    assert_int_equal(ss_replay_check(r, 3, far, why, sizeof why), 0);
    ss_replay_destroy(&r);
}

static void producer_bound(void **state)
{
    (void)state;
    ss_replay_t *r = window(4);
    char why[256];
    for (uint64_t p = 1; p <= 4; p++)
        assert_int_equal(ss_replay_check(r, p, 1, why, sizeof why), 1);
    strcpy(why, "");
    assert_int_equal(ss_replay_check(r, 5, 1, why, sizeof why), 0);
    assert_string_equal(why, "more than 4 producers upstream");
    assert_int_equal(ss_replay_check(r, 5, 2, why, sizeof why), 0);   /* still refused */
    /* the known ones still work, with their history */
    assert_int_equal(ss_replay_check(r, 4, 2, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 4, 1, why, sizeof why), 0);
    assert_string_equal(why, REPLAYED);
    ss_replay_destroy(&r);

    r = window(256);
    for (uint64_t p = 0; p < 256; p++)
        assert_int_equal(ss_replay_check(r, p * 0x9e3779b97f4a7c15ull, 0, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, 12345, 0, why, sizeof why), 0);
    assert_string_equal(why, "more than 256 producers upstream");
    ss_replay_destroy(&r);
}

/* Without a bound the table grows: every producer keeps its own window
 * through the growth (ids 0 and UINT64_MAX included). */
static void many_producers(void **state)
{
    (void)state;
    ss_replay_t *r = window(0);
    char why[256];
    const uint64_t n = 5000;
    for (uint64_t p = 0; p < n; p++)
        assert_int_equal(ss_replay_check(r, p * 0x9e3779b97f4a7c15ull, p, why, sizeof why), 1);
    assert_int_equal(ss_replay_check(r, UINT64_MAX, 1, why, sizeof why), 1);
    for (uint64_t p = 0; p < n; p++) {
        uint64_t id = p * 0x9e3779b97f4a7c15ull;
        assert_int_equal(ss_replay_check(r, id, p, why, sizeof why), 0);
        assert_string_equal(why, REPLAYED);
        assert_int_equal(ss_replay_check(r, id, p + 1, why, sizeof why), 1);
    }
    assert_int_equal(ss_replay_check(r, UINT64_MAX, 1, why, sizeof why), 0);
    ss_replay_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fresh_then_duplicate), cmocka_unit_test(too_old),
        cmocka_unit_test(last_sequence_number),
        cmocka_unit_test(window_slides),        cmocka_unit_test(jump_past_window),
        cmocka_unit_test(producer_bound),       cmocka_unit_test(many_producers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
