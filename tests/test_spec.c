/*
 * test_spec.c - loading pipeline specs (lib/pipeline/spec.c, docs/spec.md)
 * from files in a temporary directory: every field read back, the
 * defaults, paths relative to the spec's directory, unknown fields and
 * wrong types refused with the file and the field named, the bounds on
 * stages, workers and batch sizes, the spec's sandbox (no io, os or
 * require), and fusing the stages into one.
 */
#include "test.h"

#include "pipeline/spec.h"
#include "wire/frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Write `text` as the spec file and load it; the path in *path. */
static ss_err load(const char *text, ss_spec *s, char *err, size_t errlen, const char **path)
{
    const char *p = test_path("p.spec.lua");
    test_write_text(p, text);
    if (path)
        *path = p;
    err[0] = '\0';
    return ss_spec_load(p, s, err, errlen);
}

/* Load `text`, which must fail with rc and the message "PATH: " + want. */
static void refused(const char *text, ss_err rc, const char *want)
{
    ss_spec s;
    char err[1024], expect[1200];
    const char *path;
    ss_err got = load(text, &s, err, sizeof err, &path);
    if (got != rc)
        fail_msg("rc %d (%s), expected %d for:\n%s", got, err, rc, text);
    snprintf(expect, sizeof expect, "%s: %s", path, want);
    ASSERT_STR_EQ(err, expect);
    /* nothing is left allocated or half set */
    assert_null(s.path);
    assert_null(s.name);
    ASSERT_INT_EQ(s.nstages, 0);
}

/* A spec from three parts: the top-level fields, the source, the stages. */
static const char *spec_text(const char *top, const char *source, const char *stages)
{
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "return {\n%s\n  source = { %s },\n  stages = {\n%s\n  },\n"
             "  sink = { script = 'printer.lua' },\n}\n",
             top, source, stages);
    return buf;
}

#define ONE_STAGE "    { name = 'm', script = 'm.lua' },"

static void every_field(void **state)
{
    (void)state;
    ss_spec s;
    char err[1024], want[1024];
    const char *path;
    const char *text =
        "return {\n"
        "  name = 'delayed-flights',\n"
        "  source = { file = 'data/flights.csv', header = false, batch_bytes = 4096 },\n"
        "  stages = {\n"
        "    { name = 'mapper', script = 'mapper.lua', workers = 3, enclave = true },\n"
        "    { name = 'filter', script = '/abs/filter.lua', workers = 64 },\n"
        "    { name = 'reducer', script = 'sub/reducer.lua', workers = 1, enclave = false },\n"
        "  },\n"
        "  sink = { script = 'printer.lua' },\n"
        "  security = 'encrypted',\n"
        "  key = 'keys/data.key',\n"
        "  fuse = true,\n"
        "  on_error = 'fail',\n"
        "}\n";
    if (load(text, &s, err, sizeof err, &path) != SS_OK)
        fail_msg("%s", err);
    const char *dir = test_dir();
    ASSERT_STR_EQ(s.path, path);
    ASSERT_STR_EQ(s.name, "delayed-flights");
    snprintf(want, sizeof want, "%s/data/flights.csv", dir);
    ASSERT_STR_EQ(s.input, want);
    ASSERT_INT_EQ(s.header, 0);
    ASSERT_INT_EQ(s.batch_bytes, 4096);
    ASSERT_INT_EQ(s.nstages, 3);
    ASSERT_STR_EQ(s.stages[0].name, "mapper");
    snprintf(want, sizeof want, "%s/mapper.lua", dir);
    ASSERT_STR_EQ(s.stages[0].script, want);
    ASSERT_INT_EQ(s.stages[0].workers, 3);
    ASSERT_INT_EQ(s.stages[0].enclave, 1);
    ASSERT_STR_EQ(s.stages[1].name, "filter");
    ASSERT_STR_EQ(s.stages[1].script, "/abs/filter.lua");   /* absolute: as written */
    ASSERT_INT_EQ(s.stages[1].workers, 64);
    ASSERT_INT_EQ(s.stages[1].enclave, 0);
    ASSERT_STR_EQ(s.stages[2].name, "reducer");
    snprintf(want, sizeof want, "%s/sub/reducer.lua", dir);
    ASSERT_STR_EQ(s.stages[2].script, want);
    ASSERT_INT_EQ(s.stages[2].workers, 1);
    ASSERT_INT_EQ(s.stages[2].enclave, 0);
    snprintf(want, sizeof want, "%s/printer.lua", dir);
    ASSERT_STR_EQ(s.sink_script, want);
    ASSERT_STR_EQ(s.security, "encrypted");
    snprintf(want, sizeof want, "%s/keys/data.key", dir);
    ASSERT_STR_EQ(s.key, want);
    ASSERT_STR_EQ(s.on_error, "fail");
    ASSERT_INT_EQ(s.fuse, 1);
    ss_spec_cleanup(&s);
    assert_null(s.path);
    ASSERT_INT_EQ(s.nstages, 0);
    ss_spec_cleanup(&s);   /* twice is harmless */
}

static void defaults(void **state)
{
    (void)state;
    ss_spec s;
    char err[1024], want[1024];
    const char *text =
        "return { source = {}, stages = { { script = 'a.lua' }, { script = 'b.lua' } },\n"
        "         sink = { script = 'p.lua' } }\n";
    if (load(text, &s, err, sizeof err, NULL) != SS_OK)
        fail_msg("%s", err);
    ASSERT_STR_EQ(s.name, "pipeline");
    assert_null(s.input);            /* run --input gives it */
    ASSERT_INT_EQ(s.header, 1);
    ASSERT_INT_EQ(s.batch_bytes, SS_BATCH_BYTES);
    ASSERT_INT_EQ(s.nstages, 2);
    ASSERT_STR_EQ(s.stages[0].name, "stage1");
    ASSERT_STR_EQ(s.stages[1].name, "stage2");
    ASSERT_INT_EQ(s.stages[0].workers, 1);
    ASSERT_INT_EQ(s.stages[0].enclave, 0);
    ASSERT_STR_EQ(s.security, "plain");
    ASSERT_STR_EQ(s.on_error, "skip");
    assert_null(s.key);
    ASSERT_INT_EQ(s.fuse, 0);
    snprintf(want, sizeof want, "%s/p.lua", test_dir());
    ASSERT_STR_EQ(s.sink_script, want);
    ss_spec_cleanup(&s);

    /* A spec named without a directory: paths stay relative to the
     * working directory, which is then the spec's. */
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(test_dir()), 0);
    test_write_text("here.spec.lua", text);
    ss_err rc = ss_spec_load("here.spec.lua", &s, err, sizeof err);
    assert_int_equal(chdir(cwd), 0);
    if (rc != SS_OK)
        fail_msg("%s", err);
    ASSERT_STR_EQ(s.stages[0].script, "a.lua");
    ASSERT_STR_EQ(s.sink_script, "p.lua");
    ss_spec_cleanup(&s);
}

static void every_security_mode(void **state)
{
    (void)state;
    static const char *const modes[] = { "plain", "encrypted", "enclave" };
    for (size_t i = 0; i < 3; i++) {
        char top[64], err[1024];
        snprintf(top, sizeof top, "  security = '%s',", modes[i]);
        ss_spec s;
        if (load(spec_text(top, "", ONE_STAGE), &s, err, sizeof err, NULL) != SS_OK)
            fail_msg("security %s: %s", modes[i], err);
        ASSERT_STR_EQ(s.security, modes[i]);
        ss_spec_cleanup(&s);
    }
}

static void unknown_fields(void **state)
{
    (void)state;
    refused(spec_text("  worker = 2,", "", ONE_STAGE), SS_ERR_USAGE,
            "spec: unknown field 'worker'");
    refused(spec_text("", "file = 'x.csv', headers = true", ONE_STAGE), SS_ERR_USAGE,
            "source: unknown field 'headers'");
    refused(spec_text("", "", ONE_STAGE "\n    { script = 'b.lua', worker = 2 },"), SS_ERR_USAGE,
            "stages[2]: unknown field 'worker'");
    refused("return { source = {}, stages = { { script = 'a.lua' } },\n"
            "         sink = { script = 'p.lua', scripts = 'q.lua' } }\n",
            SS_ERR_USAGE, "sink: unknown field 'scripts'");
    refused(spec_text("  [1] = 'x',", "", ONE_STAGE), SS_ERR_USAGE, "spec: keys must be names");
    refused(spec_text("", "", "    { script = 'a.lua', 'b.lua' },"), SS_ERR_USAGE,
            "stages[1]: keys must be names");
    /* stages is a list: a name or an index past its end is a typo, not ignored */
    refused(spec_text("", "", ONE_STAGE "\n    extra = 1,"), SS_ERR_USAGE,
            "stages: unknown field 'extra' (stages is a list: { { name = ..., script = ... }, ... })");
    refused(spec_text("", "", ONE_STAGE "\n    [5] = { script = 'b.lua' },"), SS_ERR_USAGE,
            "stages: a list from 1 to 1 expected, with no other keys");
}

/* The spec's table is data: metamethods on it never run while it is read,
 * so one that raises or loops cannot crash or hang the command. */
static void metatables_ignored(void **state)
{
    (void)state;
    refused("local mt = { __index = function() error('gotcha') end,\n"
            "             __len = function() while true do end end }\n"
            "return setmetatable({}, mt)\n",
            SS_ERR_USAGE, "missing table 'source' (source = { file = ... })");
    refused("return { source = {}, sink = { script = 'p.lua' },\n"
            "  stages = setmetatable({}, { __len = function() return 1 end,\n"
            "                              __index = function() error('gotcha') end }) }\n",
            SS_ERR_USAGE, "stages: between 1 and 16 stages expected, got 0");
}

static void wrong_types(void **state)
{
    (void)state;
    static const struct {
        const char *top, *source, *stages, *want;
    } cases[] = {
        { "  name = 5,", "", ONE_STAGE, "spec.name: expected a string, got number" },
        { "  security = true,", "", ONE_STAGE, "spec.security: expected a string, got boolean" },
        { "  on_error = {},", "", ONE_STAGE, "spec.on_error: expected a string, got table" },
        { "  key = 1,", "", ONE_STAGE, "spec.key: expected a string, got number" },
        { "  fuse = 'yes',", "", ONE_STAGE, "spec.fuse: expected true or false" },
        { "", "file = 3", ONE_STAGE, "source.file: expected a string, got number" },
        { "", "header = 1", ONE_STAGE, "source.header: expected true or false" },
        { "", "batch_bytes = '4096'", ONE_STAGE, "source.batch_bytes: expected an integer" },
        { "", "batch_bytes = 4096.5", ONE_STAGE, "source.batch_bytes: expected an integer" },
        { "", "", "    { script = 'a.lua', workers = '2' },",
          "stages[1].workers: expected an integer" },
        { "", "", "    { script = 'a.lua', workers = 1.5 },",
          "stages[1].workers: expected an integer" },
        { "", "", "    { script = 'a.lua', enclave = 'yes' },",
          "stages[1].enclave: expected true or false" },
        { "", "", "    { script = 'a.lua', name = 7 },",
          "stages[1].name: expected a string, got number" },
        { "", "", "    { script = true },", "stages[1].script: expected a string, got boolean" },
        { "", "", ONE_STAGE "\n    'b.lua',", "stages[2]: expected a table" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        refused(spec_text(cases[i].top, cases[i].source, cases[i].stages), SS_ERR_USAGE,
                cases[i].want);
}

static void missing_parts(void **state)
{
    (void)state;
    refused("return { stages = { { script = 'a.lua' } }, sink = { script = 'p.lua' } }\n",
            SS_ERR_USAGE, "missing table 'source' (source = { file = ... })");
    refused("return { source = 'x.csv', stages = { { script = 'a.lua' } },\n"
            "         sink = { script = 'p.lua' } }\n",
            SS_ERR_USAGE, "missing table 'source' (source = { file = ... })");
    refused("return { source = {}, sink = { script = 'p.lua' } }\n", SS_ERR_USAGE,
            "missing table 'stages' (stages = { { name = ..., script = ... }, ... })");
    refused("return { source = {}, stages = { { script = 'a.lua' } } }\n", SS_ERR_USAGE,
            "missing table 'sink' (sink = { script = ... })");
    refused("return { source = {}, stages = { { script = 'a.lua' } }, sink = {} }\n",
            SS_ERR_USAGE, "sink: missing field 'script'");
    refused(spec_text("", "", "    { name = 'a' },"), SS_ERR_USAGE,
            "stages[1]: missing field 'script'");
    refused("return 5\n", SS_ERR_USAGE, "the spec must return a table, got number");
    refused("local x = 1\n", SS_ERR_USAGE, "the spec must return a table, got nil");
}

static void bounds(void **state)
{
    (void)state;
    char stages[4096], err[1024];
    ss_spec s;
    /* workers: 1 .. 64 */
    refused(spec_text("", "", "    { script = 'a.lua', workers = 0 },"), SS_ERR_USAGE,
            "stages[1].workers: must be between 1 and 64");
    refused(spec_text("", "", "    { script = 'a.lua', workers = 65 },"), SS_ERR_USAGE,
            "stages[1].workers: must be between 1 and 64");
    refused(spec_text("", "", "    { script = 'a.lua', workers = -1 },"), SS_ERR_USAGE,
            "stages[1].workers: must be between 1 and 64");
    refused(spec_text("", "", "    { script = 'a.lua', workers = 1 << 40 },"), SS_ERR_USAGE,
            "stages[1].workers: must be between 1 and 64");
    /* batch_bytes: 64 .. 8 MiB */
    refused(spec_text("", "batch_bytes = 63", ONE_STAGE), SS_ERR_USAGE,
            "source.batch_bytes: must be between 64 and 8388608");
    refused(spec_text("", "batch_bytes = 8388609", ONE_STAGE), SS_ERR_USAGE,
            "source.batch_bytes: must be between 64 and 8388608");
    static const long sizes[] = { 64, 8388608 };
    for (size_t i = 0; i < 2; i++) {
        char source[64];
        snprintf(source, sizeof source, "batch_bytes = %ld", sizes[i]);
        if (load(spec_text("", source, ONE_STAGE), &s, err, sizeof err, NULL) != SS_OK)
            fail_msg("batch_bytes %ld: %s", sizes[i], err);
        ASSERT_INT_EQ(s.batch_bytes, sizes[i]);
        ss_spec_cleanup(&s);
    }
    /* stages: 1 .. 16 */
    refused(spec_text("", "", ""), SS_ERR_USAGE, "stages: between 1 and 16 stages expected, got 0");
    size_t n = 0;
    for (int i = 1; i <= SS_MAX_STAGES; i++)
        n += (size_t)snprintf(stages + n, sizeof stages - n,
                              "    { script = 's%d.lua', workers = %d },\n", i, i);
    if (load(spec_text("", "", stages), &s, err, sizeof err, NULL) != SS_OK)
        fail_msg("16 stages: %s", err);
    ASSERT_INT_EQ(s.nstages, SS_MAX_STAGES);
    ASSERT_STR_EQ(s.stages[15].name, "stage16");
    ASSERT_INT_EQ(s.stages[15].workers, 16);
    ss_spec_cleanup(&s);
    snprintf(stages + n, sizeof stages - n, "    { script = 'one-too-many.lua' },\n");
    refused(spec_text("", "", stages), SS_ERR_USAGE,
            "stages: between 1 and 16 stages expected, got 17");
}

static void values_checked(void **state)
{
    (void)state;
    refused(spec_text("  security = 'bogus',", "", ONE_STAGE), SS_ERR_USAGE,
            "security: expected \"plain\", \"encrypted\" or \"enclave\", got \"bogus\"");
    refused(spec_text("  security = 'Plain',", "", ONE_STAGE), SS_ERR_USAGE,
            "security: expected \"plain\", \"encrypted\" or \"enclave\", got \"Plain\"");
    refused(spec_text("  on_error = 'ignore',", "", ONE_STAGE), SS_ERR_USAGE,
            "on_error: expected \"skip\" or \"fail\", got \"ignore\"");
    refused(spec_text("", "", "    { name = 'a', script = 'a.lua' },\n"
                              "    { name = 'a', script = 'b.lua' },"),
            SS_ERR_USAGE, "stages[2]: stage name 'a' is used twice");
    /* a default name counts too */
    refused(spec_text("", "", "    { name = 'stage2', script = 'a.lua' },\n"
                              "    { script = 'b.lua' },"),
            SS_ERR_USAGE, "stages[2]: stage name 'stage2' is used twice");
}

/* Lua errors name the file and the line; the spec runs with string, table
 * and math only. */
static void lua_errors_and_sandbox(void **state)
{
    (void)state;
    ss_spec s;
    char err[1024], want[1200];
    const char *path;
    assert_int_equal(load("return {\n  name = 'x',\n  stages = {{ script = 'a.lua' }\n}\n", &s,
                          err, sizeof err, &path), SS_ERR_USAGE);   /* a syntax error: the spec is wrong */
    snprintf(want, sizeof want, "%s:5:", path);   /* the unclosed table, at the end */
    ASSERT_CONTAINS(err, want);
    assert_int_equal(load("return {\n  name = nope.x,\n}\n", &s, err, sizeof err, &path),
                     SS_ERR_USAGE);
    snprintf(want, sizeof want, "%s:2: attempt to index a nil value (global 'nope')", path);
    ASSERT_STR_EQ(err, want);
    refused("error({})", SS_ERR_USAGE, "the spec raised an error that is not a string (a table)");
    static const char *const blocked[] = {
        "return io.open('/etc/hostname')",
        "return os.exit(1)",
        "return require('csv')",
        "return dofile('/etc/hostname')",
        "return loadfile('/etc/hostname')",
        "return load('return 1')",
    };
    for (size_t i = 0; i < sizeof blocked / sizeof *blocked; i++) {
        ss_err rc = load(blocked[i], &s, err, sizeof err, &path);
        if (rc != SS_ERR_USAGE)
            fail_msg("%s: rc %d (%s)", blocked[i], rc, err);
        snprintf(want, sizeof want, "%s:1: attempt to", path);
        ASSERT_CONTAINS(err, want);
        ASSERT_CONTAINS(err, "nil value");
    }
    /* string, table and math are there */
    const char *text =
        "local names = { 'm', 'f' }\n"
        "return { name = string.rep('ab', 2) .. table.concat(names, '-'),\n"
        "         source = { batch_bytes = math.max(100, 200) },\n"
        "         stages = { { script = 'a.lua', workers = math.floor(7 / 2) } },\n"
        "         sink = { script = ('%s.lua'):format('p') } }\n";
    if (load(text, &s, err, sizeof err, NULL) != SS_OK)
        fail_msg("%s", err);
    ASSERT_STR_EQ(s.name, "ababm-f");
    ASSERT_INT_EQ(s.batch_bytes, 200);
    ASSERT_INT_EQ(s.stages[0].workers, 3);
    ss_spec_cleanup(&s);
    /* a spec that is not there */
    const char *missing = test_path("missing.spec.lua");
    assert_int_equal(ss_spec_load(missing, &s, err, sizeof err), SS_ERR_IO);
    snprintf(want, sizeof want, "cannot open %s", missing);
    ASSERT_CONTAINS(err, want);
    assert_null(s.path);
}

/* The spec only records fuse = true; what fusing means (one stage of
 * workers running every script) is the plan's (test_plan.c). */
static void fuse_stages(void **state)
{
    (void)state;
    ss_spec s;
    char err[1024];
    const char *stages = "    { name = 'mapper', script = 'm.lua', workers = 2 },\n"
                         "    { name = 'reducer', script = 'r.lua', workers = 3 },";
    if (load(spec_text("  fuse = true,", "", stages), &s, err, sizeof err, NULL) != SS_OK)
        fail_msg("%s", err);
    ASSERT_INT_EQ(s.fuse, 1);
    ASSERT_INT_EQ(s.nstages, 2);   /* loading fuses nothing */
    ASSERT_STR_EQ(s.stages[1].name, "reducer");
    ss_spec_cleanup(&s);

    if (load(spec_text("", "", stages), &s, err, sizeof err, NULL) != SS_OK)
        fail_msg("%s", err);
    ASSERT_INT_EQ(s.fuse, 0);   /* the default */
    ss_spec_cleanup(&s);

    refused(spec_text("  fuse = 'yes',", "", stages), SS_ERR_USAGE, "spec.fuse: expected true or false");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, test_dir_setup, test_dir_teardown)
    const struct CMUnitTest tests[] = {
        T(every_field),    T(defaults), T(every_security_mode), T(unknown_fields),
        T(wrong_types),    T(missing_parts), T(bounds), T(values_checked),
        T(lua_errors_and_sandbox), T(fuse_stages), T(metatables_ignored),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
