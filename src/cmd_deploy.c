/*
 * cmd_deploy.c - `securestreams deploy`: a pipeline spec as a Docker Compose
 * file or a Docker Swarm stack file (docs/deploy.md).
 *
 * The spec and the options are resolved and checked by the same plan as
 * `run`'s (lib/pipeline/plan.h); what remains here is where each file goes
 * and how the services are written. Every component gets the command line
 * `run` gives it (src/cmd_run.c), with routers at fixed ports on their own
 * service (routerI:5555 for producers, routerI:5556 for consumers) instead of
 * ephemeral loopback ports:
 *   router0 .. routerN   one service each, one replica, --linger-ms so that a
 *                        worker scaled in after the end hears "stream ended"
 *   one service a stage  replicas = the stage's workers; scale it at will.
 *                        Fused stages are one service, "mapper-filter-reducer",
 *                        whose workers run every script in turn, with no
 *                        router between the stages
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
#include "crypto/crypto.h"
#include "crypto/curve.h"
#include "pipeline/plan.h"
#include "wire/envelope.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRONT_PORT 5555
#define BACK_PORT 5556
#define JOIN_TIMEOUT_MS 120000     /* containers may start in any order */
#define LIVENESS_MS 10000          /* see environment() */
#define DEFAULT_LINGER_MS 30000
#define MAX_LINGER_MS 86400000     /* a day */
#define DEFAULT_IMAGE "securestreams:latest"
#define WRAP_COLUMN 100            /* command lines wrap before this column */

typedef enum { FMT_COMPOSE, FMT_SWARM } format_t;

#define SERVICE_NAME_MAX 48        /* a service's name, and a Swarm object's */

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

/* What the file says: the resolved plan, and where each file goes. */
typedef struct {
    format_t format;
    FILE *out;
    const char *image;
    uint64_t linger_ms;
    ss_plan plan;               /* stages, mode, key, input, stream (plan.h) */
    char run[2 * SS_RUN_BYTES + 1];   /* this deploy's run id, in every file it writes */
    char service[SS_MAX_STAGES][SERVICE_NAME_MAX + 1]; /* each stage's service */
    char *outdir;               /* canonical: every host path is relative to it */
    char *specdir;              /* canonical: the scripts must live under it */
    char *spec_file;            /* the spec, relative to the output directory */
    char *spec_dir;             /* its directory: /pipeline in Compose */
    script_t scripts[SS_MAX_STAGES + 1];   /* every stage's scripts in order, then the sink's */
    int first[SS_MAX_STAGES];   /* a stage's first script in scripts */
    int nscripts;               /* the stages' scripts: scripts[nscripts] is the sink's */
    char *data_dir;             /* the input's directory: /data */
    char *input_target;         /* /data/NAME */
    char *key;                  /* the data key file, or NULL in the plain mode */
    int curve;
    curve_pair_t router_key, client_key;
} deploy_t;

/* ---- small helpers ---- */

/* Why planning failed: a message, and whether a file could not be read
 * (exit 1) rather than the spec or the options being wrong (exit 2). */
typedef struct {
    char msg[1024];
    int io;
} diag_t;

/* Fill d with a message and return -1, for `return say(d, ...)`. */
static int say(diag_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int say(diag_t *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ss_vsay(d->msg, sizeof d->msg, fmt, ap);
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

/* Each stage's service name: the stage's name, or its parts' joined by '-'
 * when fused ("mapper-filter-reducer"). A stage name must be able to name a
 * service and must not take the name of another service. */
static int plan_services(deploy_t *p, diag_t *d)
{
    for (int i = 0; i < p->plan.nstages; i++) {
        const ss_plan_stage *st = &p->plan.stages[i];
        size_t len = 0;
        for (int k = 0; k < st->nscripts; k++) {
            const char *part = st->parts[k];
            if (!valid_name(part) || !strcmp(part, "source") || !strcmp(part, "sink") ||
                !strncmp(part, "router", 6))
                return say(d, "stage name '%s' cannot name a service: use letters, digits, "
                           "'_' and '-', and not source, sink or router...", part);
            len += (size_t)snprintf(p->service[i] + len, sizeof p->service[i] - len, "%s%s",
                                    k ? "-" : "", part);
            if (len >= sizeof p->service[i])
                return say(d, "the fused stages' service name %s... is longer than %d "
                           "characters: use shorter stage names", p->service[i], SERVICE_NAME_MAX);
        }
    }
    return 0;
}

/* The output's directory (every host path in the file is relative to it),
 * the spec's, and the spec relative to the output. */
static int plan_dirs(deploy_t *p, const char *output, diag_t *d)
{
    if (output) {
        char *dir = strdup(output);
        if (!dir)
            return say(d, "out of memory");
        char *slash = strrchr(dir, '/');
        if (slash)
            slash[slash == dir ? 1 : 0] = '\0';
        p->outdir = canonical(slash ? dir : ".", "output directory", d);
        free(dir);
    } else {
        p->outdir = canonical(".", "current directory", d);
    }
    if (!p->outdir || !(p->specdir = canonical(p->plan.path, "spec", d)) ||
        !(p->spec_file = host_path(p->outdir, p->specdir, d)))
        return -1;
    strip_last(p->specdir);
    return (p->spec_dir = host_path(p->outdir, p->specdir, d)) ? 0 : -1;
}

/* Every stage's scripts, in order, then the sink's. */
static int plan_scripts(deploy_t *p, diag_t *d)
{
    const ss_plan *pl = &p->plan;
    for (int i = 0; i < pl->nstages; i++) {
        p->first[i] = p->nscripts;
        for (int k = 0; k < pl->stages[i].nscripts; k++) {
            char what[96];
            snprintf(what, sizeof what, "stage %s: script", pl->stages[i].parts[k]);
            if (plan_script(p->outdir, p->specdir, pl->stages[i].scripts[k], what,
                            &p->scripts[p->nscripts++], d))
                return -1;
        }
    }
    return plan_script(p->outdir, p->specdir, pl->sink_script, "sink: script",
                       &p->scripts[p->nscripts], d);
}

/* The input is mounted at /data, its directory; the key, if any, goes
 * alongside as a bind mount or a secret. */
static int plan_data(deploy_t *p, diag_t *d)
{
    char *abs = canonical(p->plan.input, "cannot read input", d);
    if (!abs)
        return -1;
    const char *base = strrchr(abs, '/') + 1;
    int rc = -1;
    if (!(p->input_target = malloc(strlen(base) + 8))) {
        say(d, "out of memory");
        goto out;
    }
    sprintf(p->input_target, "/data/%s", base);
    strip_last(abs);
    if (!(p->data_dir = host_path(p->outdir, abs, d)))
        goto out;
    free(abs);
    abs = NULL;
    if (p->plan.key && (!(abs = canonical(p->plan.key, "data key", d)) ||
                        !(p->key = host_path(p->outdir, abs, d))))
        goto out;
    rc = 0;
out:
    free(abs);
    return rc;
}

/* Resolve the spec and the options (plan.h), then place every file. */
static int plan_make(deploy_t *p, const char *spec_path, const ss_plan_overrides *o,
                     const char *output, const char *curve, const char *run_id, diag_t *d)
{
    ss_err e = ss_plan_resolve(spec_path, o, &p->plan, d->msg, sizeof d->msg);
    if (e != SS_OK) {
        d->io = e != SS_ERR_USAGE;
        return -1;
    }
    /* The run id of these files: given, or a fresh one for this deploy. */
    uint8_t run[SS_RUN_BYTES];
    if (run_id && ss_run_parse(run_id, run) != SS_OK) {
        ss_say(d->msg, sizeof d->msg, "--run %s: a run id is 32 hex digits", run_id);
        return -1;
    }
    if (!run_id) {
        if (sodium_init() < 0) {
            ss_say(d->msg, sizeof d->msg, "libsodium failed to initialise: no run id");
            d->io = 1;
            return -1;
        }
        ss_run_new(run);
    }
    ss_run_hex(run, p->run);
    /* The stream id comes from the pipeline's name, so that the file is
     * stable (a sealed input is sealed again into the run by the source). */
    p->plan.stream = fnv1a(FNV_SEED, p->plan.name, strlen(p->plan.name));
    if (!p->plan.stream)
        p->plan.stream = 1;
    if (plan_services(p, d) != 0 || plan_dirs(p, output, d) != 0 || plan_scripts(p, d) != 0 ||
        plan_data(p, d) != 0)
        return -1;
    if (curve) {
        p->curve = 1;
        if (plan_curve_pair(p->outdir, curve, "router", &p->router_key, d) != 0 ||
            plan_curve_pair(p->outdir, curve, "client", &p->client_key, d) != 0)
            return -1;
    }
    return 0;
}

static void plan_cleanup(deploy_t *p)
{
    for (int i = 0; i <= SS_MAX_STAGES; i++) {
        free(p->scripts[i].host);
        free(p->scripts[i].target);
        free(p->scripts[i].config);
    }
    free(p->outdir);
    free(p->specdir);
    free(p->spec_file);
    free(p->spec_dir);
    free(p->data_dir);
    free(p->input_target);
    free(p->key);
    free(p->router_key.secret);
    free(p->router_key.pub);
    free(p->client_key.secret);
    free(p->client_key.pub);
    ss_plan_cleanup(&p->plan);
}

/* ---- writing ---- */

typedef enum { ROLE_ROUTER, ROLE_SOURCE, ROLE_WORKER, ROLE_SINK } role_t;

#define SWARM(p) ((p)->format == FMT_SWARM)

static void header(deploy_t *p)
{
    FILE *f = p->out;
    const ss_plan *pl = &p->plan;
    int n = pl->nstages;
    fprintf(f, "# SecureStreams pipeline \"%s\" as a %s, written by\n", pl->name,
            SWARM(p) ? "Docker Swarm stack" : "Docker Compose file");
    fprintf(f, "# `securestreams deploy %s --format %s`:\n# generate it again rather than edit it.\n",
            p->spec_file, SWARM(p) ? "swarm" : "compose");
    fprintf(f, "#\n# Security %s; stream id 0x%08x (from the pipeline's name); on_error = %s.\n",
            pl->mode, (unsigned)pl->stream, pl->on_error);
    fprintf(f, "# Run id %s, made by this deploy: every sealed batch and statistics\n"
               "# record is bound to it. Bringing these files up again reuses it, so the sink\n"
               "# cannot tell that run's batches from an earlier one's: deploy again for a\n"
               "# fresh run id.\n", p->run);
    fprintf(f, "# Services (routers listen on %d for producers and %d for consumers):\n", FRONT_PORT,
            BACK_PORT);
    fprintf(f, "#   %-18s reads %s, sends to router0\n", "source", p->input_target);
    for (int i = 0; i < n; i++) {
        const ss_plan_stage *st = &pl->stages[i];
        fprintf(f, "#   %-18s stage %d: %d worker%s, router%d -> router%d%s\n", p->service[i],
                i + 1, st->workers, st->workers == 1 ? "" : "s", i, i + 1,
                st->enclave ? (strcmp(pl->backend, "sgx") ? ", in enclaves (isolated backend)"
                                                          : ", in SGX enclaves")
                            : "");
        if (pl->fused)
            fprintf(f, "#   %-18s the stages fused: each worker runs %s in turn\n", "", st->name);
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
        if (pl->nenclave && !strcmp(pl->backend, "sgx"))
            fprintf(f, "# Enclave stages run on nodes labelled sgx=true. `docker stack deploy` (Docker\n"
                       "# 20.10 to 28 at least) ignores `devices`: see docs/deploy.md for giving the\n"
                       "# workers /dev/sgx_enclave on those nodes.\n");
        fprintf(f, "#\n"
                   "#   docker node update --label-add securestreams.data=true NODE\n"
                   "#   docker stack deploy -c FILE STACK        # --resolve-image never: no registry\n"
                   "#   docker service logs -f --raw STACK_sink  # the results, then the summary\n"
                   "#   docker service scale STACK_%s=4\n"
                   "#                                            # while it runs: new workers join\n"
                   "#   docker stack rm STACK\n", p->service[0]);
    } else {
        fprintf(f, "#   /pipeline (read-only): %s, the spec's directory\n", p->spec_dir);
        fprintf(f, "#   /data (read-only):     %s\n", p->data_dir);
        fprintf(f, "#\n"
                   "#   docker-compose -f FILE up -d\n"
                   "#   docker-compose -f FILE logs -f sink      # the results, then the summary\n"
                   "#   docker-compose -f FILE up -d --no-deps --no-recreate --scale %s=4 %s\n"
                   "#                                            # while it runs: new workers join\n"
                   "#   docker-compose -f FILE down\n", p->service[0], p->service[0]);
    }
    fprintf(f, "version: \"3.8\"\n\nservices:\n");
}

/* The environment `run` gives each role (cmd_run.c), plus the in-container
 * paths of the keys and two timeouts. Containers start in any order, so a
 * component waits for its routers (SS_JOIN_TIMEOUT_MS); and a worker that has
 * joined one router sends it nothing while it waits to join the other, so
 * the liveness timeout is longer than run's 3 s. A stopped container is still
 * noticed at once: its connection closes. */
static void environment(deploy_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    char v[64];
    fprintf(f, "    environment:\n");
    snprintf(v, sizeof v, "%u", (unsigned)p->plan.stream);
    env_line(f, "SS_STREAM", v);
    env_line(f, "SS_ON_ERROR", p->plan.on_error);
    snprintf(v, sizeof v, "%d", LIVENESS_MS);
    env_line(f, "SS_LIVENESS_MS", v);
    if (role != ROLE_ROUTER)
        env_line(f, "SS_RUN", p->run);
    if (role == ROLE_SINK) {
        snprintf(v, sizeof v, "%d", p->plan.nstages + 1);
        env_line(f, "SS_POS", v);
        env_line(f, "SS_SOURCES", "1");
    }
    if (role == ROLE_ROUTER) {
        if (p->curve) {
            env_line(f, "SS_CURVE_ROUTER_KEY", "/run/secrets/curve-router");
            env_line(f, "SS_CURVE_ALLOW", "/run/secrets/curve-client.pub");
        }
        return;
    }
    if (p->plan.encrypted)
        env_line(f, "SS_KEY_FILE", "/run/secrets/data.key");
    if (role == ROLE_WORKER && p->plan.stages[stage].enclave)
        env_line(f, "SS_ENCLAVE", p->plan.backend);
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
static void files(deploy_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    int needs_key = p->plan.encrypted && role != ROLE_ROUTER;
    /* The role's scripts: scripts[first] to scripts[first + nsc - 1]. */
    int first = role == ROLE_WORKER ? p->first[stage] : p->nscripts;
    int nsc = role == ROLE_WORKER ? p->plan.stages[stage].nscripts : role == ROLE_SINK;
    if (!SWARM(p)) {
        if (role == ROLE_ROUTER && !p->curve)
            return;
        fprintf(f, "    volumes:\n");
        if (nsc)
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
    if (nsc || p->curve) {
        fprintf(f, "    configs:\n");
        for (int i = first; i < first + nsc; i++) {
            int seen = 0;
            for (int k = first; k < i; k++)
                seen |= !strcmp(p->scripts[k].config, p->scripts[i].config);
            if (!seen)
                swarm_file(f, p->scripts[i].config, p->scripts[i].target, "0444");
        }
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
            snprintf(name, sizeof name, "data_key_%s", p->plan.key_id);
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
static void policy(deploy_t *p, role_t role, int stage)
{
    FILE *f = p->out;
    int sgx = role == ROLE_WORKER && p->plan.stages[stage].enclave && !strcmp(p->plan.backend, "sgx");
    /* A worker that fails to join or dies is replaced, unless on_error =
     * fail stopped it; routers, the source and the sink run once. */
    int restart = role == ROLE_WORKER && strcmp(p->plan.on_error, "fail");
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
            fprintf(f, "    deploy:\n      replicas: %d\n", p->plan.stages[stage].workers);
        fprintf(f, "    restart: \"%s\"\n", restart ? "on-failure:3" : "no");
        return;
    }
    fprintf(f, "    deploy:\n");
    fprintf(f, "      replicas: %d\n", role == ROLE_WORKER ? p->plan.stages[stage].workers : 1);
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

static void depends(deploy_t *p, role_t role, int stage)
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
        fprintf(f, "router%d", p->plan.nstages);
    else {
        for (int i = 0; i <= p->plan.nstages; i++)
            fprintf(f, "router%d, ", i);
        for (int i = 0; i < p->plan.nstages; i++)
            fprintf(f, "%s, ", p->service[i]);
        fprintf(f, "sink");
    }
    fprintf(f, "]\n");
}

static void service_common(deploy_t *p, const char *name)
{
    fprintf(p->out, "  %s:\n    image: ", name);
    q(p->out, p->image);
    fputc('\n', p->out);
}

static void write_routers(deploy_t *p)
{
    FILE *f = p->out;
    char from[32], to[32], linger[24], name[24];
    snprintf(from, sizeof from, "tcp://*:%d", FRONT_PORT);
    snprintf(to, sizeof to, "tcp://*:%d", BACK_PORT);
    snprintf(linger, sizeof linger, "%llu", (unsigned long long)p->linger_ms);
    for (int i = 0; i <= p->plan.nstages; i++) {
        snprintf(name, sizeof name, "router%d", i);
        if (i == 0)
            fprintf(f, "  # router0: the source produces into it, stage %s consumes.\n",
                    p->service[0]);
        else if (i < p->plan.nstages)
            fprintf(f, "  # %s: stage %s produces, stage %s consumes.\n", name,
                    p->service[i - 1], p->service[i]);
        else
            fprintf(f, "  # %s: stage %s produces, the sink consumes.\n", name,
                    p->service[i - 1]);
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

/* A stage's comment: its workers, their scripts, enclaves. */
static void stage_comment(deploy_t *p, int i)
{
    FILE *f = p->out;
    const ss_plan_stage *st = &p->plan.stages[i];
    fprintf(f, "  # Stage %d of %d%s: %d worker%s", i + 1, p->plan.nstages,
            st->nscripts > 1 ? ", the stages fused" : "", st->workers, st->workers == 1 ? "" : "s");
    if (st->nscripts > 1)
        fprintf(f, ", each running in turn\n  #");
    else
        fprintf(f, " of");
    for (int k = 0; k < st->nscripts; k++)
        fprintf(f, "%s %s", k ? "," : "", p->scripts[p->first[i] + k].target);
    if (st->enclave)
        fprintf(f, ",\n  # each running the stage's code in an enclave (SS_ENCLAVE=%s)", p->plan.backend);
    fprintf(f, ".\n");
}

static void write_stages(deploy_t *p)
{
    FILE *f = p->out;
    for (int i = 0; i < p->plan.nstages; i++) {
        const ss_plan_stage *st = &p->plan.stages[i];
        const script_t *sc = &p->scripts[p->first[i]];
        char from[64], to[64], pos[16];
        snprintf(from, sizeof from, "tcp://router%d:%d", i, BACK_PORT);
        snprintf(to, sizeof to, "tcp://router%d:%d", i + 1, FRONT_PORT);
        snprintf(pos, sizeof pos, "%d", i + 1);
        stage_comment(p, i);
        service_common(p, p->service[i]);
        /* As run starts a worker: the first script, then those fused after it. */
        const char *args[14 + 2 * SS_MAX_STAGES] = {
            "worker", "--from", from, "--to", to, "--script", sc[0].target,
            "--name", st->name, "--stage", st->name, "--pos", pos };
        for (int k = 1, a = 13; k < st->nscripts; k++) {
            args[a++] = "--script";
            args[a++] = sc[k].target;
        }
        flow_list(f, "command", args);
        environment(p, ROLE_WORKER, i);
        files(p, ROLE_WORKER, i);
        policy(p, ROLE_WORKER, i);
        depends(p, ROLE_WORKER, i);
        fputc('\n', f);
    }
}

static void write_ends(deploy_t *p)
{
    FILE *f = p->out;
    int n = p->plan.nstages;
    char from[64], to[64], bb[24];
    snprintf(from, sizeof from, "tcp://router%d:%d", n, BACK_PORT);
    fprintf(f, "  # The sink: the results on stdout, the summary on stderr; exits 0 once every\n"
               "  # source batch is accounted for, 4 when the result is incomplete.\n");
    service_common(p, "sink");
    const char *sargs[] = { "sink", "--from", from, "--script", p->scripts[p->nscripts].target, "--name", "sink",
                            "--stage", "sink", NULL };
    flow_list(f, "command", sargs);
    environment(p, ROLE_SINK, n);
    files(p, ROLE_SINK, n);
    policy(p, ROLE_SINK, n);
    depends(p, ROLE_SINK, n);
    fputc('\n', f);

    snprintf(to, sizeof to, "tcp://router0:%d", FRONT_PORT);
    snprintf(bb, sizeof bb, "%ld", p->plan.batch_bytes);
    fprintf(f, "  # The source: sends the input once, then ends. Never restarted: a second\n"
               "  # source would send the input again.\n");
    service_common(p, "source");
    const char *args[] = { "source", "--to", to, "--input", p->input_target,
                           p->plan.header ? "--header" : "--no-header", "--batch-bytes", bb, NULL };
    flow_list(f, "command", args);
    environment(p, ROLE_SOURCE, -1);
    files(p, ROLE_SOURCE, -1);
    policy(p, ROLE_SOURCE, -1);
    depends(p, ROLE_SOURCE, -1);
}

static void write_top(deploy_t *p)
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
    fprintf(f, "\n# Stage and sink scripts, named after their content: a changed script deploys\n"
               "# as a new config (a Swarm config cannot change).\nconfigs:\n");
    for (int i = 0; i <= p->nscripts; i++) {
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
    if (!p->plan.encrypted && !p->curve)
        return;
    fprintf(f, "\n# Keys, read by `docker stack deploy` from these files and given only to the\n"
               "# services that use them, at /run/secrets, mode 0400.\nsecrets:\n");
    if (p->plan.encrypted) {
        fprintf(f, "  data_key_%s:      # the data key's id\n    file: ", p->plan.key_id);
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

/* Write the file: to a temporary file renamed over `output` once whole, or
 * to stdout. */
static int write_file(const ss_cli *cli, deploy_t *p, const char *output)
{
    int rc = SS_EXIT_ERROR;
    char *tmp = NULL;
    p->out = stdout;
    if (output) {
        size_t n = strlen(output) + 32;
        if (!(tmp = malloc(n)))
            return ss_cli_fail(cli, SS_EXIT_ERROR, "out of memory");
        snprintf(tmp, n, "%s.tmp.%ld", output, (long)getpid());
        if (!(p->out = fopen(tmp, "w"))) {
            int en = errno;
            ss_cli_fail(cli, SS_EXIT_ERROR, "cannot write %s: %s", tmp, strerror(en));
            goto out;
        }
    }
    header(p);
    write_routers(p);
    write_stages(p);
    write_ends(p);
    write_top(p);
    if (fflush(p->out) != 0 || ferror(p->out)) {
        int en = errno;
        ss_cli_fail(cli, SS_EXIT_ERROR, "cannot write %s: %s", output ? tmp : "stdout", strerror(en));
        goto out;
    }
    if (output) {
        int bad = fclose(p->out) != 0;
        p->out = NULL;
        if (bad || rename(tmp, output) != 0) {
            int en = errno;
            ss_cli_fail(cli, SS_EXIT_ERROR, "cannot write %s: %s", output, strerror(en));
            goto out;
        }
    }
    rc = SS_EXIT_OK;
out:
    if (p->out && p->out != stdout)
        fclose(p->out);
    p->out = NULL;
    if (tmp && rc != SS_EXIT_OK)
        unlink(tmp);
    free(tmp);
    return rc;
}

#define STR_(x) #x
#define STR(x) STR_(x)

static const char *const formats[] = { "compose", "swarm", NULL };

/*
 * securestreams deploy SPEC --format compose|swarm [options]; argv[0] is
 * "deploy". Exit status: 0 written (or --help), 1 a file cannot be read or
 * written, 2 usage or spec error.
 */
int ss_cmd_deploy(int argc, char **argv)
{
    ss_plan_overrides o = { 0 };
    const char *format = NULL, *output = NULL, *curve = NULL, *run_id = NULL, *args[1];
    deploy_t p;
    memset(&p, 0, sizeof p);
    p.image = DEFAULT_IMAGE;
    p.linger_ms = DEFAULT_LINGER_MS;
    const ss_opt opts[] = {
        { "--format", 0, SS_OPT_CHOICE, &format, "F",
          "compose (docker-compose up) or swarm (docker stack deploy)", .choices = formats },
        { "--output", 'o', SS_OPT_STRING, &output, "FILE",
          "write FILE (default: stdout); host paths in the file are\n"
          "relative to its directory (to the current one on stdout)" },
        { "--image", 0, SS_OPT_STRING, &p.image, "NAME",
          "the image of every service (default " DEFAULT_IMAGE ";\nmake image builds it without a registry)" },
        { "--input", 0, SS_OPT_STRING, &o.input, "FILE", "the source's input instead of the spec's source.file" },
        { "--workers", 0, SS_OPT_STRING, &o.workers, "N|A,B,C",
          "replicas per stage (one number for all, or one per stage)" },
        { "--security", 0, SS_OPT_STRING, &o.security, "MODE", "plain, encrypted or enclave (needs --key)" },
        { "--key", 0, SS_OPT_STRING, &o.key, "FILE", "the data key: a bind mount (compose) or a secret (swarm)" },
        { "--on-error", 0, SS_OPT_CHOICE, &o.on_error, "skip|fail", "the error policy of every component",
          .choices = ss_plan_on_errors },
        { "--enclave-backend", 0, SS_OPT_CHOICE, &o.enclave_backend, "B",
          "SS_ENCLAVE of enclave stages: isolated (default), inprocess,\n"
          "or sgx: placed on nodes labelled sgx=true, with the SGX devices", .choices = ss_plan_backends },
        { "--fuse", 0, SS_OPT_FLAG, &o.fuse, NULL,
          "one service of workers running every stage in turn, no\n"
          "routers between the stages (as run --fuse)", .value = 1 },
        { "--curve", 0, SS_OPT_STRING, &curve, "DIR",
          "CurveZMQ on every link, with DIR/router and DIR/client key\n"
          "pairs (securestreams keygen --curve -o DIR/router ...)" },
        { "--linger-ms", 0, SS_OPT_MS, &p.linger_ms, "N",
          "how long routers answer late joiners after the end\n(default " STR(DEFAULT_LINGER_MS) ")",
          .max = MAX_LINGER_MS },
        { "--run", 0, SS_OPT_STRING, &run_id, "HEX",
          "the run id written into the files (32 hex digits; default a\n"
          "fresh one for every deploy: running the same files again reuses it)" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "deploy", .synopsis = "SPEC --format compose|swarm [options]", .opts = opts,
        .about = "Write the pipeline described in SPEC as a Docker Compose file or a Docker Swarm\n"
                 "stack file: one service per router, per stage (replicas = workers), for the\n"
                 "source and for the sink, on one network (docs/deploy.md). Same inputs and --run,\n"
                 "same file.",
        .epilogue = "Exit status: 0 written, 1 a file cannot be read or written, 2 usage or spec error.",
        .min_args = 1, .max_args = 1,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)args, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!format)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--format compose or --format swarm expected");
    p.format = !strcmp(format, "swarm") ? FMT_SWARM : FMT_COMPOSE;
    if (strpbrk(p.image, "\"$ \t\n"))
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--image: '%s' is not an image name", p.image);

    diag_t d = { "", 0 };
    if (plan_make(&p, args[0], &o, output, curve, run_id, &d) != 0)
        rc = ss_cli_fail(&cli, d.io ? SS_EXIT_ERROR : SS_EXIT_USAGE, "%s", d.msg);
    else
        rc = write_file(&cli, &p, output);
    plan_cleanup(&p);
    return rc;
}
