/*
 * test_plan.c - the plan run and deploy share (lib/pipeline/plan.c): a spec
 * written to a temporary directory, resolved with overrides; every check with
 * its message naming the spec file, the stage or the option: worker counts
 * (one number, a list, a wrong list), fusing from the spec and from the
 * override, modes and keys, enclave stages, the input and the scripts,
 * sealed inputs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "pipeline/plan.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEALED_STREAM 0x1234abcdu
#define OVERRIDE_STREAM 77u

/* Three stages a, b, c of 1, 2 and 3 workers; extra fields follow. */
#define STAGES(b_extra)                                                                  \
    "stages = { { name = 'a', script = 'a.lua', workers = 1 },"                          \
    "           { name = 'b', script = 'b.lua', workers = 2" b_extra " },"               \
    "           { name = 'c', script = 'c.lua', workers = 3 } },"
#define SPEC(b_extra, extra)                                                             \
    "return { name = 'p', source = { file = 'in.csv' }, " STAGES(b_extra)                \
    " sink = { script = 'sink.lua' }, " extra " }\n"

typedef struct {
    char dir[64];
    char spec[128];           /* the spec the test wrote */
    char key_id[2 * SS_KEY_ID_BYTES + 1];   /* of dir/data.key */
    char other_id[2 * SS_KEY_ID_BYTES + 1]; /* of dir/other.key */
    char err[1024];
    ss_plan plan;
} fixture;

/* dir/name in buf. */
static const char *in_dir(const fixture *f, const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", f->dir, name);
    return buf;
}

static void put(const fixture *f, const char *name, const char *text, mode_t mode)
{
    char path[128];
    test_write_file(in_dir(f, name, path, sizeof path), text, strlen(text), mode);
}

/* A new key in dir/name; its id in hex in id. */
static void make_key(const fixture *f, const char *name, char id[2 * SS_KEY_ID_BYTES + 1])
{
    char path[128], err[256];
    ss_key_t k;
    ss_key_generate(&k);
    assert_int_equal(ss_key_save(&k, in_dir(f, name, path, sizeof path), err, sizeof err), SS_OK);
    ss_key_id_hex(k.id, id);
    ss_key_cleanup(&k);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "%s", test_dir_make());
    assert_int_equal(ss_crypto_init(), SS_OK);
    for (const char *const *s = (const char *const[]){ "a.lua", "b.lua", "c.lua", "sink.lua", NULL }; *s; s++)
        put(f, *s, "return function(s) return s end\n", 0644);
    put(f, "in.csv", "h\n1\n2\n", 0644);
    make_key(f, "data.key", f->key_id);
    make_key(f, "other.key", f->other_id);

    char in[128], out[128], key[128], err[256];
    ss_key_t k;
    assert_int_equal(ss_key_load(&k, in_dir(f, "data.key", key, sizeof key), err, sizeof err), SS_OK);
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    o.stream = SEALED_STREAM;
    assert_int_equal(ss_sealed_file_encrypt(in_dir(f, "in.csv", in, sizeof in),
                                            in_dir(f, "in.sealed", out, sizeof out), &k, &o, err,
                                            sizeof err), SS_OK);
    ss_key_cleanup(&k);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ss_plan_cleanup(&f->plan);
    test_dir_remove();
    free(f);
    return 0;
}

/* Write text as dir/x.spec.lua and resolve it with o. */
static ss_err resolve(fixture *f, const char *text, const ss_plan_overrides *o)
{
    put(f, "x.spec.lua", text, 0644);
    in_dir(f, "x.spec.lua", f->spec, sizeof f->spec);
    ss_plan_cleanup(&f->plan);
    f->err[0] = '\0';
    return ss_plan_resolve(f->spec, o, &f->plan, f->err, sizeof f->err);
}

/* The message expected in f->err, printf-style. */
static void assert_err(const fixture *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void assert_err(const fixture *f, const char *fmt, ...)
{
    char want[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    assert_string_equal(f->err, want);
}

#define ASSERT_HAS(hay, needle)                                                          \
    do {                                                                                 \
        if (!strstr((hay), (needle)))                                                    \
            fail_msg("expected \"%s\" in \"%s\"", (needle), (hay));                      \
    } while (0)

/* A failed resolve leaves nothing behind. */
static void assert_empty(const fixture *f)
{
    assert_null(f->plan.path);
    assert_null(f->plan.spec.path);
    assert_int_equal(f->plan.nstages, 0);
}

/* ---- the spec as written ---- */

static void resolves_the_spec_as_written(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .stream = OVERRIDE_STREAM };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    const ss_plan *p = &f->plan;
    char path[128];
    assert_string_equal(p->path, f->spec);
    assert_string_equal(p->name, "p");
    assert_int_equal(p->nstages, 3);
    assert_int_equal(p->fused, 0);
    const char *names[] = { "a", "b", "c" }, *scripts[] = { "a.lua", "b.lua", "c.lua" };
    for (int i = 0; i < 3; i++) {
        assert_string_equal(p->stages[i].name, names[i]);
        assert_int_equal(p->stages[i].nscripts, 1);
        assert_string_equal(p->stages[i].scripts[0], in_dir(f, scripts[i], path, sizeof path));
        assert_string_equal(p->stages[i].parts[0], names[i]);
        assert_int_equal(p->stages[i].workers, i + 1);
        assert_int_equal(p->stages[i].enclave, 0);
    }
    assert_int_equal(p->nenclave, 0);
    assert_string_equal(p->sink_script, in_dir(f, "sink.lua", path, sizeof path));
    assert_string_equal(p->input, in_dir(f, "in.csv", path, sizeof path));
    assert_int_equal(p->header, 1);
    assert_string_equal(p->mode, "plain");
    assert_int_equal(p->encrypted, 0);
    assert_null(p->key);
    assert_string_equal(p->key_id, "");
    assert_string_equal(p->on_error, "skip");
    assert_string_equal(p->backend, "isolated");
    assert_int_equal(p->sealed_input, 0);
    assert_int_equal(p->stream, OVERRIDE_STREAM);
}

static void no_overrides_is_null_overrides(void **state)
{
    fixture *f = *state;
    assert_int_equal(resolve(f, SPEC("", "on_error = 'fail'"), NULL), SS_OK);
    assert_int_equal(f->plan.nstages, 3);
    assert_string_equal(f->plan.on_error, "fail");
    assert_int_equal(f->plan.stream, 0);
}

static void spec_errors_name_the_file(void **state)
{
    fixture *f = *state;
    /* A wrong field: the spec's own message, naming the file and the field. */
    assert_int_equal(resolve(f, "return { source = {}, stages = { { script = 'a.lua', worker = 2 } },"
                                " sink = { script = 'sink.lua' } }\n", NULL), SS_ERR_USAGE);
    assert_err(f, "%s: stages[1]: unknown field 'worker'", f->spec);
    assert_empty(f);
    /* A Lua syntax error is the spec's fault too. */
    assert_int_equal(resolve(f, "return {", NULL), SS_ERR_USAGE);
    ASSERT_HAS(f->err, f->spec);
    assert_empty(f);
    /* A spec that cannot be opened is a file that cannot be read. */
    char missing[128];
    in_dir(f, "missing.spec.lua", missing, sizeof missing);
    assert_int_equal(ss_plan_resolve(missing, NULL, &f->plan, f->err, sizeof f->err), SS_ERR_IO);
    ASSERT_HAS(f->err, missing);
    assert_empty(f);
}

/* ---- worker counts ---- */

static void workers_one_number_sets_every_stage(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .workers = "5" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->plan.stages[i].workers, 5);
}

static void workers_list_sets_each_stage(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .workers = "4,1,64" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    assert_int_equal(f->plan.stages[0].workers, 4);
    assert_int_equal(f->plan.stages[1].workers, 1);
    assert_int_equal(f->plan.stages[2].workers, 64);
}

static void workers_list_of_the_wrong_length(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .workers = "1,2" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "--workers: 2 counts given for 3 stages");
    assert_empty(f);
    o.workers = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18";
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "--workers: 18 counts given for 3 stages");
}

static void workers_malformed(void **state)
{
    fixture *f = *state;
    static const char *const bad[] = { "0", "65", "x", "", "-1", "+2", "1,,2", "2,", ",2",
                                       "1,2,x", "3 ", "0x2", "99999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ss_plan_overrides o = { .workers = bad[i] };
        assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
        assert_err(f, "--workers: expected numbers between 1 and 64, got '%s'", bad[i]);
    }
}

/* ---- fusing ---- */

static void assert_fused(const fixture *f, int workers)
{
    const ss_plan *p = &f->plan;
    char path[128];
    assert_int_equal(p->fused, 1);
    assert_int_equal(p->nstages, 1);
    assert_string_equal(p->stages[0].name, "a+b+c");
    assert_int_equal(p->stages[0].nscripts, 3);
    const char *parts[] = { "a", "b", "c" }, *scripts[] = { "a.lua", "b.lua", "c.lua" };
    for (int i = 0; i < 3; i++) {
        assert_string_equal(p->stages[0].parts[i], parts[i]);
        assert_string_equal(p->stages[0].scripts[i], in_dir(f, scripts[i], path, sizeof path));
    }
    assert_int_equal(p->stages[0].workers, workers);
}

static void fuse_from_the_spec(void **state)
{
    fixture *f = *state;
    assert_int_equal(resolve(f, SPEC("", "fuse = true"), NULL), SS_OK);
    assert_fused(f, 3);   /* the largest count */
}

static void fuse_from_the_override(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .fuse = 1 };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    assert_fused(f, 3);
    /* Without either, the stages stay apart. */
    assert_int_equal(resolve(f, SPEC("", "fuse = false"), NULL), SS_OK);
    assert_int_equal(f->plan.fused, 0);
    assert_int_equal(f->plan.nstages, 3);
}

static void fused_workers_count_the_one_stage(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .fuse = 1, .workers = "7" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    assert_fused(f, 7);
    o.workers = "1,2,3";
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "--workers: 3 counts given for 1 stage (the stages are fused)");
}

static void fusing_one_stage_keeps_its_name(void **state)
{
    fixture *f = *state;
    assert_int_equal(resolve(f, "return { source = { file = 'in.csv' }, fuse = true,"
                                " stages = { { name = 'only', script = 'a.lua', workers = 2 } },"
                                " sink = { script = 'sink.lua' } }\n", NULL), SS_OK);
    assert_int_equal(f->plan.nstages, 1);
    assert_string_equal(f->plan.stages[0].name, "only");
    assert_int_equal(f->plan.stages[0].nscripts, 1);
    assert_int_equal(f->plan.stages[0].workers, 2);
}

/* ---- modes, keys, enclaves ---- */

static void unknown_mode(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .security = "bogus" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "unknown security mode 'bogus' (plain, encrypted or enclave)");
}

static void encrypted_modes_need_a_key(void **state)
{
    fixture *f = *state;
    for (const char *const *m = (const char *const[]){ "encrypted", "enclave", NULL }; *m; m++) {
        ss_plan_overrides o = { .security = *m };
        assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
        assert_err(f, "the %s mode needs a data key: --key FILE or key in %s (make one with: "
                   "securestreams keygen -o FILE)", *m, f->spec);
        assert_empty(f);
    }
}

static void key_from_the_spec_is_relative_to_it(void **state)
{
    fixture *f = *state;
    char path[128];
    assert_int_equal(resolve(f, SPEC("", "security = 'encrypted', key = 'data.key'"), NULL), SS_OK);
    assert_string_equal(f->plan.mode, "encrypted");
    assert_int_equal(f->plan.encrypted, 1);
    assert_string_equal(f->plan.key, in_dir(f, "data.key", path, sizeof path));
    assert_string_equal(f->plan.key_id, f->key_id);
}

static void key_override_wins(void **state)
{
    fixture *f = *state;
    char path[128];
    ss_plan_overrides o = { .key = in_dir(f, "other.key", path, sizeof path) };
    assert_int_equal(resolve(f, SPEC("", "security = 'encrypted', key = 'data.key'"), &o), SS_OK);
    assert_string_equal(f->plan.key, path);
    assert_string_equal(f->plan.key_id, f->other_id);
}

static void plain_mode_has_no_key(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .security = "plain" };
    assert_int_equal(resolve(f, SPEC("", "security = 'encrypted', key = 'data.key'"), &o), SS_OK);
    assert_string_equal(f->plan.mode, "plain");
    assert_int_equal(f->plan.encrypted, 0);
    assert_null(f->plan.key);
    assert_string_equal(f->plan.key_id, "");
}

static void a_key_that_does_not_load(void **state)
{
    fixture *f = *state;
    char path[128];
    put(f, "loose.key", "not a key\n", 0644);
    ss_plan_overrides o = { .security = "encrypted", .key = in_dir(f, "loose.key", path, sizeof path) };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_CRYPTO);
    ASSERT_HAS(f->err, path);
    ASSERT_HAS(f->err, "chmod 600");
    assert_empty(f);
}

static void enclave_stage_needs_an_encrypted_mode(void **state)
{
    fixture *f = *state;
    assert_int_equal(resolve(f, SPEC(", enclave = true", ""), NULL), SS_ERR_USAGE);
    assert_err(f, "%s: stage b runs in an enclave, which needs the encrypted or enclave mode "
               "(--security encrypted --key FILE)", f->spec);
    assert_empty(f);
}

static void enclave_stages(void **state)
{
    fixture *f = *state;
    /* One stage in the encrypted mode. */
    assert_int_equal(resolve(f, SPEC(", enclave = true", "security = 'encrypted', key = 'data.key'"),
                             NULL), SS_OK);
    assert_int_equal(f->plan.stages[0].enclave, 0);
    assert_int_equal(f->plan.stages[1].enclave, 1);
    assert_int_equal(f->plan.stages[2].enclave, 0);
    assert_int_equal(f->plan.nenclave, 1);
    /* Every stage in the enclave mode. */
    ss_plan_overrides o = { .security = "enclave" };
    assert_int_equal(resolve(f, SPEC("", "key = 'data.key'"), &o), SS_OK);
    assert_int_equal(f->plan.encrypted, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->plan.stages[i].enclave, 1);
    assert_int_equal(f->plan.nenclave, 3);
    /* Fused: the one stage runs in an enclave if any of its parts did. */
    o = (ss_plan_overrides){ .fuse = 1 };
    assert_int_equal(resolve(f, SPEC(", enclave = true", "security = 'encrypted', key = 'data.key'"),
                             &o), SS_OK);
    assert_int_equal(f->plan.stages[0].enclave, 1);
    assert_int_equal(f->plan.nenclave, 1);
}

static void backends(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .enclave_backend = "inprocess" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_OK);
    assert_string_equal(f->plan.backend, "inprocess");
    o.enclave_backend = "sgxx";
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "--enclave-backend: expected isolated, inprocess or sgx, got 'sgxx'");
}

static void on_error_override(void **state)
{
    fixture *f = *state;
    ss_plan_overrides o = { .on_error = "fail" };
    assert_int_equal(resolve(f, SPEC("", "on_error = 'skip'"), &o), SS_OK);
    assert_string_equal(f->plan.on_error, "fail");
    o.on_error = "maybe";
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "--on-error: expected skip or fail, got 'maybe'");
}

/* ---- input and scripts ---- */

static void no_input(void **state)
{
    fixture *f = *state;
    assert_int_equal(resolve(f, "return { source = {}, " STAGES("") " sink = { script = 'sink.lua' } }",
                             NULL), SS_ERR_USAGE);
    assert_err(f, "no input: give --input FILE or source.file in %s", f->spec);
    assert_empty(f);
    /* --input gives one. */
    char path[128];
    ss_plan_overrides o = { .input = in_dir(f, "in.csv", path, sizeof path) };
    assert_int_equal(resolve(f, "return { source = {}, " STAGES("") " sink = { script = 'sink.lua' } }",
                             &o), SS_OK);
    assert_string_equal(f->plan.input, path);
}

static void unreadable_input(void **state)
{
    fixture *f = *state;
    char path[128];
    ss_plan_overrides o = { .input = in_dir(f, "nope.csv", path, sizeof path) };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_IO);
    assert_err(f, "cannot read input %s: No such file or directory", path);
    assert_empty(f);
}

static void unreadable_scripts_name_their_stage(void **state)
{
    fixture *f = *state;
    char path[128];
    in_dir(f, "missing.lua", path, sizeof path);
    assert_int_equal(resolve(f, "return { source = { file = 'in.csv' }, stages = {"
                                " { name = 'a', script = 'a.lua' }, { name = 'b', script = 'missing.lua' } },"
                                " sink = { script = 'sink.lua' } }", NULL), SS_ERR_IO);
    assert_err(f, "%s: stage b: cannot read script %s: No such file or directory", f->spec, path);
    assert_empty(f);
    /* Fused, every script is checked, not only the first. */
    ss_plan_overrides o = { .fuse = 1 };
    assert_int_equal(resolve(f, "return { source = { file = 'in.csv' }, stages = {"
                                " { name = 'a', script = 'a.lua' }, { name = 'b', script = 'missing.lua' } },"
                                " sink = { script = 'sink.lua' } }", &o), SS_ERR_IO);
    assert_err(f, "%s: stage b: cannot read script %s: No such file or directory", f->spec, path);
    /* The sink's. */
    assert_int_equal(resolve(f, "return { source = { file = 'in.csv' }, " STAGES("")
                                " sink = { script = 'missing.lua' } }", NULL), SS_ERR_IO);
    assert_err(f, "%s: sink: cannot read script %s: No such file or directory", f->spec, path);
}

static void sealed_input(void **state)
{
    fixture *f = *state;
    char path[128];
    ss_plan_overrides o = { .input = in_dir(f, "in.sealed", path, sizeof path), .stream = OVERRIDE_STREAM };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    assert_err(f, "%s is a sealed file: stream it with --security encrypted --key FILE", path);
    assert_empty(f);
    /* In an encrypted mode it streams, each record sealed again into the
     * run by the source: under the pipeline's stream id, not the file's. */
    o.security = "encrypted";
    assert_int_equal(resolve(f, SPEC("", "key = 'data.key'"), &o), SS_OK);
    assert_int_equal(f->plan.sealed_input, 1);
    assert_int_equal(f->plan.stream, OVERRIDE_STREAM);
}

static void checks_come_in_order(void **state)
{
    fixture *f = *state;
    /* An option's value before what it combines into, the key before the
     * input, the input before the scripts. */
    char path[128];
    ss_plan_overrides o = { .security = "bogus", .workers = "1,2" };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    ASSERT_HAS(f->err, "unknown security mode");
    o = (ss_plan_overrides){ .security = "encrypted", .input = in_dir(f, "nope.csv", path, sizeof path) };
    assert_int_equal(resolve(f, SPEC("", ""), &o), SS_ERR_USAGE);
    ASSERT_HAS(f->err, "needs a data key");
    o = (ss_plan_overrides){ .input = path };
    assert_int_equal(resolve(f, "return { source = {}, " STAGES("") " sink = { script = 'missing.lua' } }",
                             &o), SS_ERR_IO);
    ASSERT_HAS(f->err, "cannot read input");
}

int main(void)
{
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(resolves_the_spec_as_written),
        T(no_overrides_is_null_overrides),
        T(spec_errors_name_the_file),
        T(workers_one_number_sets_every_stage),
        T(workers_list_sets_each_stage),
        T(workers_list_of_the_wrong_length),
        T(workers_malformed),
        T(fuse_from_the_spec),
        T(fuse_from_the_override),
        T(fused_workers_count_the_one_stage),
        T(fusing_one_stage_keeps_its_name),
        T(unknown_mode),
        T(encrypted_modes_need_a_key),
        T(key_from_the_spec_is_relative_to_it),
        T(key_override_wins),
        T(plain_mode_has_no_key),
        T(a_key_that_does_not_load),
        T(enclave_stage_needs_an_encrypted_mode),
        T(enclave_stages),
        T(backends),
        T(on_error_override),
        T(no_input),
        T(unreadable_input),
        T(unreadable_scripts_name_their_stage),
        T(sealed_input),
        T(checks_come_in_order),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
