/*
 * test_cli.c - the command-line layer (src/cli.c): every option type with its
 * bounds and suffixes, environment defaults and their override, the three
 * ways to give a value, "--", positional arguments, --help, and the one
 * error format. Each case parses into fresh values whose defaults differ
 * from what the case expects, with stdout and stderr captured.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test.h"

#include "cli.h"
#include "base/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UNSET 77777   /* the default of every number: no case expects it */

static const char *const modes[] = { "skip", "fail", NULL };
static const char *const env_names[] = { "T_VERBOSE", "T_TO", "T_COUNT", "T_WAIT", "T_MODE", "T_ITEM" };

/* Everything one parse stores, and what it printed. */
typedef struct {
    int verbose, header, level;
    const char *to, *mode, *secret;
    uint64_t count, size, blocks, id, wait;
    const char *items[3];
    ss_optlist list;
    char *args[4];
    int nargs;
    char out[8192], err[8192];   /* stdout and stderr of the parse */
} vals;

/* Run f with file descriptor fd sent to a temporary file; its text into buf. */
static int captured(int fd, char *buf, size_t size, int (*f)(void *), void *arg)
{
    FILE *stream = fd == 1 ? stdout : stderr;
    fflush(stream);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    int saved = dup(fd);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), fd) >= 0);
    int rc = f(arg);
    fflush(stream);
    assert_true(dup2(saved, fd) >= 0);
    close(saved);
    rewind(tmp);
    size_t n = fread(buf, 1, size - 1, tmp);
    buf[n] = '\0';
    fclose(tmp);
    return rc;
}

typedef struct {
    vals *v;
    const ss_cli *cli;
    int argc;
    char **argv;
    int rc;
} call;

static int parse_now(void *p)
{
    call *c = p;
    return ss_cli_parse(c->cli, c->argc, c->argv, c->v->args, &c->v->nargs);
}

static int parse_with_stdout(void *p)
{
    call *c = p;
    return captured(1, c->v->out, sizeof c->v->out, parse_now, c);
}

/* Parse argv (NULL-terminated, without the command's name) with the test
 * table; options_first as in ss_cli. */
static int parse_argv(vals *v, int options_first, const char *const *argv)
{
    memset(v, 0, sizeof *v);
    v->verbose = v->header = v->level = UNSET;
    v->to = v->mode = v->secret = "unset";
    v->count = v->size = v->blocks = v->id = v->wait = UNSET;
    v->list.items = v->items;
    const ss_opt opts[] = {
        { "--verbose", 'v', SS_OPT_FLAG, &v->verbose, NULL, "say more", .env = "T_VERBOSE" },
        { "--header", 0, SS_OPT_FLAG, &v->header, NULL, "the first line is a header", .value = 1 },
        { "--no-header", 0, SS_OPT_FLAG, &v->header, NULL, "every line is a record", .flags = SS_OPTF_CLEAR },
        { "--level", 0, SS_OPT_FLAG, &v->level, NULL, "level three", .value = 3 },
        { "--to", 't', SS_OPT_STRING, &v->to, "ADDR", "where to", .env = "T_TO" },
        { "--count", 'n', SS_OPT_UINT, &v->count, "N", "how many", .env = "T_COUNT", .min = 1, .max = 100 },
        { "--size", 0, SS_OPT_UINT, &v->size, "BYTES", "how big", .max = 1u << 30, .suffix = SS_NUM_BYTES },
        { "--blocks", 0, SS_OPT_UINT, &v->blocks, "N", "blocks", .max = UINT64_MAX, .suffix = SS_NUM_KMG },
        { "--id", 0, SS_OPT_UINT, &v->id, "ID", "an id", .max = UINT32_MAX, .flags = SS_OPTF_HEX },
        { "--wait", 0, SS_OPT_MS, &v->wait, "MS", "how long", .env = "T_WAIT", .min = 10, .max = 60000 },
        { "--mode", 0, SS_OPT_CHOICE, &v->mode, "MODE", "skip or fail", .env = "T_MODE", .choices = modes },
        { "--item", 'i', SS_OPT_LIST, &v->list, "ITEM", "an item", .env = "T_ITEM", .max = 3 },
        { "--secret", 0, SS_OPT_STRING, &v->secret, "S", "internal", .flags = SS_OPTF_HIDDEN },
        { NULL },
    };
    const ss_cli cli = {
        .name = "tcli", .synopsis = "IN [OUT] [options]", .opts = opts,
        .about = "A command to test the parser.", .epilogue = "Exit status: 0 or 2.",
        .min_args = 1, .max_args = options_first ? 4 : 2, .options_first = options_first,
    };
    char *args[32];
    int argc = 0;
    args[argc++] = (char *)"tcli";
    for (; *argv; argv++) {
        assert_true(argc < 31);
        args[argc++] = (char *)*argv;
    }
    args[argc] = NULL;
    call c = { v, &cli, argc, args, 0 };
    return captured(2, v->err, sizeof v->err, parse_with_stdout, &c);
}

#define PARSE(v, ...) parse_argv((v), 0, (const char *const[]){ __VA_ARGS__, NULL })

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof env_names / sizeof env_names[0]; i++)
        unsetenv(env_names[i]);
}

static int setup(void **state)
{
    (void)state;
    clear_env();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    clear_env();
    return 0;
}

/* The usage error format: one line "securestreams tcli: ..." containing
 * `what`, then the pointer to --help, nothing on stdout. */
static void assert_usage_error(int rc, const vals *v, const char *what)
{
    assert_int_equal(rc, SS_EXIT_USAGE);
    if (strncmp(v->err, "securestreams tcli: ", 20) != 0)
        fail_msg("message not in the one format: '%s'", v->err);
    const char *nl = strchr(v->err, '\n');
    assert_non_null(nl);
    if (!strstr(v->err, what) || strstr(v->err, what) > nl)
        fail_msg("'%s' not in the first line of '%s'", what, v->err);
    assert_string_equal(nl + 1, "(securestreams tcli --help prints the usage)\n");
    assert_string_equal(v->out, "");
}

static void assert_go(int rc, const vals *v)
{
    if (rc != SS_CLI_GO)
        fail_msg("parse returned %d: %s", rc, v->err);
    assert_string_equal(v->err, "");
    assert_string_equal(v->out, "");
}

static void defaults_stay(void **state)
{
    (void)state;
    vals v;
    int rc = PARSE(&v, "in");
    assert_go(rc, &v);
    assert_int_equal(v.verbose, UNSET);
    assert_int_equal(v.header, UNSET);
    assert_string_equal(v.to, "unset");
    assert_int_equal(v.count, UNSET);
    assert_int_equal(v.wait, UNSET);
    assert_string_equal(v.mode, "unset");
    assert_int_equal(v.list.n, 0);
    assert_int_equal(v.nargs, 1);
    assert_string_equal(v.args[0], "in");
}

static void flags(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--verbose", "in"), &v);
    assert_int_equal(v.verbose, 1);
    assert_go(PARSE(&v, "-v", "in"), &v);
    assert_int_equal(v.verbose, 1);
    assert_go(PARSE(&v, "--level", "in"), &v);
    assert_int_equal(v.level, 3);
    assert_go(PARSE(&v, "--no-header", "in"), &v);
    assert_int_equal(v.header, 0);
    assert_go(PARSE(&v, "--no-header", "--header", "in"), &v);
    assert_int_equal(v.header, 1);
    assert_go(PARSE(&v, "--header", "--no-header", "in"), &v);
    assert_int_equal(v.header, 0);
    int rc = PARSE(&v, "--verbose=1", "in");
    assert_usage_error(rc, &v, "--verbose takes no value");
    assert_int_equal(v.verbose, UNSET);
}

static void three_ways_to_give_a_value(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--to=tcp://a:1", "in"), &v);
    assert_string_equal(v.to, "tcp://a:1");
    assert_go(PARSE(&v, "--to", "tcp://b:2", "in"), &v);
    assert_string_equal(v.to, "tcp://b:2");
    assert_go(PARSE(&v, "in", "-t", "tcp://c:3"), &v);
    assert_string_equal(v.to, "tcp://c:3");
    assert_go(PARSE(&v, "-n", "5", "in", "--count=6"), &v);
    assert_int_equal(v.count, 6);
    /* a value may start with '-' */
    assert_go(PARSE(&v, "--to", "-", "in"), &v);
    assert_string_equal(v.to, "-");
    /* "--to=" is an empty value, not a missing one */
    assert_usage_error(PARSE(&v, "--to=", "in"), &v, "--to needs a value: ADDR");
    /* a name is matched whole: --tox is not --to */
    assert_usage_error(PARSE(&v, "--tox", "a", "in"), &v, "unknown option '--tox'");
}

static void missing_values(void **state)
{
    (void)state;
    vals v;
    assert_usage_error(PARSE(&v, "in", "--count"), &v, "--count needs a value: N");
    assert_usage_error(PARSE(&v, "in", "-n"), &v, "-n needs a value: N");
    assert_usage_error(PARSE(&v, "in", "--mode"), &v, "--mode needs a value: MODE");
}

static void uint_bounds(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--count", "1", "in"), &v);
    assert_int_equal(v.count, 1);
    assert_go(PARSE(&v, "--count", "100", "in"), &v);
    assert_int_equal(v.count, 100);
    static const char *const bad[] = { "0", "101", "abc", "-1", "", "12x", " 5", "0x10", "1K", "99999999999999999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "--count wants a whole number from 1 to 100, not '%s'", bad[i]);
        assert_usage_error(PARSE(&v, "--count", bad[i], "in"), &v, want);
        assert_int_equal(v.count, UNSET);
    }
}

static void uint_hex(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--id", "0x10", "in"), &v);
    assert_int_equal(v.id, 16);
    assert_go(PARSE(&v, "--id", "0xffffffff", "in"), &v);
    assert_int_equal(v.id, UINT32_MAX);
    assert_go(PARSE(&v, "--id", "4294967295", "in"), &v);
    assert_int_equal(v.id, UINT32_MAX);
    assert_go(PARSE(&v, "--id", "0", "in"), &v);
    assert_int_equal(v.id, 0);
    assert_usage_error(PARSE(&v, "--id", "4294967296", "in"), &v, "--id wants a whole number from 0 to 4294967295");
    assert_usage_error(PARSE(&v, "--id", "0x100000000", "in"), &v, "not '0x100000000'");
    assert_usage_error(PARSE(&v, "--id", "0x", "in"), &v, "not '0x'");
    assert_usage_error(PARSE(&v, "--id", "0xg", "in"), &v, "not '0xg'");
}

static void uint_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t want;
    } sizes[] = {
        { "64", 64 }, { "64K", 64u << 10 }, { "64k", 64u << 10 }, { "64M", 64u << 20 },
        { "64MB", 64u << 20 }, { "64MiB", 64u << 20 }, { "1G", 1u << 30 }, { "1GiB", 1u << 30 },
    };
    vals v;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        assert_go(PARSE(&v, "--size", sizes[i].text, "in"), &v);
        assert_int_equal(v.size, sizes[i].want);
    }
    assert_usage_error(PARSE(&v, "--size", "2G", "in"), &v, "(bytes; K, M, G suffixes), not '2G'");
    assert_usage_error(PARSE(&v, "--size", "64T", "in"), &v, "not '64T'");
    assert_usage_error(PARSE(&v, "--size", "64Mi", "in"), &v, "not '64Mi'");
    assert_go(PARSE(&v, "--blocks", "2k", "in"), &v);
    assert_int_equal(v.blocks, 2048);
    assert_go(PARSE(&v, "--blocks", "3G", "in"), &v);
    assert_int_equal(v.blocks, 3ull << 30);
    /* B belongs to byte sizes only */
    assert_usage_error(PARSE(&v, "--blocks", "2KB", "in"), &v, "--blocks wants a whole number (K, M, G suffixes), not '2KB'");
    /* no overflow when the suffix multiplies */
    assert_usage_error(PARSE(&v, "--blocks", "18014398509481984K", "in"), &v, "not '18014398509481984K'");
}

static void milliseconds(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t want;
    } good[] = { { "500", 500 }, { "500ms", 500 }, { "2s", 2000 }, { "10", 10 }, { "60s", 60000 }, { "60000ms", 60000 } };
    vals v;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_go(PARSE(&v, "--wait", good[i].text, "in"), &v);
        assert_int_equal(v.wait, good[i].want);
    }
    static const char *const bad[] = { "9", "61s", "60001", "1m", "s", "ms", "1.5s", "-1", "", "2 s", "0x10" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "--wait wants a time from 10 to 60000 ms (as 500, 500ms or 2s), not '%s'", bad[i]);
        assert_usage_error(PARSE(&v, "--wait", bad[i], "in"), &v, want);
        assert_int_equal(v.wait, UNSET);
    }
}

static void choices(void **state)
{
    (void)state;
    vals v;
    char fail[] = "fail";   /* not a literal the compiler could share with the table */
    assert_go(PARSE(&v, "--mode", fail, "in"), &v);
    assert_ptr_equal(v.mode, modes[1]);   /* the table's string, not argv's */
    assert_go(PARSE(&v, "--mode=skip", "in"), &v);
    assert_ptr_equal(v.mode, modes[0]);
    assert_usage_error(PARSE(&v, "--mode", "Skip", "in"), &v, "--mode: 'Skip' is not one of skip, fail");
    assert_string_equal(v.mode, "unset");
}

static void lists(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--item", "a", "in", "-i", "b", "--item=c"), &v);
    assert_int_equal(v.list.n, 3);
    assert_string_equal(v.items[0], "a");
    assert_string_equal(v.items[1], "b");
    assert_string_equal(v.items[2], "c");
    assert_usage_error(PARSE(&v, "-i", "a", "-i", "b", "-i", "c", "-i", "d", "in"), &v, "-i given more than 3 times");
    assert_int_equal(v.list.n, 3);
    assert_usage_error(PARSE(&v, "--item=", "in"), &v, "--item needs a value: ITEM");
}

static void environment_then_command_line(void **state)
{
    (void)state;
    vals v;
    setenv("T_COUNT", "7", 1);
    setenv("T_TO", "tcp://env:1", 1);
    setenv("T_WAIT", "2s", 1);
    setenv("T_MODE", "fail", 1);
    setenv("T_VERBOSE", "1", 1);
    setenv("T_ITEM", "e", 1);
    assert_go(PARSE(&v, "in"), &v);
    assert_int_equal(v.count, 7);
    assert_string_equal(v.to, "tcp://env:1");
    assert_int_equal(v.wait, 2000);
    assert_ptr_equal(v.mode, modes[1]);
    assert_int_equal(v.verbose, 1);
    assert_int_equal(v.list.n, 1);
    assert_string_equal(v.items[0], "e");

    assert_go(PARSE(&v, "--count", "9", "-t", "tcp://argv:2", "--wait", "30", "--mode", "skip", "-i", "a", "-i", "b", "in"), &v);
    assert_int_equal(v.count, 9);
    assert_string_equal(v.to, "tcp://argv:2");
    assert_int_equal(v.wait, 30);
    assert_ptr_equal(v.mode, modes[0]);
    /* the command line's list replaces the environment's */
    assert_int_equal(v.list.n, 2);
    assert_string_equal(v.items[0], "a");
    assert_string_equal(v.items[1], "b");

    setenv("T_VERBOSE", "0", 1);
    assert_go(PARSE(&v, "in"), &v);
    assert_int_equal(v.verbose, UNSET);
    /* an empty variable is no variable */
    setenv("T_COUNT", "", 1);
    assert_go(PARSE(&v, "in"), &v);
    assert_int_equal(v.count, UNSET);
}

static void bad_environment_names_the_variable(void **state)
{
    (void)state;
    vals v;
    setenv("T_COUNT", "abc", 1);
    assert_usage_error(PARSE(&v, "in"), &v, "T_COUNT wants a whole number from 1 to 100, not 'abc'");
    /* checked even when the command line would override it */
    assert_usage_error(PARSE(&v, "--count", "5", "in"), &v, "T_COUNT wants");
    unsetenv("T_COUNT");
    setenv("T_MODE", "bogus", 1);
    assert_usage_error(PARSE(&v, "in"), &v, "T_MODE: 'bogus' is not one of skip, fail");
    unsetenv("T_MODE");
    setenv("T_WAIT", "1h", 1);
    assert_usage_error(PARSE(&v, "in"), &v, "T_WAIT wants a time from 10 to 60000 ms");
}

static void double_dash_ends_options(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "-v", "--", "--count", "-"), &v);
    assert_int_equal(v.verbose, 1);
    assert_int_equal(v.count, UNSET);
    assert_int_equal(v.nargs, 2);
    assert_string_equal(v.args[0], "--count");
    assert_string_equal(v.args[1], "-");
    /* "-" alone is an argument (standard input) */
    assert_go(PARSE(&v, "-"), &v);
    assert_int_equal(v.nargs, 1);
    assert_string_equal(v.args[0], "-");
    /* after "--", --help is an argument too */
    assert_go(PARSE(&v, "--", "--help"), &v);
    assert_string_equal(v.args[0], "--help");
}

static void unknown_options(void **state)
{
    (void)state;
    vals v;
    assert_usage_error(PARSE(&v, "--bogus", "in"), &v, "unknown option '--bogus'");
    assert_usage_error(PARSE(&v, "in", "-x"), &v, "unknown option '-x'");
    assert_usage_error(PARSE(&v, "in", "-vn"), &v, "unknown option '-vn'");
    assert_usage_error(PARSE(&v, "--bogus=1", "in"), &v, "unknown option '--bogus=1'");
}

/* As getopt_long: an unambiguous abbreviation of a long option is that
 * option; an exact name wins over names it abbreviates; two candidates are
 * an error naming the option as typed. */
static void abbreviations(void **state)
{
    (void)state;
    vals v;
    assert_go(PARSE(&v, "--cou", "7", "in"), &v);
    assert_int_equal(v.count, 7);
    assert_go(PARSE(&v, "--si=2K", "in"), &v);
    assert_int_equal(v.size, 2048);
    assert_go(PARSE(&v, "--verb", "in"), &v);
    assert_int_equal(v.verbose, 1);
    assert_go(PARSE(&v, "--header", "in"), &v);      /* exact, though --header is no prefix of another */
    assert_int_equal(v.header, 1);
    assert_go(PARSE(&v, "--no-h", "in"), &v);
    assert_int_equal(v.header, 0);
    assert_usage_error(PARSE(&v, "--s", "in"), &v, "ambiguous option '--s'");   /* --size, --secret */
    assert_usage_error(PARSE(&v, "--x", "in"), &v, "unknown option '--x'");
    assert_usage_error(PARSE(&v, "--counter", "in"), &v, "unknown option '--counter'");
}

static void positional_bounds(void **state)
{
    (void)state;
    vals v;
    assert_usage_error(parse_argv(&v, 0, (const char *const[]){ NULL }), &v,
                       "missing arguments: securestreams tcli IN [OUT] [options]");
    assert_usage_error(PARSE(&v, "-v"), &v, "missing arguments");
    assert_go(PARSE(&v, "a", "b"), &v);
    assert_int_equal(v.nargs, 2);
    assert_string_equal(v.args[1], "b");
    assert_usage_error(PARSE(&v, "a", "b", "c"), &v, "unexpected argument 'c'");
}

static void options_first(void **state)
{
    (void)state;
    vals v;
    int rc = parse_argv(&v, 1, (const char *const[]){ "-n", "3", "s.lua", "--count", "9", "--help", NULL });
    assert_go(rc, &v);
    assert_int_equal(v.count, 3);
    assert_int_equal(v.nargs, 4);
    assert_string_equal(v.args[0], "s.lua");
    assert_string_equal(v.args[1], "--count");
    assert_string_equal(v.args[2], "9");
    assert_string_equal(v.args[3], "--help");
    /* without it, options after an argument are still options */
    assert_go(PARSE(&v, "s.lua", "--count", "9"), &v);
    assert_int_equal(v.count, 9);
    assert_int_equal(v.nargs, 1);
}

static void help(void **state)
{
    (void)state;
    vals v;
    const char *const *forms[] = {
        (const char *const[]){ "--help", NULL },
        (const char *const[]){ "-h", NULL },
        (const char *const[]){ "in", "--count", "5", "--help", NULL },
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        int rc = parse_argv(&v, 0, forms[i]);
        assert_int_equal(rc, SS_EXIT_OK);
        assert_string_equal(v.err, "");
        if (strncmp(v.out, "usage: securestreams tcli IN [OUT] [options]\nA command to test the parser.\n", 74) != 0)
            fail_msg("usage starts wrong: '%s'", v.out);
        ASSERT_CONTAINS(v.out, "\n  -v, --verbose         say more (env T_VERBOSE)\n");
        ASSERT_CONTAINS(v.out, "\n  -n, --count N         how many (env T_COUNT)\n");
        ASSERT_CONTAINS(v.out, "\n  -i, --item ITEM       an item (repeatable) (env T_ITEM)\n");
        ASSERT_CONTAINS(v.out, "\n  --no-header           every line is a record\n");
        assert_null(strstr(v.out, "--secret"));
        size_t n = strlen(v.out);
        assert_true(n > 22);
        assert_string_equal(v.out + n - 22, "\nExit status: 0 or 2.\n");
    }
}

static int fail_with_error(void *p)
{
    const ss_cli *cli = p;
    return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot open %s: %s", "x.csv", "No such file");
}

static void fail_format(void **state)
{
    (void)state;
    const ss_cli cli = { .name = "tcli" };
    char err[256];
    int rc = captured(2, err, sizeof err, fail_with_error, (void *)&cli);
    assert_int_equal(rc, SS_EXIT_ERROR);
    /* not a usage error: no pointer to --help */
    assert_string_equal(err, "securestreams tcli: cannot open x.csv: No such file\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(defaults_stay, setup, teardown),
        cmocka_unit_test_setup_teardown(flags, setup, teardown),
        cmocka_unit_test_setup_teardown(three_ways_to_give_a_value, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_values, setup, teardown),
        cmocka_unit_test_setup_teardown(uint_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(uint_hex, setup, teardown),
        cmocka_unit_test_setup_teardown(uint_suffixes, setup, teardown),
        cmocka_unit_test_setup_teardown(milliseconds, setup, teardown),
        cmocka_unit_test_setup_teardown(choices, setup, teardown),
        cmocka_unit_test_setup_teardown(lists, setup, teardown),
        cmocka_unit_test_setup_teardown(environment_then_command_line, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_environment_names_the_variable, setup, teardown),
        cmocka_unit_test_setup_teardown(double_dash_ends_options, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_options, setup, teardown),
        cmocka_unit_test_setup_teardown(abbreviations, setup, teardown),
        cmocka_unit_test_setup_teardown(positional_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(options_first, setup, teardown),
        cmocka_unit_test_setup_teardown(help, setup, teardown),
        cmocka_unit_test_setup_teardown(fail_format, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
