/*
 * test.h - what every C test shares (tests/test.c), so that no test keeps a
 * copy of its own: assertions that print both values, a temporary directory
 * per test, small files, stderr captured while a test runs, a router in a
 * thread, a child process with a deadline, and waiting for a condition with
 * a deadline instead of sleeping.
 *
 * Every helper that can fail fails the running cmocka test (a message, then
 * cmocka's longjmp), so a test reads as a list of steps. A helper that
 * returns memory says who frees it.
 */
#ifndef SS_TEST_H
#define SS_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/common.h"
#include "net/router.h"

#include <msgpack.h>
#include <pthread.h>
#include <sys/types.h>

/* ---- assertions ----------------------------------------------------------
 * On failure each prints both expressions and both values, e.g.
 *   st.redelivered >= 2: 1 >= 2 is false
 *   err does not contain "chmod 600":
 *     err is "cannot open k: No such file or directory"
 *     "chmod 600" is "chmod 600"
 * ASSERT_INT_* compare as intmax_t, ASSERT_UINT_* as uintmax_t. */

void test_fail_int(const char *file, int line, const char *ea, const char *op, const char *eb,
                   intmax_t a, intmax_t b);
void test_fail_uint(const char *file, int line, const char *ea, const char *op, const char *eb,
                    uintmax_t a, uintmax_t b);
void test_str_eq(const char *file, int line, const char *ea, const char *eb, const char *a,
                 const char *b);
void test_contains(const char *file, int line, const char *ehay, const char *eneedle,
                   const char *hay, const char *needle, int want);

#define TEST_CMP_(type, fail, a, op, b)                                                     \
    do {                                                                                    \
        type test_a_ = (type)(a), test_b_ = (type)(b);                                      \
        if (!(test_a_ op test_b_))                                                          \
            fail(__FILE__, __LINE__, #a, #op, #b, test_a_, test_b_);                        \
    } while (0)

#define ASSERT_INT_EQ(a, b) TEST_CMP_(intmax_t, test_fail_int, a, ==, b)
#define ASSERT_INT_NE(a, b) TEST_CMP_(intmax_t, test_fail_int, a, !=, b)
#define ASSERT_INT_LT(a, b) TEST_CMP_(intmax_t, test_fail_int, a, <, b)
#define ASSERT_INT_LE(a, b) TEST_CMP_(intmax_t, test_fail_int, a, <=, b)
#define ASSERT_INT_GT(a, b) TEST_CMP_(intmax_t, test_fail_int, a, >, b)
#define ASSERT_INT_GE(a, b) TEST_CMP_(intmax_t, test_fail_int, a, >=, b)
#define ASSERT_UINT_EQ(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, ==, b)
#define ASSERT_UINT_NE(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, !=, b)
#define ASSERT_UINT_LT(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, <, b)
#define ASSERT_UINT_LE(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, <=, b)
#define ASSERT_UINT_GT(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, >, b)
#define ASSERT_UINT_GE(a, b) TEST_CMP_(uintmax_t, test_fail_uint, a, >=, b)

/* Strings, NULL-safe (NULL equals only NULL and contains nothing). */
#define ASSERT_STR_EQ(a, b) test_str_eq(__FILE__, __LINE__, #a, #b, (a), (b))
#define ASSERT_CONTAINS(hay, needle)                                                        \
    test_contains(__FILE__, __LINE__, #hay, #needle, (hay), (needle), 1)
#define ASSERT_NOT_CONTAINS(hay, needle)                                                    \
    test_contains(__FILE__, __LINE__, #hay, #needle, (hay), (needle), 0)

/* ---- a temporary directory ----------------------------------------------
 * One directory at a time, /tmp/ss-PROGRAM-XXXXXX (test_crypto...). As
 * cmocka's setup and teardown of a test (or of a group, for a directory
 * shared by the run):
 *   cmocka_unit_test_setup_teardown(t, test_dir_setup, test_dir_teardown)
 * The teardown also ends a capture of stderr that a failed test left on. */

int test_dir_setup(void **state);
int test_dir_teardown(void **state);
/* The same outside cmocka: make the directory (fails the program when it
 * cannot) and return its path; remove it and everything in it. */
const char *test_dir_make(void);
void test_dir_remove(void);
/* The current directory's path (NULL when there is none). */
const char *test_dir(void);
/* DIR/name in one of 16 buffers used in turn: valid for the next 15 calls. */
const char *test_path(const char *name);

/* ---- small files ---------------------------------------------------------- */

/* Create path (replacing a file there) with exactly `mode` and len bytes. */
void test_write_file(const char *path, const void *data, size_t len, mode_t mode);
/* The same for a NUL-terminated text, mode 0644. */
void test_write_text(const char *path, const char *text);
/* The whole file, NUL-terminated, in memory the caller frees; *len (may be
 * NULL) receives its size. Fails the test when it cannot be read. */
char *test_read_file(const char *path, size_t *len);
/* 1 when something exists at path. */
int test_exists(const char *path);

/* ---- stderr --------------------------------------------------------------
 * While capturing, what the process writes to fd 2 goes to an anonymous
 * file; test_capture_stop restores stderr, copies the text there too (so a
 * failure still shows it) and returns it, in memory the caller frees. One
 * capture at a time. */
void test_capture_start(void);
char *test_capture_stop(void);

/* ---- a router in a thread ------------------------------------------------ */

typedef struct {
    ss_router_t *r;
    volatile int stop;      /* set to 1 to make ss_router_run return */
    ss_err rc;              /* ss_router_run's result once the thread ended */
    pthread_t th;
} test_router;

/* Create a router on zctx with *o (failing the test with ss_router_new's
 * message) and run it in a thread. */
void test_router_start(test_router *tr, void *zctx, const ss_router_opts *o);
/* Wait at most `secs` for the router's thread to end by itself (set stop
 * first to make it end now); past that, stop it and fail the test. Returns
 * ss_router_run's result; the router is left for the caller to destroy. */
ss_err test_router_finish(test_router *tr, int secs);

/* An end-of-stream payload {members = [...], stats = {[key] = {in = key &
 * 0xffff}}} in *sb (initialised here; the caller destroys it); keys with
 * `negative` set are packed as signed integers (as Lua writes big ids). */
void test_eos_payload(msgpack_sbuffer *sb, const uint64_t *members, size_t n,
                      const uint64_t *keys, size_t nkeys, int negative);

/* ---- a child process ------------------------------------------------------ */

/* Fork a child that runs fn(arg) and exits with its result; returns the pid.
 * Fork before any thread or ZeroMQ context of the test exists. */
pid_t test_child_start(int (*fn)(void *arg), void *arg);
/* Wait at most deadline_ms for the child to exit; past that, kill it
 * (SIGKILL), reap it and fail the test. Returns its wait status. */
int test_child_wait(pid_t pid, int deadline_ms);
/* Kill the child (SIGKILL) and reap it; returns its wait status. */
int test_child_kill(pid_t pid);

/* ---- waiting for a condition ---------------------------------------------- */

/* Call cond(arg) every 10 ms until it returns non-zero; after deadline_ms
 * fail the test with "waited N ms for WHAT". */
void test_wait_for(int deadline_ms, int (*cond)(void *arg), void *arg, const char *what);

/* ---- Lua -----------------------------------------------------------------
 * A state with the standard libraries, the csv and json modules, and two
 * globals for table-driven checks: deq(a, b) (same types, same math.type,
 * tables equal key by key) and nest(n) (a table nested n deep). As cmocka's
 * setup and teardown, the state in *state. */
int test_lua_setup(void **state);
int test_lua_teardown(void **state);

#endif
