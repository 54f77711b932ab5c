/*
 * test_common.c - the helpers of lib/base every module leans on: the one
 * integer parser (ss_parse_u64: bases, suffixes, bounds, overflow, and what
 * it refuses), ss_env_int, ss_say's truncation, the small-file reader
 * (bounds, not a regular file, a missing file's message, locked memory for
 * secrets) and writer (never replaces, sets the exact mode), and the one
 * reader of SS_STREAM (lib/wire/frame.h). Table-driven where cases repeat.
 */
#include "test.h"

#include "base/common.h"
#include "base/file.h"
#include "wire/frame.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- ss_parse_u64 ---------------------------------------------------------- */

static void parse_u64_cases(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int base, suffix;
        uint64_t max;
        int ok;
        uint64_t want;
    } cases[] = {
        /* bases */
        { "0", 10, SS_NUM_PLAIN, UINT64_MAX, 1, 0 },
        { "42", 10, SS_NUM_PLAIN, UINT64_MAX, 1, 42 },
        { "007", 10, SS_NUM_PLAIN, UINT64_MAX, 1, 7 },
        { "0x10", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "0x10", 0, SS_NUM_PLAIN, UINT64_MAX, 1, 16 },
        { "0XfF", 0, SS_NUM_PLAIN, UINT64_MAX, 1, 255 },
        { "010", 0, SS_NUM_PLAIN, UINT64_MAX, 1, 8 },
        { "08", 0, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "0x", 0, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        /* what a number must start with, and what may follow it */
        { "", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { " 5", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "\t5", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "+5", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "+5", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "-5", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "-0", 0, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        { "5 ", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "5x", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "1.5", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "1e3", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        /* overflow */
        { "18446744073709551615", 10, SS_NUM_PLAIN, UINT64_MAX, 1, UINT64_MAX },
        { "18446744073709551616", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "99999999999999999999999", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "0xffffffffffffffff", 0, SS_NUM_PLAIN, UINT64_MAX, 1, UINT64_MAX },
        { "0x10000000000000000", 0, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "17179869183G", 0, SS_NUM_KMG, UINT64_MAX, 1, ((1ull << 34) - 1) << 30 },
        { "17179869184G", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "18014398509481984K", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        /* suffixes: K M G in either case, binary; B and iB only for bytes */
        { "5K", 10, SS_NUM_PLAIN, UINT64_MAX, 0, 0 },
        { "5K", 0, SS_NUM_KMG, UINT64_MAX, 1, 5120 },
        { "5k", 0, SS_NUM_KMG, UINT64_MAX, 1, 5120 },
        { "2m", 0, SS_NUM_KMG, UINT64_MAX, 1, 2u << 20 },
        { "2M", 10, SS_NUM_KMG, UINT64_MAX, 1, 2u << 20 },
        { "1G", 0, SS_NUM_KMG, UINT64_MAX, 1, 1u << 30 },
        { "3g", 0, SS_NUM_KMG, UINT64_MAX, 1, 3ull << 30 },
        { "0x10K", 0, SS_NUM_KMG, UINT64_MAX, 1, 16u << 10 },
        { "1T", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "1KK", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "K", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "1MB", 0, SS_NUM_KMG, UINT64_MAX, 0, 0 },
        { "64MiB", 10, SS_NUM_BYTES, UINT64_MAX, 1, 64u << 20 },
        { "64MB", 10, SS_NUM_BYTES, UINT64_MAX, 1, 64u << 20 },
        { "64M", 10, SS_NUM_BYTES, UINT64_MAX, 1, 64u << 20 },
        { "64", 10, SS_NUM_BYTES, UINT64_MAX, 1, 64 },
        { "64B", 10, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        { "64Mi", 10, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        { "64Mib", 10, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        { "64MiBB", 10, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        { "64mb", 10, SS_NUM_BYTES, UINT64_MAX, 0, 0 },
        /* the bound applies once multiplied */
        { "1024", 10, SS_NUM_BYTES, 1024, 1, 1024 },
        { "1025", 10, SS_NUM_BYTES, 1024, 0, 0 },
        { "1K", 10, SS_NUM_BYTES, 1024, 1, 1024 },
        { "2K", 10, SS_NUM_BYTES, 1024, 0, 0 },
        { "0", 10, SS_NUM_PLAIN, 0, 1, 0 },
        { "1", 10, SS_NUM_PLAIN, 0, 0, 0 },
        { "4294967295", 0, SS_NUM_PLAIN, UINT32_MAX, 1, UINT32_MAX },
        { "4294967296", 0, SS_NUM_PLAIN, UINT32_MAX, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t v = 12345;
        int rc = ss_parse_u64(cases[i].s, cases[i].base, cases[i].suffix, cases[i].max, &v);
        if (rc != (cases[i].ok ? 0 : -1) || v != (cases[i].ok ? cases[i].want : 12345))
            fail_msg("'%s' (base %d, suffix %d, max %llu): rc %d, value %llu; expected %s %llu",
                     cases[i].s, cases[i].base, cases[i].suffix,
                     (unsigned long long)cases[i].max, rc, (unsigned long long)v,
                     cases[i].ok ? "0 and" : "-1 and the value untouched,",
                     (unsigned long long)(cases[i].ok ? cases[i].want : 12345));
    }
    uint64_t v = 7;
    ASSERT_INT_EQ(ss_parse_u64(NULL, 10, SS_NUM_PLAIN, UINT64_MAX, &v), -1);
    ASSERT_UINT_EQ(v, 7);
}

/* ---- ss_env_int ----------------------------------------------------------- */

static void env_int_cases(void **state)
{
    (void)state;
    static const char name[] = "SS_TEST_COMMON_INT";
    unsetenv(name);
    ASSERT_INT_EQ(ss_env_int(name, 77), 77);
    static const struct {
        const char *v;
        int want;    /* with the default 77 */
    } cases[] = {
        { "", 77 },  { "250", 250 },     { "1", 1 },        { "3600000", 3600000 },
        { "0", 77 }, { "3600001", 77 },  { "abc", 77 },     { "-5", 77 },
        { " 5", 77 }, { "+5", 77 },      { "5 ", 77 },      { "5K", 77 },
        { "0x10", 77 }, { "99999999999999999999", 77 },      { "2.5", 77 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv(name, cases[i].v, 1);
        int got = ss_env_int(name, 77);
        if (got != cases[i].want)
            fail_msg("%s='%s': %d, expected %d", name, cases[i].v, got, cases[i].want);
    }
    unsetenv(name);
}

/* ---- ss_say ------------------------------------------------------------------- */

static void say_truncates(void **state)
{
    (void)state;
    char err[8];
    memset(err, 'x', sizeof err);
    ss_say(err, sizeof err, "%s %d", "abcdef", 12345);
    ASSERT_STR_EQ(err, "abcdef ");   /* 7 characters and the NUL */
    ss_say(err, sizeof err, "ok %d", 1);
    ASSERT_STR_EQ(err, "ok 1");
    /* errlen 0 leaves the buffer alone; NULL is accepted */
    memset(err, 'x', sizeof err);
    ss_say(err, 0, "anything");
    ASSERT_INT_EQ(err[0], 'x');
    ss_say(NULL, 100, "nowhere %d", 1);
    char one[1] = { 'x' };
    ss_say(one, sizeof one, "abc");
    ASSERT_INT_EQ(one[0], '\0');
}

/* ---- ss_file_read ----------------------------------------------------------- */

static void file_read_bounds(void **state)
{
    (void)state;
    const char *path = test_path("small");
    test_write_file(path, "0123456789", 10, 0640);
    char *buf = NULL, err[512] = "";
    size_t len = 99;
    mode_t mode = 0;
    assert_int_equal(ss_file_read(path, 10, 0, &buf, &len, &mode, err, sizeof err), SS_OK);
    ASSERT_UINT_EQ(len, 10);
    ASSERT_STR_EQ(buf, "0123456789");   /* the NUL after the bytes */
    ASSERT_INT_EQ(mode, 0640);
    ss_file_free(buf, len, 0);

    /* one byte over the bound */
    buf = (char *)1;
    len = 99;
    assert_int_equal(ss_file_read(path, 9, 0, &buf, &len, NULL, err, sizeof err), SS_ERR_TOOBIG);
    assert_null(buf);
    ASSERT_UINT_EQ(len, 0);
    char want[600];
    snprintf(want, sizeof want, "%s: larger than 9 bytes", path);
    ASSERT_STR_EQ(err, want);

    /* an empty file is a buffer holding only the NUL */
    const char *empty = test_path("empty");
    test_write_file(empty, "", 0, 0600);
    assert_int_equal(ss_file_read(empty, 0, 0, &buf, &len, NULL, err, sizeof err), SS_OK);
    assert_non_null(buf);
    ASSERT_UINT_EQ(len, 0);
    ASSERT_INT_EQ(buf[0], '\0');
    ss_file_free(buf, len, 0);

    /* binary content comes back whole, NULs included */
    const char bin[] = { 'a', '\0', 'b', '\n', '\0' };
    test_write_file(path, bin, sizeof bin, 0600);
    assert_int_equal(ss_file_read(path, 64, 0, &buf, &len, NULL, err, sizeof err), SS_OK);
    ASSERT_UINT_EQ(len, sizeof bin);
    assert_memory_equal(buf, bin, sizeof bin);
    ss_file_free(buf, len, 0);
    ss_file_free(NULL, 0, 0);
    ss_file_free(NULL, 0, SS_FILE_SECRET);
}

static void file_read_refusals(void **state)
{
    (void)state;
    char *buf = (char *)1, err[512] = "", want[600];
    size_t len = 99;
    /* not a regular file */
    assert_int_equal(ss_file_read(test_dir(), 1 << 20, 0, &buf, &len, NULL, err, sizeof err),
                     SS_ERR_FORMAT);
    assert_null(buf);
    ASSERT_UINT_EQ(len, 0);
    snprintf(want, sizeof want, "%s: not a regular file", test_dir());
    ASSERT_STR_EQ(err, want);
    /* a FIFO with no writer: refused at once, not waited on */
    const char *fifo = test_path("fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(ss_file_read(fifo, 1 << 20, 0, &buf, &len, NULL, err, sizeof err),
                     SS_ERR_FORMAT);
    snprintf(want, sizeof want, "%s: not a regular file", fifo);
    ASSERT_STR_EQ(err, want);
    /* a missing file: errno's text, the path named */
    const char *missing = test_path("missing");
    buf = (char *)1;
    assert_int_equal(ss_file_read(missing, 1 << 20, 0, &buf, &len, NULL, err, sizeof err),
                     SS_ERR_IO);
    assert_null(buf);
    snprintf(want, sizeof want, "cannot open %s: %s", missing, strerror(ENOENT));
    ASSERT_STR_EQ(err, want);
    /* unreadable (unless we are root, who reads anything) */
    if (geteuid() != 0) {
        const char *locked = test_path("locked");
        test_write_file(locked, "x", 1, 0000);
        assert_int_equal(ss_file_read(locked, 16, 0, &buf, &len, NULL, err, sizeof err),
                         SS_ERR_IO);
        snprintf(want, sizeof want, "cannot open %s: %s", locked, strerror(EACCES));
        ASSERT_STR_EQ(err, want);
    }
    /* no message buffer: the same result */
    assert_int_equal(ss_file_read(missing, 16, 0, &buf, &len, NULL, NULL, 0), SS_ERR_IO);
}

/* Locked memory of this process, from /proc/self/status (kB). */
static long locked_kb(void)
{
    char *status = test_read_file("/proc/self/status", NULL);
    const char *p = strstr(status, "VmLck:");
    long kb = p ? strtol(p + 6, NULL, 10) : -1;
    free(status);
    return kb;
}

static void file_read_secret(void **state)
{
    (void)state;
    const char *path = test_path("secret");
    test_write_file(path, "key 00112233\n", 13, 0600);
    long before = locked_kb();
    ASSERT_INT_GE(before, 0);
    char *buf = NULL, err[512] = "";
    size_t len = 0;
    mode_t mode = 0;
    assert_int_equal(ss_file_read(path, 4096, SS_FILE_SECRET, &buf, &len, &mode, err,
                                  sizeof err), SS_OK);
    ASSERT_STR_EQ(buf, "key 00112233\n");
    ASSERT_UINT_EQ(len, 13);
    ASSERT_INT_EQ(mode, 0600);
#if !defined(__SANITIZE_ADDRESS__)   /* AddressSanitizer makes mlock a no-op */
    /* the buffer is in locked memory (never swapped out) ... */
    ASSERT_INT_GT(locked_kb(), before);
#endif
    /* ... and freeing it with the flag unlocks it again */
    ss_file_free(buf, len, SS_FILE_SECRET);
    ASSERT_INT_EQ(locked_kb(), before);
    /* bounds hold for secrets too */
    buf = (char *)1;
    assert_int_equal(ss_file_read(path, 12, SS_FILE_SECRET, &buf, &len, NULL, err, sizeof err),
                     SS_ERR_TOOBIG);
    assert_null(buf);
    ASSERT_INT_EQ(locked_kb(), before);
}

/* ---- ss_file_write_new ------------------------------------------------------- */

static void file_write_new(void **state)
{
    (void)state;
    const char *path = test_path("new");
    char err[512] = "", want[600];
    struct stat st;
    /* the exact mode, whatever the umask */
    mode_t old = umask(0077);
    assert_int_equal(ss_file_write_new(path, 0644, "hello\n", 6, err, sizeof err), SS_OK);
    umask(old);
    assert_int_equal(stat(path, &st), 0);
    ASSERT_INT_EQ(st.st_mode & 07777, 0644);
    size_t len;
    char *text = test_read_file(path, &len);
    ASSERT_STR_EQ(text, "hello\n");
    ASSERT_UINT_EQ(len, 6);
    free(text);

    /* an existing file is refused and left as it was */
    assert_int_equal(ss_file_write_new(path, 0600, "other", 5, err, sizeof err), SS_ERR_IO);
    snprintf(want, sizeof want, "%s already exists; refusing to overwrite it (remove it first "
             "to replace it)", path);
    ASSERT_STR_EQ(err, want);
    text = test_read_file(path, NULL);
    ASSERT_STR_EQ(text, "hello\n");
    free(text);
    assert_int_equal(stat(path, &st), 0);
    ASSERT_INT_EQ(st.st_mode & 07777, 0644);

    /* a secret file with umask 0 is still 0600; an empty file is fine */
    const char *secret = test_path("secret");
    old = umask(0);
    assert_int_equal(ss_file_write_new(secret, 0600, "", 0, err, sizeof err), SS_OK);
    umask(old);
    assert_int_equal(stat(secret, &st), 0);
    ASSERT_INT_EQ(st.st_mode & 07777, 0600);
    ASSERT_INT_EQ(st.st_size, 0);

    /* a directory that does not exist: named, nothing created */
    const char *nowhere = test_path("no/such/file");
    assert_int_equal(ss_file_write_new(nowhere, 0600, "x", 1, err, sizeof err), SS_ERR_IO);
    snprintf(want, sizeof want, "cannot create %s: %s", nowhere, strerror(ENOENT));
    ASSERT_STR_EQ(err, want);
    assert_false(test_exists(nowhere));
}

/* ---- ss_stream_from_env --------------------------------------------------------- */

static void stream_from_env(void **state)
{
    (void)state;
    uint32_t id = 1;
    char err[256] = "";
    unsetenv("SS_STREAM");
    assert_int_equal(ss_stream_from_env(&id, err, sizeof err), SS_OK);
    ASSERT_UINT_EQ(id, SS_DEFAULT_STREAM);
    static const struct {
        const char *v;
        int ok;
        uint32_t want;
    } cases[] = {
        { "", 1, SS_DEFAULT_STREAM },   { "7001", 1, 7001 },
        { "0", 1, 0 },                  { "0x1234abcd", 1, 0x1234abcd },
        { "0XFFFFFFFF", 1, UINT32_MAX }, { "4294967295", 1, UINT32_MAX },
        { "4294967296", 0, 0 },         { "0x100000000", 0, 0 },
        { "99999999999999999999999", 0, 0 },
        { "abc", 0, 0 },                { "-1", 0, 0 },
        { " 5", 0, 0 },                 { "+5", 0, 0 },
        { "12x", 0, 0 },                { "5K", 0, 0 },
        { "0x", 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv("SS_STREAM", cases[i].v, 1);
        id = 1;
        snprintf(err, sizeof err, "untouched");
        ss_err rc = ss_stream_from_env(&id, err, sizeof err);
        if (cases[i].ok) {
            if (rc != SS_OK || id != cases[i].want)
                fail_msg("SS_STREAM='%s': rc %d, id %u (%s); expected %u", cases[i].v, rc,
                         (unsigned)id, err, (unsigned)cases[i].want);
            ASSERT_STR_EQ(err, "untouched");
            continue;
        }
        if (rc != SS_ERR_USAGE)
            fail_msg("SS_STREAM='%s': accepted as %u", cases[i].v, (unsigned)id);
        char want[256];
        snprintf(want, sizeof want, "SS_STREAM=%s: not a pipeline id (a number from 0 to "
                 "4294967295, decimal or 0x hex)", cases[i].v);
        ASSERT_STR_EQ(err, want);
        ASSERT_UINT_EQ(id, SS_DEFAULT_STREAM);
    }
    unsetenv("SS_STREAM");
}

int main(void)
{
    /* SS_FILE_SECRET buffers come from sodium_malloc, which aborts before
     * sodium_init. */
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_u64_cases),
        cmocka_unit_test(env_int_cases),
        cmocka_unit_test(say_truncates),
        cmocka_unit_test_setup_teardown(file_read_bounds, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(file_read_refusals, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(file_read_secret, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(file_write_new, test_dir_setup, test_dir_teardown),
        cmocka_unit_test(stream_from_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
