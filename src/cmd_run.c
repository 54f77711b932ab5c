/*
 * pipeline.c - the `run` command.
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
#include "cli.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "pipeline/spec.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHILDREN (SS_MAX_STAGES * SS_MAX_WORKERS + SS_MAX_STAGES + 8)

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

typedef struct {
    child_t kids[MAX_CHILDREN];
    int nkids;
    char endpoints[SS_MAX_STAGES + 1][2][256]; /* per router: frontend, backend */
    int live[SS_MAX_STAGES];                    /* live workers per stage */
} run_t;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

static char self_exe[4096];

/* fork + exec ourselves with argv; env entries "K=V" set in the child. If
 * ready_fd is non-NULL, a pipe's write end is passed as --ready-fd. */
static pid_t spawn(char *const argv[], char *const env[], int *ready_fd)
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
        execv(self_exe, args);
        fprintf(stderr, "securestreams run: cannot start %s: %s\n", self_exe, strerror(errno));
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

static void usage(FILE *f)
{
    fprintf(f,
            "usage: securestreams run SPEC [options]\n"
            "Start every component of the pipeline described in SPEC as local processes,\n"
            "print the sink's output, and exit 0 once the whole stream is processed.\n"
            "  --input FILE          read this file instead of the spec's source.file\n"
            "  --workers N|A,B,C     workers per stage (one number for all stages, or one per stage)\n"
            "  --security MODE       plain; encrypted (every batch sealed; needs --key); enclave\n"
            "                        (encrypted, and every stage's code in an enclave)\n"
            "  --enclave-backend B   isolated (default: a seccomp-locked child) or inprocess\n"
            "  --fuse                run all stages in each worker, in order (one stage of\n"
            "                        workers, no routers between the stages)\n"
            "  --key FILE            the data key (securestreams keygen -o FILE)\n"
            "  --on-error skip|fail  skip and count bad records (default), or stop the run\n"
            "  --summary-json FILE   also write the summary as JSON\n"
            "  --verbose             print each component's CPU time and peak memory at the end\n"
            "Exit status: 0 done, 1 a component failed, 2 usage, 3 stopped by --on-error fail,\n"
            "4 result incomplete, 130 interrupted.\n");
}

static int parse_workers(const char *arg, ss_spec *s, char *err, size_t errlen)
{
    int counts[SS_MAX_STAGES], n = 0;
    const char *p = arg;
    while (*p && n < SS_MAX_STAGES) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > SS_MAX_WORKERS) {
            snprintf(err, errlen, "--workers: expected numbers between 1 and %d, got '%s'", SS_MAX_WORKERS, arg);
            return -1;
        }
        counts[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') {
            snprintf(err, errlen, "--workers: unexpected '%s'", end);
            return -1;
        }
    }
    if (n != 1 && n != s->nstages) {
        snprintf(err, errlen, "--workers: %d counts given for %d stages", n, s->nstages);
        return -1;
    }
    for (int i = 0; i < s->nstages; i++)
        s->stages[i].workers = counts[n == 1 ? 0 : i];
    return 0;
}

int ss_cmd_run(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "input", required_argument, 0, 'i' }, { "workers", required_argument, 0, 'w' },
        { "security", required_argument, 0, 's' }, { "on-error", required_argument, 0, 'e' },
        { "summary-json", required_argument, 0, 'j' }, { "help", no_argument, 0, 'h' },
        { "verbose", no_argument, 0, 'v' }, { "key", required_argument, 0, 'k' },
        { "enclave-backend", required_argument, 0, 'B' }, { "fuse", no_argument, 0, 'F' },
        { 0, 0, 0, 0 } };
    const char *input = NULL, *workers = NULL, *security = NULL, *on_error = NULL, *summary = NULL;
    const char *keyfile = NULL, *enclave_backend = NULL;
    int c, verbose = 0, fuse = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'v': verbose = 1; break;
        case 'k': keyfile = optarg; break;
        case 'B': enclave_backend = optarg; break;
        case 'F': fuse = 1; break;
        case 'i': input = optarg; break;
        case 'w': workers = optarg; break;
        case 's': security = optarg; break;
        case 'e': on_error = optarg; break;
        case 'j': summary = optarg; break;
        case 'h': usage(stdout); return SS_EXIT_OK;
        default:
            fprintf(stderr, "securestreams run: unknown option %s\n", argv[optind - 1]);
            usage(stderr);
            return SS_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return SS_EXIT_USAGE;
    }
    ss_log_init("run");
    char err[1024];
    ss_spec spec;
    if (ss_spec_load(argv[optind], &spec, err, sizeof err) != SS_OK) {
        fprintf(stderr, "securestreams run: %s\n", err);
        return SS_EXIT_USAGE;
    }
    int rc = SS_EXIT_USAGE;
    run_t *r = calloc(1, sizeof *r);
    if (!r)
        goto out;
    if (fuse)
        spec.fuse = 1;
    if (spec.fuse)
        ss_spec_fuse(&spec);
    if (workers && parse_workers(workers, &spec, err, sizeof err) != 0) {
        fprintf(stderr, "securestreams run: %s\n", err);
        goto out;
    }
    if (input) {
        free(spec.input);
        spec.input = strdup(input);
    }
    if (on_error) {
        if (strcmp(on_error, "skip") && strcmp(on_error, "fail")) {
            fprintf(stderr, "securestreams run: --on-error: expected skip or fail\n");
            goto out;
        }
        free(spec.on_error);
        spec.on_error = strdup(on_error);
    }
    const char *mode = security ? security : spec.security;
    if (keyfile) {
        free(spec.key);
        spec.key = strdup(keyfile);
    }
    if (strcmp(mode, "plain") && strcmp(mode, "encrypted") && strcmp(mode, "enclave")) {
        fprintf(stderr, "securestreams run: unknown security mode '%s' (plain, encrypted or enclave)\n",
                mode);
        goto out;
    }
    int encrypted = strcmp(mode, "plain") != 0;
    for (int i = 0; i < spec.nstages; i++) {
        if (!strcmp(mode, "enclave"))
            spec.stages[i].enclave = 1;
        if (spec.stages[i].enclave && !encrypted) {
            fprintf(stderr, "securestreams run: stage %s runs in an enclave, which needs the encrypted "
                            "or enclave mode (--security encrypted --key FILE)\n", spec.stages[i].name);
            goto out;
        }
    }
    if (encrypted && !spec.key) {
        fprintf(stderr, "securestreams run: the %s mode needs a data key: --key FILE or key in "
                        "the spec (make one with: securestreams keygen -o FILE)\n", mode);
        goto out;
    }
    if (encrypted) {
        ss_key_t key;
        if (ss_crypto_init() != SS_OK || ss_key_load(&key, spec.key, err, sizeof err) != SS_OK) {
            fprintf(stderr, "securestreams run: %s\n", err);
            rc = SS_EXIT_ERROR;
            goto out;
        }
        ss_key_cleanup(&key); /* loaded only to check it: the components load their own */
    }
    if (!spec.input) {
        fprintf(stderr, "securestreams run: no input: give --input FILE or source.file in %s\n", spec.path);
        goto out;
    }
    if (access(spec.input, R_OK) != 0) {
        fprintf(stderr, "securestreams run: cannot read input %s: %s\n", spec.input, strerror(errno));
        rc = SS_EXIT_ERROR;
        goto out;
    }
    uint32_t stream_id = (uint32_t)(ss_random_id() & 0xffffffffu);
    int sealed_input = ss_sealed_file_probe(spec.input, &stream_id);
    if (sealed_input == 1 && !encrypted) {
        fprintf(stderr, "securestreams run: %s is a sealed file: run it with --security encrypted "
                        "--key FILE\n", spec.input);
        goto out;
    }
    for (int i = 0; i < spec.nstages; i++)
        if (access(spec.stages[i].script, R_OK) != 0) {
            fprintf(stderr, "securestreams run: stage %s: cannot read script %s: %s\n",
                    spec.stages[i].name, spec.stages[i].script, strerror(errno));
            goto out;
        }
    if (access(spec.sink_script, R_OK) != 0) {
        fprintf(stderr, "securestreams run: sink: cannot read script %s: %s\n", spec.sink_script,
                strerror(errno));
        goto out;
    }
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) {
        fprintf(stderr, "securestreams run: cannot find my own executable\n");
        rc = SS_EXIT_ERROR;
        goto out;
    }
    self_exe[n] = '\0';

    struct sigaction sa = { 0 };
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    char stream_env[48], onerr_env[48], summary_env[4200], key_env[4200];
    snprintf(stream_env, sizeof stream_env, "SS_STREAM=%u", (unsigned)stream_id);
    snprintf(key_env, sizeof key_env, "SS_KEY_FILE=%s", encrypted ? spec.key : "");
    snprintf(onerr_env, sizeof onerr_env, "SS_ON_ERROR=%s", spec.on_error);
    snprintf(summary_env, sizeof summary_env, "SS_SUMMARY_FILE=%s", summary ? summary : "");
    char enclave_env[64];
    snprintf(enclave_env, sizeof enclave_env, "SS_ENCLAVE=%s", enclave_backend ? enclave_backend : "isolated");
    /* Components say only what goes wrong unless --verbose. */
    if (!verbose)
        setenv("SS_LOG", "warn", 0);
    char *router_env[] = { stream_env, onerr_env, NULL };
    char *common_env[] = { stream_env, onerr_env, key_env, NULL };
    rc = SS_EXIT_ERROR;

    /* Routers: one before each stage and one before the sink. */
    for (int i = 0; i <= spec.nstages; i++) {
        char name[64];
        snprintf(name, sizeof name, "router%d", i);
        char *args[] = { (char *)"securestreams", (char *)"router", (char *)"--from",
                         (char *)"tcp://127.0.0.1:*", (char *)"--to", (char *)"tcp://127.0.0.1:*",
                         (char *)"--name", name, NULL };
        int fd;
        pid_t pid = spawn(args, router_env, &fd);
        if (pid < 0) {
            fprintf(stderr, "securestreams run: cannot start %s: %s\n", name, strerror(errno));
            goto fail;
        }
        add_child(r, pid, ROLE_ROUTER, i, name);
        if (read_ready(fd, r->endpoints[i][0], r->endpoints[i][1], sizeof r->endpoints[i][0]) != 0) {
            fprintf(stderr, "securestreams run: %s did not start (see its message above)\n", name);
            goto fail;
        }
    }
    /* Sink, workers (last stage first), source. */
    int ready[MAX_CHILDREN], nready = 0;
    child_t *ready_kid[MAX_CHILDREN];
    {
        char *args[] = { (char *)"securestreams", (char *)"sink", (char *)"--from",
                         r->endpoints[spec.nstages][1], (char *)"--script", spec.sink_script,
                         (char *)"--name", (char *)"sink", (char *)"--stage", (char *)"sink",
                         NULL };
        char *env[] = { stream_env, onerr_env, summary_env, key_env, NULL };
        pid_t pid = spawn(args, env, &ready[nready]);
        if (pid < 0)
            goto spawn_failed;
        ready_kid[nready++] = add_child(r, pid, ROLE_SINK, spec.nstages, "sink");
    }
    for (int i = spec.nstages - 1; i >= 0; i--) {
        for (int w = 0; w < spec.stages[i].workers; w++) {
            char name[64], pos[16];
            snprintf(name, sizeof name, "%s#%d", spec.stages[i].name, w + 1);
            snprintf(pos, sizeof pos, "%d", i + 1);
            char *args[16 + 2 * SS_MAX_STAGES] = {
                (char *)"securestreams", (char *)"worker", (char *)"--from", r->endpoints[i][1],
                (char *)"--to", r->endpoints[i + 1][0], (char *)"--script", spec.stages[i].script,
                (char *)"--name", name, (char *)"--stage", spec.stages[i].name, (char *)"--pos", pos };
            for (int k = 0, a = 14; k < spec.stages[i].nfused; k++) {
                args[a++] = (char *)"--script";
                args[a++] = spec.stages[i].fused[k];
            }
            char *env[] = { stream_env, onerr_env, key_env, enclave_env, NULL };
            pid_t pid = spawn(args, spec.stages[i].enclave ? env : common_env, &ready[nready]);
            if (pid < 0)
                goto spawn_failed;
            ready_kid[nready++] = add_child(r, pid, ROLE_WORKER, i, name);
            r->live[i]++;
        }
    }
    /* The source starts once every worker and the sink have joined, so no
     * router can finish before a slow starter has arrived. */
    for (int i = 0; i < nready; i++) {
        char line[64];
        if (read_line(ready[i], line, sizeof line) != 0) {
            fprintf(stderr, "securestreams run: %s did not start (see its message above)\n",
                    ready_kid[i]->name);
            for (int k = i + 1; k < nready; k++)
                close(ready[k]);
            goto fail;
        }
    }
    {
        char bb[24];
        snprintf(bb, sizeof bb, "%ld", spec.batch_bytes);
        char *args[] = { (char *)"securestreams", (char *)"source", (char *)"--to",
                         r->endpoints[0][0], (char *)"--input", spec.input,
                         spec.header ? (char *)"--header" : (char *)"--no-header",
                         (char *)"--batch-bytes", bb, NULL };
        pid_t pid = spawn(args, common_env, NULL);
        if (pid < 0)
            goto spawn_failed;
        add_child(r, pid, ROLE_SOURCE, -1, "source");
    }

    /* Supervise. */
    int sink_done = 0;
    int64_t grace_deadline = 0;
    for (;;) {
        if (interrupted) {
            fprintf(stderr, "securestreams run: interrupted, stopping every component\n");
            terminate_all(r);
            rc = 130;
            goto out;
        }
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, sink_done ? WNOHANG : 0, &ru);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break; /* no children left */
        }
        if (pid == 0) {
            if (ss_now_ms() > grace_deadline) {
                for (int i = 0; i < r->nkids; i++)
                    if (!r->kids[i].done)
                        ss_log("%s still running after the sink finished; stopping it", r->kids[i].name);
                terminate_all(r);
                break;
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
        char why[128];
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok) {
            if (k->role == ROLE_SINK) {
                sink_done = 1;
                rc = SS_EXIT_OK;
                grace_deadline = ss_now_ms() + 10000;
            }
            continue;
        }
        if (k->role == ROLE_WORKER && WIFSIGNALED(status) && !sink_done) {
            r->live[k->stage]--;
            ss_log("%s %s; its unfinished batches go to the other workers of stage %s",
                   k->name, describe_status(status, why, sizeof why), spec.stages[k->stage].name);
            if (r->live[k->stage] > 0)
                continue;
            ss_log("error: stage %s has no workers left", spec.stages[k->stage].name);
        } else {
            ss_log("error: %s %s", k->name, describe_status(status, why, sizeof why));
        }
        rc = SS_EXIT_ERROR;
        if (WIFEXITED(status) && (WEXITSTATUS(status) == SS_EXIT_POLICY ||
                                  WEXITSTATUS(status) == SS_EXIT_INCOMPLETE))
            rc = WEXITSTATUS(status);
        terminate_all(r);
        goto out;
    }
    if (rc == SS_EXIT_OK && verbose) {
        fprintf(stderr, "  %-16s %10s %12s\n", "component", "cpu s", "max rss KiB");
        for (int i = 0; i < r->nkids; i++)
            fprintf(stderr, "  %-16s %10.2f %12ld\n", r->kids[i].name, r->kids[i].cpu, r->kids[i].max_rss_kb);
    }
    goto out;
spawn_failed:
    fprintf(stderr, "securestreams run: cannot start a component: %s\n", strerror(errno));
fail:
    terminate_all(r);
    rc = SS_EXIT_ERROR;
out:
    free(r);
    ss_spec_cleanup(&spec);
    return rc;
}
