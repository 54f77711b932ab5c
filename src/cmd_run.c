/*
 * cmd_run.c - `securestreams run`: every component of a pipeline as local
 * processes, supervised, with the sink's output and summary.
 *
 * The plan (lib/pipeline/plan.h) says what to start; run starts, in order,
 * one router before each stage and one before the sink, then the sink and the
 * workers (last stage first), waits until each said ready, then the source.
 *
 * Supervision rules: a router, the source or the sink that fails ends the
 * run; a worker that exits with an error or stops under on_error = fail ends
 * it too; a worker that is killed is reported and the run goes on, because
 * its router re-dispatches what it had not finished (docs/protocol.md),
 * unless it was the last worker of its stage. Every child gets
 * PR_SET_PDEATHSIG, and on failure or Ctrl-C the supervisor terminates the
 * rest, so no process outlives a run.
 */
#include "cli.h"

#include "base/common.h"
#include "crypto/crypto.h"
#include "pipeline/plan.h"
#include "wire/envelope.h"

#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* The enclave backends a run on this machine can start (sgx is deploy's:
 * it needs SGX nodes and the Gramine build). */
static const char *const local_backends[] = { "isolated", "inprocess", NULL };

#define MAX_CHILDREN (SS_MAX_STAGES * SS_MAX_WORKERS + SS_MAX_STAGES + 8)
#define SINK_GRACE_MS 10000   /* how long the others may run on after the sink finished */

typedef enum { ROLE_ROUTER, ROLE_SOURCE, ROLE_WORKER, ROLE_SINK } role_t;

typedef struct {
    pid_t pid;
    role_t role;
    int stage;          /* index of the stage (workers) */
    char name[64];
    int done;
    double cpu;         /* user + system seconds, once reaped */
    long max_rss_kb;
} child_t;

/* What the command line asks beyond the plan's overrides. */
typedef struct {
    const char *spec;
    const char *summary;   /* --summary-json FILE */
    int verbose;
    ss_plan_overrides o;
} run_args;

/* One run: what it starts, and the children it started. */
typedef struct {
    const ss_cli *cli;                          /* for messages */
    ss_plan plan;
    char self_exe[4096];                        /* every component is this binary */
    child_t kids[MAX_CHILDREN];
    int nkids;
    char endpoints[SS_MAX_STAGES + 1][2][256]; /* per router: frontend, backend */
    int live[SS_MAX_STAGES];                    /* live workers per stage */
    int ready[MAX_CHILDREN];                    /* "ready" pipes of the sink and the workers */
    child_t *ready_kid[MAX_CHILDREN];
    int nready;
    /* The components' environment, "NAME=value". */
    char stream_env[48], onerr_env[48], summary_env[4200], key_env[4200], enclave_env[64];
    char run_env[48], sink_pos_env[32], sources_env[32];
} run_t;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

/* fork + exec ourselves with argv; env entries "K=V" set in the child. If
 * ready_fd is non-NULL, a pipe's write end is passed as --ready-fd. */
static pid_t spawn(const run_t *r, char *const argv[], char *const env[], int *ready_fd)
{
    int fds[2] = { -1, -1 };
    if (ready_fd && pipe(fds) != 0)
        return -1;
    pid_t ppid = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int en = errno;
        if (ready_fd) {
            close(fds[0]);
            close(fds[1]);
        }
        errno = en;
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != ppid)
            _exit(127);
        signal(SIGINT, SIG_IGN); /* the supervisor decides; Ctrl-C reaches us as SIGTERM */
        for (char *const *e = env; e && *e; e++)
            putenv(*e);
        char *args[64];
        int n = 0;
        for (; argv[n] && n < 60; n++)
            args[n] = argv[n];
        char fdbuf[16];
        if (ready_fd) {
            close(fds[0]);
            snprintf(fdbuf, sizeof fdbuf, "%d", fds[1]);
            args[n++] = (char *)"--ready-fd";
            args[n++] = fdbuf;
        }
        args[n] = NULL;
        execv(r->self_exe, args);
        fprintf(stderr, "securestreams run: cannot start %s: %s\n", r->self_exe, strerror(errno));
        _exit(127);
    }
    if (ready_fd) {
        close(fds[1]);
        *ready_fd = fds[0];
    }
    return pid;
}

static child_t *add_child(run_t *r, pid_t pid, role_t role, int stage, const char *name)
{
    child_t *k = &r->kids[r->nkids++];
    k->pid = pid;
    k->role = role;
    k->stage = stage;
    k->done = 0;
    snprintf(k->name, sizeof k->name, "%s", name);
    return k;
}

static void terminate_all(run_t *r)
{
    for (int i = 0; i < r->nkids; i++)
        if (!r->kids[i].done)
            kill(r->kids[i].pid, SIGTERM);
    for (int waited = 0; waited < 40; waited++) {
        int alive = 0;
        for (int i = 0; i < r->nkids; i++) {
            if (r->kids[i].done)
                continue;
            if (waitpid(r->kids[i].pid, NULL, WNOHANG) == r->kids[i].pid)
                r->kids[i].done = 1;
            else
                alive = 1;
        }
        if (!alive)
            return;
        usleep(25000);
    }
    for (int i = 0; i < r->nkids; i++)
        if (!r->kids[i].done) {
            kill(r->kids[i].pid, SIGKILL);
            waitpid(r->kids[i].pid, NULL, 0);
            r->kids[i].done = 1;
        }
}

/* Read a "ready ..." line from a child within 10 s into line. */
static int read_line(int fd, char *out, size_t outlen)
{
    char line[512];
    size_t have = 0;
    int64_t deadline = ss_now_ms() + 10000;
    while (have < sizeof line - 1) {
        struct pollfd p = { fd, POLLIN, 0 };
        int left = (int)(deadline - ss_now_ms());
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        ssize_t n = read(fd, line + have, sizeof line - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        if (memchr(line, '\n', have))
            break;
    }
    close(fd);
    line[have] = '\0';
    snprintf(out, outlen, "%s", line);
    return strncmp(line, "ready", 5) == 0 ? 0 : -1;
}

/* Read "ready FRONTEND BACKEND\n" from a router. */
static int read_ready(int fd, char *front, char *back, size_t len)
{
    char line[512];
    if (read_line(fd, line, sizeof line) != 0)
        return -1;
    char f[256], b[256];
    if (sscanf(line, "ready %255s %255s", f, b) != 2)
        return -1;
    snprintf(front, len, "%s", f);
    snprintf(back, len, "%s", b);
    return 0;
}

static const char *describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "stopped (status %d)", status);
    return buf;
}


/* The components' environment; SS_LOG=warn unless --verbose, so that they
 * say only what goes wrong. */
static void set_environment(run_t *r, const run_args *a)
{
    const ss_plan *p = &r->plan;
    /* The stream id: routers refuse messages of any other pipeline. */
    snprintf(r->stream_env, sizeof r->stream_env, "SS_STREAM=%u", (unsigned)p->stream);
    snprintf(r->key_env, sizeof r->key_env, "SS_KEY_FILE=%s", p->key ? p->key : "");
    snprintf(r->onerr_env, sizeof r->onerr_env, "SS_ON_ERROR=%s", p->on_error);
    snprintf(r->summary_env, sizeof r->summary_env, "SS_SUMMARY_FILE=%s", a->summary ? a->summary : "");
    snprintf(r->enclave_env, sizeof r->enclave_env, "SS_ENCLAVE=%s", p->backend);
    /* A fresh run id for every run: every sealed batch and statistics record
     * is bound to it, so nothing of an earlier run (same key) is accepted. */
    uint8_t run[SS_RUN_BYTES];
    char hex[2 * SS_RUN_BYTES + 1];
    if (sodium_init() < 0)
        ss_log("warning: libsodium failed to initialise; the run id comes from its fallback");
    ss_run_new(run);
    ss_run_hex(run, hex);
    snprintf(r->run_env, sizeof r->run_env, "SS_RUN=%s", hex);
    /* the sink follows the last stage, and expects one source */
    snprintf(r->sink_pos_env, sizeof r->sink_pos_env, "SS_POS=%d", p->nstages + 1);
    snprintf(r->sources_env, sizeof r->sources_env, "SS_SOURCES=1");
    if (!a->verbose)
        setenv("SS_LOG", "warn", 0);
}

/* Routers: one before each stage and one before the sink, each on two
 * ephemeral loopback ports it reports when ready. */
static int start_routers(run_t *r)
{
    char *env[] = { r->stream_env, r->onerr_env, NULL };
    for (int i = 0; i <= r->plan.nstages; i++) {
        char name[64];
        snprintf(name, sizeof name, "router%d", i);
        char *args[] = { (char *)"securestreams", (char *)"router", (char *)"--from",
                         (char *)"tcp://127.0.0.1:*", (char *)"--to", (char *)"tcp://127.0.0.1:*",
                         (char *)"--name", name, NULL };
        int fd;
        pid_t pid = spawn(r, args, env, &fd);
        if (pid < 0)
            return ss_cli_fail(r->cli, SS_EXIT_ERROR, "cannot start %s: %s", name, strerror(errno));
        add_child(r, pid, ROLE_ROUTER, i, name);
        if (read_ready(fd, r->endpoints[i][0], r->endpoints[i][1], sizeof r->endpoints[i][0]) != 0)
            return ss_cli_fail(r->cli, SS_EXIT_ERROR, "%s did not start (see its message above)", name);
    }
    return 0;
}

/* Start a component that reports ready on a pipe: the sink or a worker. */
static int start_joiner(run_t *r, char *const args[], char *const env[], role_t role, int stage,
                        const char *name)
{
    pid_t pid = spawn(r, args, env, &r->ready[r->nready]);
    if (pid < 0)
        return ss_cli_fail(r->cli, SS_EXIT_ERROR, "cannot start a component: %s", strerror(errno));
    r->ready_kid[r->nready++] = add_child(r, pid, role, stage, name);
    return 0;
}

/* The sink, then every stage's workers, last stage first. */
static int start_sink_and_workers(run_t *r)
{
    const ss_plan *p = &r->plan;
    char *sink_args[] = { (char *)"securestreams", (char *)"sink", (char *)"--from",
                          r->endpoints[p->nstages][1], (char *)"--script", (char *)p->sink_script,
                          (char *)"--name", (char *)"sink", (char *)"--stage", (char *)"sink", NULL };
    char *sink_env[] = { r->stream_env, r->onerr_env, r->summary_env, r->key_env, r->run_env,
                         r->sink_pos_env, r->sources_env, NULL };
    if (start_joiner(r, sink_args, sink_env, ROLE_SINK, p->nstages, "sink") != 0)
        return -1;
    char *env[] = { r->stream_env, r->onerr_env, r->key_env, r->run_env, NULL };
    char *enclave_env[] = { r->stream_env, r->onerr_env, r->key_env, r->run_env, r->enclave_env, NULL };
    for (int i = p->nstages - 1; i >= 0; i--) {
        const ss_plan_stage *st = &p->stages[i];
        for (int w = 0; w < st->workers; w++) {
            char name[64], pos[16];
            snprintf(name, sizeof name, "%s#%d", st->name, w + 1);
            snprintf(pos, sizeof pos, "%d", i + 1);
            char *args[14 + 2 * SS_MAX_STAGES] = {
                (char *)"securestreams", (char *)"worker", (char *)"--from", r->endpoints[i][1],
                (char *)"--to", r->endpoints[i + 1][0], (char *)"--script", (char *)st->scripts[0],
                (char *)"--name", name, (char *)"--stage", (char *)st->name, (char *)"--pos", pos };
            for (int k = 1, a = 14; k < st->nscripts; k++) {
                args[a++] = (char *)"--script";
                args[a++] = (char *)st->scripts[k];
            }
            if (start_joiner(r, args, st->enclave ? enclave_env : env, ROLE_WORKER, i, name) != 0)
                return -1;
            r->live[i]++;
        }
    }
    return 0;
}

/* Wait until the sink and every worker said ready; the source starts only
 * then, so no router can finish before a slow starter has arrived. */
static int await_ready(run_t *r)
{
    for (int i = 0; i < r->nready; i++) {
        char line[64];
        if (read_line(r->ready[i], line, sizeof line) != 0) {
            for (int k = i + 1; k < r->nready; k++)
                close(r->ready[k]);
            return ss_cli_fail(r->cli, SS_EXIT_ERROR, "%s did not start (see its message above)",
                               r->ready_kid[i]->name);
        }
    }
    return 0;
}

static int start_source(run_t *r)
{
    const ss_plan *p = &r->plan;
    char bb[24];
    snprintf(bb, sizeof bb, "%ld", p->batch_bytes);
    char *args[] = { (char *)"securestreams", (char *)"source", (char *)"--to",
                     r->endpoints[0][0], (char *)"--input", (char *)p->input,
                     p->header ? (char *)"--header" : (char *)"--no-header",
                     (char *)"--batch-bytes", bb, NULL };
    char *env[] = { r->stream_env, r->onerr_env, r->key_env, r->run_env, NULL };
    pid_t pid = spawn(r, args, env, NULL);
    if (pid < 0)
        return ss_cli_fail(r->cli, SS_EXIT_ERROR, "cannot start a component: %s", strerror(errno));
    add_child(r, pid, ROLE_SOURCE, -1, "source");
    return 0;
}

/* A child ended with status: the run's exit status once that ends the run,
 * or -1 when it goes on. */
static int child_ended(run_t *r, child_t *k, int status, int sink_done)
{
    char why[128];
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return k->role == ROLE_SINK ? SS_EXIT_OK : -1;
    if (k->role == ROLE_WORKER && WIFSIGNALED(status) && !sink_done) {
        const char *stage = r->plan.stages[k->stage].name;
        r->live[k->stage]--;
        ss_log("%s %s; its unfinished batches go to the other workers of stage %s",
               k->name, describe_status(status, why, sizeof why), stage);
        if (r->live[k->stage] > 0)
            return -1;
        ss_log("error: stage %s has no workers left", stage);
    } else {
        ss_log("error: %s %s", k->name, describe_status(status, why, sizeof why));
    }
    if (WIFEXITED(status) && (WEXITSTATUS(status) == SS_EXIT_POLICY ||
                              WEXITSTATUS(status) == SS_EXIT_INCOMPLETE))
        return WEXITSTATUS(status);
    return SS_EXIT_ERROR;
}

/* Reap children until the sink has finished and the others have ended (or
 * overstayed SINK_GRACE_MS), a failure ends the run, or a signal comes. */
static int supervise(run_t *r)
{
    int sink_done = 0, rc = SS_EXIT_ERROR;
    int64_t grace_deadline = 0;
    for (;;) {
        if (interrupted) {
            ss_cli_fail(r->cli, SS_EXIT_INTERRUPTED, "interrupted, stopping every component");
            terminate_all(r);
            return SS_EXIT_INTERRUPTED;
        }
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, sink_done ? WNOHANG : 0, &ru);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            return rc; /* no children left */
        if (pid == 0) {
            if (ss_now_ms() > grace_deadline) {
                for (int i = 0; i < r->nkids; i++)
                    if (!r->kids[i].done)
                        ss_log("%s still running after the sink finished; stopping it", r->kids[i].name);
                terminate_all(r);
                return rc;
            }
            usleep(20000);
            continue;
        }
        child_t *k = NULL;
        for (int i = 0; i < r->nkids; i++)
            if (r->kids[i].pid == pid)
                k = &r->kids[i];
        if (!k)
            continue;
        k->done = 1;
        k->cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        k->max_rss_kb = ru.ru_maxrss;
        int ended = child_ended(r, k, status, sink_done);
        if (ended == SS_EXIT_OK) {
            sink_done = 1;
            rc = SS_EXIT_OK;
            grace_deadline = ss_now_ms() + SINK_GRACE_MS;
        } else if (ended > 0) {
            terminate_all(r);
            return ended;
        }
    }
}

/* --verbose: each component's CPU time and peak memory. */
static void print_resources(const run_t *r)
{
    fprintf(stderr, "  %-16s %10s %12s\n", "component", "cpu s", "max rss KiB");
    for (int i = 0; i < r->nkids; i++)
        fprintf(stderr, "  %-16s %10.2f %12ld\n", r->kids[i].name, r->kids[i].cpu, r->kids[i].max_rss_kb);
}

/* Resolve the plan, start every component, supervise them. */
static int run(const ss_cli *cli, run_args *a)
{
    ss_log_init("run");
    run_t *r = calloc(1, sizeof *r);
    if (!r)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "out of memory");
    r->cli = cli;
    char err[1024];
    a->o.stream = (uint32_t)(ss_random_id() & 0xffffffffu);
    ss_err e = ss_plan_resolve(a->spec, &a->o, &r->plan, err, sizeof err);
    int rc;
    if (e != SS_OK) {
        rc = ss_cli_fail(cli, e == SS_ERR_USAGE ? SS_EXIT_USAGE : SS_EXIT_ERROR, "%s", err);
        goto out;
    }
    ssize_t n = readlink("/proc/self/exe", r->self_exe, sizeof r->self_exe - 1);
    if (n <= 0) {
        rc = ss_cli_fail(cli, SS_EXIT_ERROR, "cannot find my own executable");
        goto out;
    }
    r->self_exe[n] = '\0';
    struct sigaction sa = { 0 };
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    set_environment(r, a);
    if (start_routers(r) != 0 || start_sink_and_workers(r) != 0 || await_ready(r) != 0 ||
        start_source(r) != 0) {
        terminate_all(r);
        rc = SS_EXIT_ERROR;
        goto out;
    }
    rc = supervise(r);
    if (rc == SS_EXIT_OK && a->verbose)
        print_resources(r);
out:
    ss_plan_cleanup(&r->plan);
    free(r);
    return rc;
}

/*
 * securestreams run SPEC [options]; argv[0] is "run". Exit status: 0 done
 * (or --help), 1 a component failed or a file cannot be read, 2 usage or
 * spec error, 3 a bad record under on_error = fail, 4 the result is
 * incomplete, 130 interrupted.
 */
int ss_cmd_run(int argc, char **argv)
{
    run_args a = { 0 };
    const char *args[1];
    const ss_opt opts[] = {
        { "--input", 0, SS_OPT_STRING, &a.o.input, "FILE", "read this file instead of the spec's source.file" },
        { "--workers", 0, SS_OPT_STRING, &a.o.workers, "N|A,B,C",
          "workers per stage (one number for all stages, or one per stage)" },
        { "--security", 0, SS_OPT_STRING, &a.o.security, "MODE",
          "plain; encrypted (every batch sealed; needs --key); enclave\n"
          "(encrypted, and every stage's code in an enclave)" },
        { "--enclave-backend", 0, SS_OPT_CHOICE, &a.o.enclave_backend, "B",
          "isolated (default: a seccomp-locked child) or inprocess", .choices = local_backends },
        { "--fuse", 0, SS_OPT_FLAG, &a.o.fuse, NULL,
          "run all stages in each worker, in order (one stage of\nworkers, no routers between the stages)",
          .value = 1 },
        { "--key", 0, SS_OPT_STRING, &a.o.key, "FILE", "the data key (securestreams keygen -o FILE)" },
        { "--on-error", 0, SS_OPT_CHOICE, &a.o.on_error, "skip|fail",
          "skip and count bad records (default), or stop the run", .choices = ss_plan_on_errors },
        { "--summary-json", 0, SS_OPT_STRING, &a.summary, "FILE", "also write the summary as JSON" },
        { "--verbose", 0, SS_OPT_FLAG, &a.verbose, NULL,
          "print each component's CPU time and peak memory at the end", .value = 1 },
        { NULL },
    };
    const ss_cli cli = {
        .name = "run", .synopsis = "SPEC [options]", .opts = opts,
        .about = "Start every component of the pipeline described in SPEC as local processes,\n"
                 "print the sink's output, and exit 0 once the whole stream is processed.",
        .epilogue = "Exit status: 0 done, 1 a component failed or a file cannot be read, 2 usage\n"
                    "or spec error, 3 stopped by --on-error fail, 4 result incomplete, 130 interrupted.",
        .min_args = 1, .max_args = 1,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)args, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    a.spec = args[0];
    return run(&cli, &a);
}
