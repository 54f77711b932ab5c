/*
 * deploy.c - `securestreams deploy`: a pipeline spec as a Docker Compose file
 * or a Docker Swarm stack file (docs/deploy.md).
 *
 * Every component gets the command line `run` gives it (src/pipeline.c), with
 * routers at fixed ports on their own service (routerI:5555 for producers,
 * routerI:5556 for consumers) instead of ephemeral loopback ports:
 *   router0 .. routerN   one service each, one replica, --linger-ms so that a
 *                        worker scaled in after the end hears "stream ended"
 *   one service a stage  replicas = the stage's workers; scale it at will
 *   source, sink         one replica each, never restarted (a second source
 *                        would send the file twice)
 * One network joins them; containers find the routers by service name.
 *
 * Files: Compose bind-mounts the spec's directory at /pipeline, the input's
 * directory at /data and the keys under /run/secrets, all read-only. A Swarm
 * stack ships the scripts as configs and the keys as secrets (mode 0400), so
 * no node needs the spec; only the source's node, labelled
 * securestreams.data=true, needs the input. Enclave stages of the sgx backend
 * are placed on nodes labelled sgx=true and get the SGX devices.
 *
 * Stability: the output depends only on the spec, the files it names, the
 * options and the directory the file is written to (paths in the file are
 * relative to it, as Compose and `docker stack deploy` read them). Config
 * names carry a hash of the script so that a changed script deploys as a new
 * config (Swarm configs cannot change); the data key's secret carries the
 * key id, which is public.
 */
#include "cli.h"

#include "base/common.h"
#include "cli.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "crypto/curve.h"
#include "pipeline/spec.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FRONT_PORT 5555
#define BACK_PORT 5556
#define JOIN_TIMEOUT_MS 120000     /* containers may start in any order */
#define LIVENESS_MS 10000          /* see environment() */
#define DEFAULT_LINGER_MS 30000
#define DEFAULT_IMAGE "securestreams:latest"
#define WRAP_COLUMN 100            /* command lines wrap before this column */

typedef enum { FMT_COMPOSE, FMT_SWARM } format_t;

typedef struct {
    char *host;         /* on the host, relative to the output directory */
    char *target;       /* in the container: /pipeline/... */
    char *config;       /* Swarm config name: mapper_lua_1a2b3c4d */
} script_t;

typedef struct {
    char *secret;       /* host file of the secret key */
    char *pub;          /* host file of the public key */
    char tag[9];        /* hash of the public key, names the Swarm objects */
} curve_pair_t;

typedef struct {
    format_t format;
    FILE *out;
    const char *image;
    const char *backend;        /* SS_ENCLAVE of enclave stages */
    long linger_ms;
    ss_spec spec;
    const char *mode;           /* plain, encrypted or enclave */
    int encrypted;
    int enclave[SS_MAX_STAGES];
    int nenclave;
    uint32_t stream;
    int sealed_input;
    char *spec_file;            /* the spec, relative to the output directory */
    char *spec_dir;             /* its directory: /pipeline in Compose */
    script_t scripts[SS_MAX_STAGES + 1];   /* the stages', then the sink's */
    char *data_dir;             /* the input's directory: /data */
    char *input_target;         /* /data/NAME */
    char *key;                  /* the data key file, or NULL in the plain mode */
    char key_id[2 * SS_KEY_ID_BYTES + 1];
    int curve;
    curve_pair_t router_key, client_key;
} plan_t;

/* ---- small helpers ---- */

/* Why planning failed: a message, and whether a file could not be read
 * (exit 1) rather than the spec or the options being wrong (exit 2). */
typedef struct {
    char msg[1024];
    int io;
} diag_t;

static int say(diag_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int say(diag_t *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof d->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* A failed ss_* call: its message is already in d->msg. */
static int failed(diag_t *d, ss_err e)
{
    d->io |= e == SS_ERR_IO;
    return -1;
}

static uint32_t fnv1a(uint32_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}
#define FNV_SEED 2166136261u

/* FNV-1a of a file's bytes, as 8 hex digits in out. */
static int hash_file(const char *path, char out[9], diag_t *d)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int en = errno;
        d->io = 1;
        return say(d, "cannot read %s: %s", path, strerror(en));
    }
    uint32_t h = FNV_SEED;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        h = fnv1a(h, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        d->io = 1;
        return say(d, "cannot read %s", path);
    }
    snprintf(out, 9, "%08x", (unsigned)h);
    return 0;
}

/* The canonical absolute path of an existing file (caller frees), or NULL
 * with a message. */
static char *canonical(const char *path, const char *what, diag_t *d)
{
    char *p = realpath(path, NULL);
    if (!p) {
        int en = errno;
        d->io = 1;
        say(d, "%s %s: %s", what, path, strerror(en));
    }
    return p;
}

/* The directory part of a canonical path, in place: "/a/b" -> "/a", "/a" -> "/". */
static void strip_last(char *p)
{
    char *slash = strrchr(p, '/');
    if (slash == p)
        p[1] = '\0';
    else if (slash)
        *slash = '\0';
}

/* `to` relative to the directory `from`, both canonical and absolute, in
 * the form Compose wants for a bind mount: "./x", "../x" or ".". The
 * caller frees. */
static char *relative(const char *from, const char *to)
{
    /* Skip the components both share. */
    size_t i = 0, common = 0;
    while (from[i] && from[i] == to[i]) {
        i++;
        if (from[i - 1] == '/')
            common = i;
    }
    if ((!from[i] && (!to[i] || to[i] == '/')) || (!to[i] && from[i] == '/'))
        common = i;
    size_t ups = 0;
    for (const char *f = from + common; *f; f++)
        if (*f != '/' && (f == from + common || f[-1] == '/'))
            ups++;
    const char *rest = to + common;
    while (*rest == '/')
        rest++;
    char *s = malloc(3 * ups + strlen(rest) + 3);
    if (!s)
        return NULL;
    strcpy(s, ups ? "" : "./");
    for (size_t k = 0; k < ups; k++)
        strcat(s, "../");
    strcat(s, rest);
    size_t len = strlen(s);
    if (len > 1 && s[len - 1] == '/')
        s[len - 1] = '\0';
    return s;
}

/* A YAML double-quoted scalar. `$` is doubled: Compose and `docker stack
 * deploy` interpolate ${VAR} in every value. */
static void q(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (*s == '$')
            fputs("$$", f);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

/* command: ["a", "b", ...] on as few lines as fit before WRAP_COLUMN,
 * breaking only before an option so that an option and its value stay
 * together; continuation lines are aligned after the bracket. */
static void flow_list(FILE *f, const char *key, const char *const *items)
{
    int indent = fprintf(f, "    %s: [", key), col = indent;
    for (int i = 0; items[i];) {
        /* One unit: an option with its value, or a lone word. */
        int n = items[i][0] == '-' && items[i + 1] && items[i + 1][0] != '-' ? 2 : 1;
        int width = 0;
        for (int k = 0; k < n; k++)
            width += (int)strlen(items[i + k]) + 4;   /* quotes, comma, space */
        if (i > 0 && col + width > WRAP_COLUMN) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        }
        for (int k = 0; k < n; k++, i++) {
            q(f, items[i]);
            col += (int)strlen(items[i]) + 2;
            if (items[i + 1]) {
                int next_breaks = 0;
                if (k == n - 1) {
                    /* Peek: will the next unit wrap? Then end this line with a bare comma. */
                    int m = items[i + 1][0] == '-' && items[i + 2] && items[i + 2][0] != '-' ? 2 : 1;
                    int w = 0;
                    for (int j = 1; j <= m; j++)
                        w += (int)strlen(items[i + j]) + 4;
                    next_breaks = col + 2 + w > WRAP_COLUMN;
                }
                fputs(next_breaks ? "," : ", ", f);
                col += next_breaks ? 1 : 2;
            }
        }
    }
    fputs("]\n", f);
}

static void env_line(FILE *f, const char *k, const char *v)
{
    fprintf(f, "      %s: ", k);
    q(f, v);
    fputc('\n', f);
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* A name for a service or a Swarm object: letters, digits, '_' and '-'. */
static int valid_name(const char *s)
{
    if (!*s || strlen(s) > 48)
        return 0;
    for (; *s; s++)
        if (!name_char(*s))
            return 0;
    return 1;
}

/* ---- planning: everything the file says, checked before a byte is written ---- */

static int parse_workers(const char *arg, ss_spec *s, diag_t *d)
{
    int counts[SS_MAX_STAGES], n = 0;
    const char *p = arg;
    while (*p && n < SS_MAX_STAGES) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > SS_MAX_WORKERS || (*end && *end != ','))
            return say(d, "--workers: expected numbers between 1 and %d, got '%s'",
                       SS_MAX_WORKERS, arg);
        counts[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n != 1 && n != s->nstages)
        return say(d, "--workers: %d counts given for %d stages", n, s->nstages);
    for (int i = 0; i < s->nstages; i++)
        s->stages[i].workers = counts[n == 1 ? 0 : i];
    return 0;
}

/* A host path for the file: relative to the output directory, without ':'
 * (the separator of Compose's volume syntax). */
static char *host_path(const char *outdir, const char *abs, diag_t *d)
{
    if (strchr(abs, ':')) {
        say(d, "%s: a path with ':' cannot be mounted by Compose; move or rename it", abs);
        return NULL;
    }
    char *r = relative(outdir, abs);
    if (!r)
        say(d, "out of memory");
    return r;
}

/* A script: its host path, its path under /pipeline (it must be inside the
 * spec's directory, which is what Compose mounts there) and its config name. */
static int plan_script(const char *outdir, const char *specdir, const char *path,
                       const char *what, script_t *s, diag_t *d)
{
    char *abs = canonical(path, what, d);
    if (!abs)
        return -1;
    size_t n = strlen(specdir);
    int inside = !strncmp(abs, specdir, n) && (abs[n] == '/' || !strcmp(specdir, "/"));
    if (!inside) {
        say(d, "%s %s is outside the spec's directory %s, which is what the containers "
            "get as /pipeline: move it there", what, path, specdir);
        free(abs);
        return -1;
    }
    const char *rel = abs + n + (strcmp(specdir, "/") ? 1 : 0);
    char hash[9];
    size_t tl = strlen(rel) + 16;
    s->target = malloc(tl);
    s->host = host_path(outdir, abs, d);
    s->config = malloc(strlen(rel) + 16);
    if (!s->target || !s->host || !s->config || hash_file(abs, hash, d) != 0) {
        if (!d->msg[0])
            say(d, "out of memory");
        free(abs);
        return -1;
    }
    snprintf(s->target, tl, "/pipeline/%s", rel);
    char *c = s->config;
    for (const char *r = rel; *r; r++)
        *c++ = name_char(*r) ? *r : '_';
    snprintf(c, 10, "_%s", hash);
    free(abs);
    return 0;
}

static int plan_curve_pair(const char *outdir, const char *dir, const char *name, curve_pair_t *k,
                           diag_t *d)
{
    char path[PATH_MAX], pub[SS_Z85_KEY], sec[SS_Z85_KEY], pub2[SS_Z85_KEY];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ss_err e;
    if ((e = ss_curve_load_secret(path, pub, sec, d->msg, sizeof d->msg)) != SS_OK)
        return failed(d, e);
    sodium_memzero(sec, sizeof sec);
    char *abs = canonical(path, "CurveZMQ key", d);
    if (!abs)
        return -1;
    k->secret = host_path(outdir, abs, d);
    free(abs);
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    if (!k->secret)
        return -1;
    if ((e = ss_curve_load_public(path, pub2, d->msg, sizeof d->msg)) != SS_OK)
        return failed(d, e);
    if (strcmp(pub, pub2))
        return say(d, "%s does not hold the public key of %s/%s", path, dir, name);
    if (!(abs = canonical(path, "CurveZMQ public key", d)))
        return -1;
    k->pub = host_path(outdir, abs, d);
    free(abs);
    snprintf(k->tag, sizeof k->tag, "%08x", (unsigned)fnv1a(FNV_SEED, pub, strlen(pub)));
    return k->pub ? 0 : -1;
}

typedef struct {
    const char *input, *workers, *security, *on_error, *key, *output, *curve;
} overrides_t;

static int plan_make(plan_t *p, const char *spec_path, const overrides_t *o, diag_t *d)
{
    ss_spec *s = &p->spec;
    ss_err e;
    if ((e = ss_spec_load(spec_path, s, d->msg, sizeof d->msg)) != SS_OK)
        return failed(d, e);
    if (o->workers && parse_workers(o->workers, s, d) != 0)
        return -1;
    if (o->input) {
        free(s->input);
        if (!(s->input = strdup(o->input)))
            return say(d, "out of memory");
    }
    if (o->on_error) {
        if (strcmp(o->on_error, "skip") && strcmp(o->on_error, "fail"))
            return say(d, "--on-error: expected skip or fail");
        free(s->on_error);
        if (!(s->on_error = strdup(o->on_error)))
            return say(d, "out of memory");
    }
    if (o->key) {
        free(s->key);
        if (!(s->key = strdup(o->key)))
            return say(d, "out of memory");
    }
    p->mode = o->security ? o->security : s->security;
    if (strcmp(p->mode, "plain") && strcmp(p->mode, "encrypted") && strcmp(p->mode, "enclave"))
        return say(d, "unknown security mode '%s' (plain, encrypted or enclave)", p->mode);
    p->encrypted = strcmp(p->mode, "plain") != 0;
    for (int i = 0; i < s->nstages; i++) {
        p->enclave[i] = s->stages[i].enclave || !strcmp(p->mode, "enclave");
        p->nenclave += p->enclave[i];
        if (p->enclave[i] && !p->encrypted)
            return say(d, "stage %s runs in an enclave, which needs the encrypted or "
                       "enclave mode (--security encrypted --key FILE)", s->stages[i].name);
        if (!valid_name(s->stages[i].name) || !strcmp(s->stages[i].name, "source") ||
            !strcmp(s->stages[i].name, "sink") || !strncmp(s->stages[i].name, "router", 6))
            return say(d, "stage name '%s' cannot name a service: use letters, digits, "
                       "'_' and '-', and not source, sink or router...", s->stages[i].name);
    }

    /* The output's directory: every host path in the file is relative to it. */
    char *outdir = NULL, *specdir = NULL, *abs = NULL;
    int rc = -1;
    if (o->output) {
        char *dir = strdup(o->output);
        if (!dir) {
            say(d, "out of memory");
            goto out;
        }
        char *slash = strrchr(dir, '/');
        if (slash)
            slash[slash == dir ? 1 : 0] = '\0';
        outdir = canonical(slash ? dir : ".", "output directory", d);
        free(dir);
    } else {
        outdir = canonical(".", "current directory", d);
    }
    if (!outdir || !(specdir = canonical(s->path, "spec", d)))
        goto out;
    if (!(p->spec_file = host_path(outdir, specdir, d)))
        goto out;
    strip_last(specdir);
    if (!(p->spec_dir = host_path(outdir, specdir, d)))
        goto out;
    for (int i = 0; i < s->nstages; i++) {
        char what[96];
        snprintf(what, sizeof what, "stage %s: script", s->stages[i].name);
        if (plan_script(outdir, specdir, s->stages[i].script, what, &p->scripts[i], d))
            goto out;
    }
    if (plan_script(outdir, specdir, s->sink_script, "sink: script", &p->scripts[s->nstages],
                    d))
        goto out;

    /* The input: /data is its directory. A sealed file carries its stream
     * id; any other pipeline gets one from its name, so the file is stable. */
    if (!s->input) {
        say(d, "no input: give --input FILE or source.file in %s", s->path);
        goto out;
    }
    if (!(abs = canonical(s->input, "cannot read input", d)))
        goto out;
    const char *base = strrchr(abs, '/') + 1;
    if (!(p->input_target = malloc(strlen(base) + 8))) {
        say(d, "out of memory");
        goto out;
    }
    sprintf(p->input_target, "/data/%s", base);
    p->stream = fnv1a(FNV_SEED, s->name, strlen(s->name));
    if (!p->stream)
        p->stream = 1;
    /* Only a regular file is probed: opening a FIFO would wait for a writer. */
    struct stat st;
    p->sealed_input = stat(abs, &st) == 0 && S_ISREG(st.st_mode) &&
                      ss_sealed_file_probe(abs, &p->stream) == 1;
    if (p->sealed_input && !p->encrypted) {
        say(d, "%s is a sealed file: deploy it with --security encrypted --key FILE",
            s->input);
        goto out;
    }
    strip_last(abs);
    if (!(p->data_dir = host_path(outdir, abs, d)))
        goto out;
    free(abs);
    abs = NULL;

    if (p->encrypted) {
        if (!s->key) {
            say(d, "the %s mode needs a data key: --key FILE or key in the spec (make "
                "one with: securestreams keygen -o FILE)", p->mode);
            goto out;
        }
        ss_key_t key;
        if ((e = ss_crypto_init()) != SS_OK || (e = ss_key_load(&key, s->key, d->msg, sizeof d->msg)) != SS_OK) {
            failed(d, e);
            goto out;
        }
        ss_key_id_hex(key.id, p->key_id);
        ss_key_cleanup(&key);
        if (!(abs = canonical(s->key, "data key", d)) ||
            !(p->key = host_path(outdir, abs, d)))
            goto out;
    }
    if (o->curve) {
        p->curve = 1;
        if (plan_curve_pair(outdir, o->curve, "router", &p->router_key, d) != 0 ||
            plan_curve_pair(outdir, o->curve, "client", &p->client_key, d) != 0)
            goto out;
    }
    rc = 0;
out:
    free(abs);
    free(specdir);
    free(outdir);
    return rc;
}

static void plan_cleanup(plan_t *p)
{
    for (int i = 0; i <= SS_MAX_STAGES; i++) {
        free(p->scripts[i].host);
        free(p->scripts[i].target);
        free(p->scripts[i].config);
    }
    free(p->spec_file);
    free(p->spec_dir);
    free(p->data_dir);
    free(p->input_target);
    free(p->key);
    free(p->router_key.secret);
    free(p->router_key.pub);
    free(p->client_key.secret);
    free(p->client_key.pub);
    ss_spec_cleanup(&p->spec);
}

/* ---- writing ---- */

typedef enum { ROLE_ROUTER, ROLE_SOURCE, ROLE_WORKER, ROLE_SINK } role_t;

#define SWARM(p) ((p)->format == FMT_SWARM)

static void header(plan_t *p)
{
    FILE *f = p->out;
    ss_spec *s = &p->spec;
    int n = s->nstages;
    fprintf(f, "# SecureStreams pipeline \"%s\" as a %s, written by\n", s->name,
            SWARM(p) ? "Docker Swarm stack" : "Docker Compose file");
    fprintf(f, "# `securestreams deploy %s --format %s`:\n# generate it again rather than edit it.\n",
            p->spec_file, SWARM(p) ? "swarm" : "compose");
    fprintf(f, "#\n# Security %s; stream id 0x%08x (%s); on_error = %s.\n", p->mode,
            (unsigned)p->stream, p->sealed_input ? "the sealed input's" : "from the pipeline's name",
            s->on_error);
    fprintf(f, "# Services (routers listen on %d for producers and %d for consumers):\n", FRONT_PORT,
            BACK_PORT);
    fprintf(f, "#   %-18s reads %s, sends to router0\n", "source", p->input_target);
    for (int i = 0; i < n; i++) {
        fprintf(f, "#   %-18s stage %d: %d worker%s, router%d -> router%d%s\n", s->stages[i].name,
                i + 1, s->stages[i].workers, s->stages[i].workers == 1 ? "" : "s", i, i + 1,
                p->enclave[i] ? (strcmp(p->backend, "sgx") ? ", in enclaves (isolated backend)"
                                                           : ", in SGX enclaves")
                              : "");
    }
    fprintf(f, "#   %-18s receives from router%d: results on stdout, the summary on stderr\n",
            "sink", n);
    char routers[32];
    snprintf(routers, sizeof routers, "router0..router%d", n);
    fprintf(f, "#   %-18s one before each stage and one before the sink\n", routers);
    fprintf(f, "#\n# Host paths are relative to this file's directory.\n");
    if (SWARM(p)) {
        fprintf(f, "# Scripts travel as configs and keys as secrets: no node needs the spec. The\n"
                   "# source runs on the node labelled securestreams.data=true, which must hold\n"
                   "# %s (mounted read-only at /data).\n", p->data_dir);
        if (p->nenclave && !strcmp(p->backend, "sgx"))
            fprintf(f, "# Enclave stages run on nodes labelled sgx=true. `docker stack deploy` (Docker\n"
                       "# 20.10 to 28 at least) ignores `devices`: see docs/deploy.md for giving the\n"
                       "# workers /dev/sgx_enclave on those nodes.\n");
        fprintf(f, "#\n"
                   "#   docker node update --label-add securestreams.data=true NODE\n"
                   "#   docker stack deploy -c FILE STACK        # --resolve-image never: no registry\n"
                   "#   docker service logs -f --raw STACK_sink  # the results, then the summary\n"
                   "#   docker service scale STACK_%s=4\n"
                   "#                                            # while it runs: new workers join\n"
                   "#   docker stack rm STACK\n", s->stages[0].name);
    } else {
        fprintf(f, "#   /pipeline (read-only): %s, the spec's directory\n", p->spec_dir);
        fprintf(f, "#   /data (read-only):     %s\n", p->data_dir);
        fprintf(f, "#\n"
                   "#   docker-compose -f FILE up -d\n"
                   "#   docker-compose -f FILE logs -f sink      # the results, then the summary\n"
                   "#   docker-compose -f FILE up -d --no-deps --no-recreate --scale %s=4 %s\n"
                   "#                                            # while it runs: new workers join\n"
                   "#   docker-compose -f FILE down\n", s->stages[0].name, s->stages[0].name);
    }
    fprintf(f, "version: \"3.8\"\n\nservices:\n");
}

/* The environment `run` gives each role (pipeline.c), plus the in-container
 * paths of the keys and two timeouts. Containers start in any order, so a
 * component waits for its routers (SS_JOIN_TIMEOUT_MS); and a worker that has
 * joined one router sends it nothing while it waits to join the other, so
 * the liveness timeout is longer than run's 3 s. A stopped container is still
 * noticed at once: its connection closes. */
static void environment(plan_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    char v[64];
    fprintf(f, "    environment:\n");
    snprintf(v, sizeof v, "%u", (unsigned)p->stream);
    env_line(f, "SS_STREAM", v);
    env_line(f, "SS_ON_ERROR", p->spec.on_error);
    snprintf(v, sizeof v, "%d", LIVENESS_MS);
    env_line(f, "SS_LIVENESS_MS", v);
    if (role == ROLE_ROUTER) {
        if (p->curve) {
            env_line(f, "SS_CURVE_ROUTER_KEY", "/run/secrets/curve-router");
            env_line(f, "SS_CURVE_ALLOW", "/run/secrets/curve-client.pub");
        }
        return;
    }
    if (p->encrypted)
        env_line(f, "SS_KEY_FILE", "/run/secrets/data.key");
    if (role == ROLE_WORKER && p->enclave[stage])
        env_line(f, "SS_ENCLAVE", p->backend);
    snprintf(v, sizeof v, "%d", JOIN_TIMEOUT_MS);
    env_line(f, "SS_JOIN_TIMEOUT_MS", v);
    if (p->curve) {
        env_line(f, "SS_CURVE_KEY", "/run/secrets/curve-client");
        env_line(f, "SS_CURVE_SERVER", "/run/secrets/curve-router.pub");
    }
}

static void bind_mount(FILE *f, const char *host, const char *target)
{
    fputs("      - ", f);
    size_t n = strlen(host) + strlen(target) + 8;
    char *s = malloc(n);
    if (!s)
        return;
    snprintf(s, n, "%s:%s:ro", host, target);
    q(f, s);
    fputc('\n', f);
    free(s);
}

static void swarm_file(FILE *f, const char *source, const char *target, const char *mode)
{
    fprintf(f, "      - source: %s\n        target: ", source);
    q(f, target);
    fprintf(f, "\n        mode: %s\n", mode);
}

/* Files a role gets: scripts, data, keys. */
static void files(plan_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    int needs_key = p->encrypted && role != ROLE_ROUTER;
    script_t *sc = role == ROLE_WORKER ? &p->scripts[stage]
                 : role == ROLE_SINK ? &p->scripts[p->spec.nstages] : NULL;
    if (!SWARM(p)) {
        if (role == ROLE_ROUTER && !p->curve)
            return;
        fprintf(f, "    volumes:\n");
        if (sc)
            bind_mount(f, p->spec_dir, "/pipeline");
        if (role == ROLE_SOURCE)
            bind_mount(f, p->data_dir, "/data");
        if (needs_key)
            bind_mount(f, p->key, "/run/secrets/data.key");
        if (p->curve && role == ROLE_ROUTER) {
            bind_mount(f, p->router_key.secret, "/run/secrets/curve-router");
            bind_mount(f, p->client_key.pub, "/run/secrets/curve-client.pub");
        } else if (p->curve) {
            bind_mount(f, p->client_key.secret, "/run/secrets/curve-client");
            bind_mount(f, p->router_key.pub, "/run/secrets/curve-router.pub");
        }
        return;
    }
    char name[64];
    if (sc || p->curve) {
        fprintf(f, "    configs:\n");
        if (sc)
            swarm_file(f, sc->config, sc->target, "0444");
        if (p->curve) {
            curve_pair_t *k = role == ROLE_ROUTER ? &p->client_key : &p->router_key;
            snprintf(name, sizeof name, "curve_%s_pub_%s", role == ROLE_ROUTER ? "client" : "router",
                     k->tag);
            swarm_file(f, name, role == ROLE_ROUTER ? "/run/secrets/curve-client.pub"
                                                    : "/run/secrets/curve-router.pub", "0444");
        }
    }
    if (needs_key || p->curve) {
        fprintf(f, "    secrets:\n");
        if (needs_key) {
            snprintf(name, sizeof name, "data_key_%s", p->key_id);
            swarm_file(f, name, "data.key", "0400");
        }
        if (p->curve) {
            curve_pair_t *k = role == ROLE_ROUTER ? &p->router_key : &p->client_key;
            snprintf(name, sizeof name, "curve_%s_%s", role == ROLE_ROUTER ? "router" : "client", k->tag);
            swarm_file(f, name, role == ROLE_ROUTER ? "curve-router" : "curve-client", "0400");
        }
    }
    if (role == ROLE_SOURCE) {
        fprintf(f, "    volumes:\n");
        bind_mount(f, p->data_dir, "/data");
    }
}

/* Restart, replicas and placement. */
static void policy(plan_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    int sgx = role == ROLE_WORKER && p->enclave[stage] && !strcmp(p->backend, "sgx");
    /* A worker that fails to join or dies is replaced, unless on_error =
     * fail stopped it; routers, the source and the sink run once. */
    int restart = role == ROLE_WORKER && strcmp(p->spec.on_error, "fail");
    if (sgx) {
        fprintf(f, "    devices:\n");
        fprintf(f, "      - \"/dev/sgx_enclave:/dev/sgx_enclave\"\n");
        fprintf(f, "      - \"/dev/sgx_provision:/dev/sgx_provision\"\n");
    }
    /* Only routers handle SIGTERM; PID 1 of a container ignores a signal it
     * does not handle, so `docker stop` would wait its grace period out.
     * SIGKILL does at once what SIGTERM does outside a container. */
    if (role != ROLE_ROUTER)
        fprintf(f, "    stop_signal: SIGKILL\n");
    fprintf(f, "    networks: [pipeline]\n");
    if (!SWARM(p)) {
        if (role == ROLE_WORKER)
            fprintf(f, "    deploy:\n      replicas: %d\n", p->spec.stages[stage].workers);
        fprintf(f, "    restart: \"%s\"\n", restart ? "on-failure:3" : "no");
        return;
    }
    fprintf(f, "    deploy:\n");
    fprintf(f, "      replicas: %d\n", role == ROLE_WORKER ? p->spec.stages[stage].workers : 1);
    if (role == ROLE_ROUTER)
        fprintf(f, "      endpoint_mode: dnsrr      # the name resolves to the task itself, no virtual IP\n");
    if (restart)
        fprintf(f, "      restart_policy: {condition: on-failure, max_attempts: 3}\n");
    else
        fprintf(f, "      restart_policy: {condition: none}\n");
    if (role == ROLE_SOURCE)
        fprintf(f, "      placement:\n        constraints: [\"node.labels.securestreams.data == true\"]\n");
    if (sgx)
        fprintf(f, "      placement:\n        constraints: [\"node.labels.sgx == true\"]\n");
}

static void depends(plan_t *p, role_t role, int stage)
{
    if (SWARM(p) || role == ROLE_ROUTER)
        return;
    FILE *f = p->out;
    /* Only the order containers start in: a component that comes up before
     * its router waits in JOIN (SS_JOIN_TIMEOUT_MS). The source comes last,
     * as in `run`. */
    fprintf(f, "    depends_on: [");
    if (role == ROLE_WORKER)
        fprintf(f, "router%d, router%d", stage, stage + 1);
    else if (role == ROLE_SINK)
        fprintf(f, "router%d", p->spec.nstages);
    else {
        for (int i = 0; i <= p->spec.nstages; i++)
            fprintf(f, "router%d, ", i);
        for (int i = 0; i < p->spec.nstages; i++)
            fprintf(f, "%s, ", p->spec.stages[i].name);
        fprintf(f, "sink");
    }
    fprintf(f, "]\n");
}

static void service_common(plan_t *p, const char *name)
{
    fprintf(p->out, "  %s:\n    image: ", name);
    q(p->out, p->image);
    fputc('\n', p->out);
}

static void write_routers(plan_t *p)
{
    FILE *f = p->out;
    char from[32], to[32], linger[24], name[24];
    snprintf(from, sizeof from, "tcp://*:%d", FRONT_PORT);
    snprintf(to, sizeof to, "tcp://*:%d", BACK_PORT);
    snprintf(linger, sizeof linger, "%ld", p->linger_ms);
    for (int i = 0; i <= p->spec.nstages; i++) {
        snprintf(name, sizeof name, "router%d", i);
        if (i == 0)
            fprintf(f, "  # router0: the source produces into it, stage %s consumes.\n",
                    p->spec.stages[0].name);
        else if (i < p->spec.nstages)
            fprintf(f, "  # %s: stage %s produces, stage %s consumes.\n", name,
                    p->spec.stages[i - 1].name, p->spec.stages[i].name);
        else
            fprintf(f, "  # %s: stage %s produces, the sink consumes.\n", name,
                    p->spec.stages[i - 1].name);
        service_common(p, name);
        const char *args[] = { "router", "--from", from, "--to", to, "--name", name,
                               "--linger-ms", linger, NULL };
        flow_list(f, "command", args);
        environment(p, ROLE_ROUTER, i);
        files(p, ROLE_ROUTER, i);
        policy(p, ROLE_ROUTER, i);
        fputc('\n', f);
    }
}

static void write_stages(plan_t *p)
{
    FILE *f = p->out;
    for (int i = 0; i < p->spec.nstages; i++) {
        ss_stage_spec *st = &p->spec.stages[i];
        char from[64], to[64], pos[16];
        snprintf(from, sizeof from, "tcp://router%d:%d", i, BACK_PORT);
        snprintf(to, sizeof to, "tcp://router%d:%d", i + 1, FRONT_PORT);
        snprintf(pos, sizeof pos, "%d", i + 1);
        fprintf(f, "  # Stage %d of %d: %d worker%s of %s", i + 1, p->spec.nstages, st->workers,
                st->workers == 1 ? "" : "s", p->scripts[i].target);
        if (p->enclave[i])
            fprintf(f, ",\n  # each running the stage's code in an enclave (SS_ENCLAVE=%s)", p->backend);
        fprintf(f, ".\n");
        service_common(p, st->name);
        const char *args[] = { "worker", "--from", from, "--to", to, "--script", p->scripts[i].target,
                               "--name", st->name, "--stage", st->name, "--pos", pos, NULL };
        flow_list(f, "command", args);
        environment(p, ROLE_WORKER, i);
        files(p, ROLE_WORKER, i);
        policy(p, ROLE_WORKER, i);
        depends(p, ROLE_WORKER, i);
        fputc('\n', f);
    }
}

static void write_ends(plan_t *p)
{
    FILE *f = p->out;
    int n = p->spec.nstages;
    char from[64], to[64], bb[24];
    snprintf(from, sizeof from, "tcp://router%d:%d", n, BACK_PORT);
    fprintf(f, "  # The sink: the results on stdout, the summary on stderr; exits 0 once every\n"
               "  # source batch is accounted for, 4 when the result is incomplete.\n");
    service_common(p, "sink");
    const char *sargs[] = { "sink", "--from", from, "--script", p->scripts[n].target, "--name", "sink",
                            "--stage", "sink", NULL };
    flow_list(f, "command", sargs);
    environment(p, ROLE_SINK, n);
    files(p, ROLE_SINK, n);
    policy(p, ROLE_SINK, n);
    depends(p, ROLE_SINK, n);
    fputc('\n', f);

    snprintf(to, sizeof to, "tcp://router0:%d", FRONT_PORT);
    snprintf(bb, sizeof bb, "%ld", p->spec.batch_bytes);
    fprintf(f, "  # The source: sends the input once, then ends. Never restarted: a second\n"
               "  # source would send the input again.\n");
    service_common(p, "source");
    const char *args[] = { "source", "--to", to, "--input", p->input_target,
                           p->spec.header ? "--header" : "--no-header", "--batch-bytes", bb, NULL };
    flow_list(f, "command", args);
    environment(p, ROLE_SOURCE, -1);
    files(p, ROLE_SOURCE, -1);
    policy(p, ROLE_SOURCE, -1);
    depends(p, ROLE_SOURCE, -1);
}

static void write_top(plan_t *p)
{
    FILE *f = p->out;
    fprintf(f, "\nnetworks:\n");
    if (SWARM(p))
        fprintf(f, "  # One overlay network; attachable, so that a container started by hand on any\n"
                   "  # node (docker run --network STACK_pipeline ...) can join the pipeline.\n"
                   "  pipeline:\n    driver: overlay\n    attachable: true\n");
    else
        fprintf(f, "  # One network: containers reach the routers by service name.\n"
                   "  pipeline: {}\n");
    if (!SWARM(p))
        return;
    int n = p->spec.nstages;
    fprintf(f, "\n# Stage and sink scripts, named after their content: a changed script deploys\n"
               "# as a new config (a Swarm config cannot change).\nconfigs:\n");
    for (int i = 0; i <= n; i++) {
        int seen = 0;
        for (int k = 0; k < i; k++)
            seen |= !strcmp(p->scripts[k].config, p->scripts[i].config);
        if (seen)
            continue;
        fprintf(f, "  %s:\n    file: ", p->scripts[i].config);
        q(f, p->scripts[i].host);
        fputc('\n', f);
    }
    if (p->curve) {
        fprintf(f, "  curve_router_pub_%s:\n    file: ", p->router_key.tag);
        q(f, p->router_key.pub);
        fprintf(f, "\n  curve_client_pub_%s:\n    file: ", p->client_key.tag);
        q(f, p->client_key.pub);
        fputc('\n', f);
    }
    if (!p->encrypted && !p->curve)
        return;
    fprintf(f, "\n# Keys, read by `docker stack deploy` from these files and given only to the\n"
               "# services that use them, at /run/secrets, mode 0400.\nsecrets:\n");
    if (p->encrypted) {
        fprintf(f, "  data_key_%s:      # the data key's id\n    file: ", p->key_id);
        q(f, p->key);
        fputc('\n', f);
    }
    if (p->curve) {
        fprintf(f, "  curve_router_%s:\n    file: ", p->router_key.tag);
        q(f, p->router_key.secret);
        fprintf(f, "\n  curve_client_%s:\n    file: ", p->client_key.tag);
        q(f, p->client_key.secret);
        fputc('\n', f);
    }
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: securestreams deploy SPEC --format compose|swarm [options]\n"
            "Write the pipeline described in SPEC as a Docker Compose file or a Docker Swarm\n"
            "stack file: one service per router, per stage (replicas = workers), for the\n"
            "source and for the sink, on one network (docs/deploy.md). Same inputs, same file.\n"
            "  --format F            compose (docker-compose up) or swarm (docker stack deploy)\n"
            "  -o, --output FILE     write FILE (default: stdout); host paths in the file are\n"
            "                        relative to its directory (to the current one on stdout)\n"
            "  --image NAME          the image of every service (default " DEFAULT_IMAGE ";\n"
            "                        make image builds it without a registry)\n"
            "  --input FILE          the source's input instead of the spec's source.file\n"
            "  --workers N|A,B,C     replicas per stage (one number for all, or one per stage)\n"
            "  --security MODE       plain, encrypted or enclave (needs --key)\n"
            "  --key FILE            the data key: a bind mount (compose) or a secret (swarm)\n"
            "  --on-error skip|fail  the error policy of every component\n"
            "  --enclave-backend B   SS_ENCLAVE of enclave stages: isolated (default), inprocess,\n"
            "                        or sgx: placed on nodes labelled sgx=true, with the SGX devices\n"
            "  --curve DIR           CurveZMQ on every link, with DIR/router and DIR/client key\n"
            "                        pairs (securestreams keygen --curve -o DIR/router ...)\n"
            "  --linger-ms N         how long routers answer late joiners after the end\n"
            "                        (default %d)\n"
            "Exit status: 0 written, 1 a file cannot be read or written, 2 usage or spec error.\n",
            DEFAULT_LINGER_MS);
}

int ss_cmd_deploy(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "format", required_argument, 0, 'f' }, { "output", required_argument, 0, 'o' },
        { "image", required_argument, 0, 'I' }, { "input", required_argument, 0, 'i' },
        { "workers", required_argument, 0, 'w' }, { "security", required_argument, 0, 's' },
        { "key", required_argument, 0, 'k' }, { "on-error", required_argument, 0, 'e' },
        { "enclave-backend", required_argument, 0, 'B' }, { "curve", required_argument, 0, 'c' },
        { "linger-ms", required_argument, 0, 'l' }, { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 } };
    overrides_t o = { 0 };
    const char *format = NULL;
    plan_t p;
    memset(&p, 0, sizeof p);
    p.image = DEFAULT_IMAGE;
    p.backend = "isolated";
    p.linger_ms = DEFAULT_LINGER_MS;
    int c;
    opterr = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'o': o.output = optarg; break;
        case 'I': p.image = optarg; break;
        case 'i': o.input = optarg; break;
        case 'w': o.workers = optarg; break;
        case 's': o.security = optarg; break;
        case 'k': o.key = optarg; break;
        case 'e': o.on_error = optarg; break;
        case 'B': p.backend = optarg; break;
        case 'c': o.curve = optarg; break;
        case 'l': {
            char *end;
            p.linger_ms = strtol(optarg, &end, 10);
            if (*end || end == optarg || p.linger_ms < 0 || p.linger_ms > 86400000) {
                fprintf(stderr, "securestreams deploy: --linger-ms wants milliseconds, not '%s'\n", optarg);
                return SS_EXIT_USAGE;
            }
            break;
        }
        case 'h': usage(stdout); return SS_EXIT_OK;
        default:
            fprintf(stderr, "securestreams deploy: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            usage(stderr);
            return SS_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !format) {
        fprintf(stderr, "securestreams deploy: %s\n",
                optind != argc - 1 ? "one SPEC expected" : "--format compose or --format swarm expected");
        usage(stderr);
        return SS_EXIT_USAGE;
    }
    if (!strcmp(format, "compose"))
        p.format = FMT_COMPOSE;
    else if (!strcmp(format, "swarm"))
        p.format = FMT_SWARM;
    else {
        fprintf(stderr, "securestreams deploy: --format: expected compose or swarm, got '%s'\n", format);
        return SS_EXIT_USAGE;
    }
    if (strcmp(p.backend, "isolated") && strcmp(p.backend, "inprocess") && strcmp(p.backend, "sgx")) {
        fprintf(stderr, "securestreams deploy: --enclave-backend: expected isolated, inprocess or "
                        "sgx, got '%s'\n", p.backend);
        return SS_EXIT_USAGE;
    }
    if (!*p.image || strpbrk(p.image, "\"$ \t\n")) {
        fprintf(stderr, "securestreams deploy: --image: '%s' is not an image name\n", p.image);
        return SS_EXIT_USAGE;
    }

    diag_t d = { "", 0 };
    int rc = SS_EXIT_USAGE;
    char *tmp = NULL;
    if (plan_make(&p, argv[optind], &o, &d) != 0) {
        fprintf(stderr, "securestreams deploy: %s\n", d.msg);
        if (d.io)
            rc = SS_EXIT_ERROR;
        goto out;
    }
    rc = SS_EXIT_ERROR;
    if (o.output) {
        size_t n = strlen(o.output) + 32;
        if (!(tmp = malloc(n)))
            goto out;
        snprintf(tmp, n, "%s.tmp.%ld", o.output, (long)getpid());
        if (!(p.out = fopen(tmp, "w"))) {
            int en = errno;
            fprintf(stderr, "securestreams deploy: cannot write %s: %s\n", tmp, strerror(en));
            goto out;
        }
    } else {
        p.out = stdout;
    }
    header(&p);
    write_routers(&p);
    write_stages(&p);
    write_ends(&p);
    write_top(&p);
    if (fflush(p.out) != 0 || ferror(p.out)) {
        int en = errno;
        fprintf(stderr, "securestreams deploy: cannot write %s: %s\n", o.output ? tmp : "stdout",
                strerror(en));
        goto out;
    }
    if (o.output) {
        int bad = fclose(p.out) != 0;
        p.out = NULL;
        if (bad || rename(tmp, o.output) != 0) {
            int en = errno;
            fprintf(stderr, "securestreams deploy: cannot write %s: %s\n", o.output, strerror(en));
            goto out;
        }
    }
    rc = SS_EXIT_OK;
out:
    if (p.out && p.out != stdout)
        fclose(p.out);
    if (tmp && rc != SS_EXIT_OK)
        unlink(tmp);
    free(tmp);
    plan_cleanup(&p);
    return rc;
}
