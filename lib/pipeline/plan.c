/*
 * plan.c - a spec and the command line's overrides, resolved into what to
 * start (plan.h).
 *
 * The checks run in one order, so that run and deploy report the same first
 * error for the same spec and options: the options' values (on_error, mode,
 * backend), enclave stages against the mode, fusing and the worker counts,
 * the data key, the input, the scripts. The spec's own fields were checked
 * by ss_spec_load.
 */
#include "pipeline/plan.h"
#include "crypto/sealed.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const ss_plan_modes[] = { "plain", "encrypted", "enclave", NULL };
const char *const ss_plan_on_errors[] = { "skip", "fail", NULL };
const char *const ss_plan_backends[] = { "isolated", "inprocess", "sgx", NULL };

#define MAX_COUNT_DIGITS 8   /* one worker count of --workers */

/* The entry of list equal to s, or NULL. */
static const char *one_of(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcmp(*list, s))
            return *list;
    return NULL;
}

/* Replace *field (spec storage) with a copy of value. */
static ss_err replace(char **field, const char *value, char *err, size_t errlen)
{
    char *copy = strdup(value);
    if (!copy) {
        ss_say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    free(*field);
    *field = copy;
    return SS_OK;
}

/* The overrides that only replace a value, and the values' checks. */
static ss_err apply_options(ss_plan *p, const ss_plan_overrides *o, char *err, size_t errlen)
{
    ss_spec *s = &p->spec;
    ss_err e;
    if ((o->input && (e = replace(&s->input, o->input, err, errlen)) != SS_OK) ||
        (o->key && (e = replace(&s->key, o->key, err, errlen)) != SS_OK))
        return e;
    const char *on_error = o->on_error ? o->on_error : s->on_error;
    if (!(p->on_error = one_of(ss_plan_on_errors, on_error))) {
        ss_say(err, errlen, "--on-error: expected skip or fail, got '%s'", on_error);
        return SS_ERR_USAGE;
    }
    const char *mode = o->security ? o->security : s->security;
    if (!(p->mode = one_of(ss_plan_modes, mode))) {
        ss_say(err, errlen, "unknown security mode '%s' (plain, encrypted or enclave)", mode);
        return SS_ERR_USAGE;
    }
    p->encrypted = strcmp(p->mode, "plain") != 0;
    const char *backend = o->enclave_backend ? o->enclave_backend : ss_plan_backends[0];
    if (!(p->backend = one_of(ss_plan_backends, backend))) {
        ss_say(err, errlen, "--enclave-backend: expected isolated, inprocess or sgx, got '%s'", backend);
        return SS_ERR_USAGE;
    }
    p->fused = s->fuse || o->fuse;
    return SS_OK;
}

/* The spec's stages as plan stages, each stage in an enclave checked
 * against the mode; fused into one when the plan says so. */
static ss_err make_stages(ss_plan *p, char *err, size_t errlen)
{
    ss_spec *s = &p->spec;
    int all_enclave = !strcmp(p->mode, "enclave");
    for (int i = 0; i < s->nstages; i++) {
        const ss_stage_spec *g = &s->stages[i];
        if ((g->enclave || all_enclave) && !p->encrypted) {
            ss_say(err, errlen, "%s: stage %s runs in an enclave, which needs the encrypted or "
                   "enclave mode (--security encrypted --key FILE)", p->path, g->name);
            return SS_ERR_USAGE;
        }
        ss_plan_stage *st = &p->stages[p->fused ? 0 : i];
        st->scripts[st->nscripts] = g->script;
        st->parts[st->nscripts++] = g->name;
        if (!st->name)
            st->name = g->name;
        if (g->workers > st->workers)
            st->workers = g->workers;
        st->enclave |= g->enclave || all_enclave;
    }
    p->nstages = p->fused ? 1 : s->nstages;
    if (p->fused && s->nstages > 1) {
        /* Named after its parts, as the summary shows it: "mapper+filter". */
        size_t len = 1;
        for (int i = 0; i < s->nstages; i++)
            len += strlen(s->stages[i].name) + 1;
        if (!(p->fused_name = malloc(len))) {
            ss_say(err, errlen, "out of memory");
            return SS_ERR_NOMEM;
        }
        size_t at = 0;
        for (int i = 0; i < s->nstages; i++)
            at += (size_t)snprintf(p->fused_name + at, len - at, "%s%s", i ? "+" : "", s->stages[i].name);
        p->stages[0].name = p->fused_name;
    }
    for (int i = 0; i < p->nstages; i++)
        p->nenclave += p->stages[i].enclave;
    return SS_OK;
}

/* One worker count of --workers, "1" to SS_MAX_WORKERS, of len characters. */
static int parse_count(const char *item, size_t len, int *out)
{
    char digits[MAX_COUNT_DIGITS + 1];
    uint64_t v;
    if (len == 0 || len > MAX_COUNT_DIGITS)
        return -1;
    memcpy(digits, item, len);
    digits[len] = '\0';
    if (ss_parse_u64(digits, 10, SS_NUM_PLAIN, SS_MAX_WORKERS, &v) != 0 || v < 1)
        return -1;
    *out = (int)v;
    return 0;
}

/* --workers: "N" sets every stage's count, "A,B,C" one count per stage (of
 * the stages after fusing). */
static ss_err parse_workers(ss_plan *p, const char *arg, char *err, size_t errlen)
{
    int counts[SS_MAX_STAGES + 1], n = 0;   /* counts past the stages land in the last slot */
    for (const char *item = arg;; item += strcspn(item, ",") + 1) {
        size_t len = strcspn(item, ",");
        if (parse_count(item, len, &counts[n < SS_MAX_STAGES ? n : SS_MAX_STAGES]) != 0) {
            ss_say(err, errlen, "--workers: expected numbers between 1 and %d, got '%s'",
                   SS_MAX_WORKERS, arg);
            return SS_ERR_USAGE;
        }
        n++;
        if (item[len] == '\0')
            break;
    }
    if (n != 1 && n != p->nstages) {
        ss_say(err, errlen, "--workers: %d counts given for %d stage%s%s", n, p->nstages,
               p->nstages == 1 ? "" : "s", p->fused ? " (the stages are fused)" : "");
        return SS_ERR_USAGE;
    }
    for (int i = 0; i < p->nstages; i++)
        p->stages[i].workers = counts[n == 1 ? 0 : i];
    return SS_OK;
}

/* The data key of the encrypted modes: given, and loading (it is loaded
 * only to be checked: the components load their own). */
static ss_err check_key(ss_plan *p, char *err, size_t errlen)
{
    if (!p->encrypted)
        return SS_OK;
    if (!p->spec.key) {
        ss_say(err, errlen, "the %s mode needs a data key: --key FILE or key in %s (make one "
               "with: securestreams keygen -o FILE)", p->mode, p->path);
        return SS_ERR_USAGE;
    }
    ss_key_t key;
    ss_err e = ss_crypto_init();
    if (e != SS_OK) {
        ss_say(err, errlen, "cannot check the data key %s: %s", p->spec.key, ss_strerror(e));
        return e;
    }
    if ((e = ss_key_load(&key, p->spec.key, err, errlen)) != SS_OK)
        return e;
    ss_key_id_hex(key.id, p->key_id);
    ss_key_cleanup(&key);
    p->key = p->spec.key;
    return SS_OK;
}

/* The input: given, readable, and if sealed, streamed by an encrypted mode
 * with its own stream id. Only a regular file is probed: opening a FIFO
 * would wait for a writer, and reading it would take the source's bytes. */
static ss_err check_input(ss_plan *p, char *err, size_t errlen)
{
    const char *in = p->spec.input;
    if (!in) {
        ss_say(err, errlen, "no input: give --input FILE or source.file in %s", p->path);
        return SS_ERR_USAGE;
    }
    if (access(in, R_OK) != 0) {
        int en = errno;
        ss_say(err, errlen, "cannot read input %s: %s", in, strerror(en));
        return SS_ERR_IO;
    }
    struct stat st;
    uint32_t file_stream;   /* unused: the source seals every record again into this pipeline */
    p->sealed_input = stat(in, &st) == 0 && S_ISREG(st.st_mode) &&
                      ss_sealed_file_probe(in, &file_stream) == 1;
    if (p->sealed_input && !p->encrypted) {
        ss_say(err, errlen, "%s is a sealed file: stream it with --security encrypted --key FILE", in);
        return SS_ERR_USAGE;
    }
    p->input = in;
    return SS_OK;
}

/* Every stage's scripts, and the sink's, can be read. */
static ss_err check_scripts(ss_plan *p, char *err, size_t errlen)
{
    const ss_spec *s = &p->spec;
    for (int i = 0; i <= s->nstages; i++) {
        const char *script = i < s->nstages ? s->stages[i].script : s->sink_script;
        if (access(script, R_OK) != 0) {
            int en = errno;
            if (i < s->nstages)
                ss_say(err, errlen, "%s: stage %s: cannot read script %s: %s", p->path,
                       s->stages[i].name, script, strerror(en));
            else
                ss_say(err, errlen, "%s: sink: cannot read script %s: %s", p->path, script,
                       strerror(en));
            return SS_ERR_IO;
        }
    }
    return SS_OK;
}

ss_err ss_plan_resolve(const char *spec_path, const ss_plan_overrides *o, ss_plan *p,
                       char *err, size_t errlen)
{
    static const ss_plan_overrides none;
    if (!o)
        o = &none;
    memset(p, 0, sizeof *p);
    ss_err e = ss_spec_load(spec_path, &p->spec, err, errlen);
    if (e != SS_OK)
        return e;
    const ss_spec *s = &p->spec;
    p->path = s->path;
    p->name = s->name;
    p->sink_script = s->sink_script;
    p->header = s->header;
    p->batch_bytes = s->batch_bytes;
    p->stream = o->stream;
    if ((e = apply_options(p, o, err, errlen)) != SS_OK ||
        (e = make_stages(p, err, errlen)) != SS_OK ||
        (o->workers && (e = parse_workers(p, o->workers, err, errlen)) != SS_OK) ||
        (e = check_key(p, err, errlen)) != SS_OK ||
        (e = check_input(p, err, errlen)) != SS_OK ||
        (e = check_scripts(p, err, errlen)) != SS_OK)
        ss_plan_cleanup(p);
    return e;
}

void ss_plan_cleanup(ss_plan *p)
{
    ss_spec_cleanup(&p->spec);
    free(p->fused_name);
    memset(p, 0, sizeof *p);
}
