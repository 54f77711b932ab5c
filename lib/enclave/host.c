/*
 * host.c - the enclave handle (enclave.h): its options, its two backends
 * and the calls, on the host's side.
 *
 * `inprocess` holds a core (core.h) and calls it directly. `isolated` holds
 * a child: ss_enclave_new creates the channel (channel.h), lays the
 * start-up request in it, forks, and the child execs this very program
 * (`securestreams enclave-child`, child.c) with the doorbell as fd 3 and the
 * channel's memfd as fd 4; the constructor returns once the child answered
 * the start-up request (ready, or the error it met) or failed to exec (its
 * errno over a close-on-exec pipe). A call is one round trip: the request
 * and input in the shared memory, `posted` bumped, the doorbell rung if
 * the child sleeps, then a wait for `answered`.
 *
 * Invariants: the host trusts nothing the child writes back: a reply is
 * copied out of the shared memory before it is read, and every length in
 * it is checked against its area; a child that answers impossible sizes or
 * stops answering is killed and reaped, and every later call says
 * SS_ERR_CLOSED. Shutdown is the stop message (SS_OP_QUIT), then waitpid.
 */
#include "enclave/enclave.h"

#include "enclave/channel.h"
#include "enclave/core.h"
#include "crypto/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_HEAP ((size_t)64 << 20)
#define DEFAULT_BUDGET 1000u       /* CPU milliseconds per record */
#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 2000

struct ss_enclave {
    int isolated;
    int stateful;
    char measurement[65];
    ss_core_t *core;                    /* inprocess */
    ss_channel_reply rep;               /* inprocess: the last reply */
    /* isolated */
    pid_t pid;
    int sock;                           /* our end of the doorbell */
    ss_channel ch;
    int dead;                           /* the child is gone (reaped) */
    ss_spinner spin;
};

int ss_enclave_stateful(const ss_enclave_t *e)
{
    return e->stateful;
}

const char *ss_enclave_backend(const ss_enclave_t *e)
{
    return e->isolated ? "isolated" : "inprocess";
}

int ss_enclave_spinning(const ss_enclave_t *e)
{
    return e->spin.enabled;
}

int ss_enclave_pid(const ss_enclave_t *e)
{
    return e->isolated ? (int)e->pid : 0;
}

const char *ss_enclave_measurement(const ss_enclave_t *e)
{
    return e->measurement;
}

/* ---- options ----------------------------------------------------------------- */

ss_err ss_enclave_opts_init(ss_enclave_opts *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->backend = "isolated";
    return ss_stream_from_env(&o->stream, err, errlen);
}

/* SS_ENCLAVE_BUDGET: CPU time, "500" or "500ms" (milliseconds) or "2s",
 * "1.5s" (seconds). A checked strtod, not ss_parse_u64: seconds may have
 * decimals. */
static int parse_ms(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0))
        return -1;
    if (!strcmp(end, "s"))
        v *= 1000;
    else if (*end && strcmp(end, "ms"))
        return -1;
    if (v > SS_CORE_MAX_BUDGET || v != (double)(uint64_t)v)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* The heap and the budget: the options', else the environment's, else the
 * defaults; SS_ERR_USAGE when out of bounds or malformed. */
static ss_err resolve(const ss_enclave_opts *o, size_t *heap, uint64_t *budget, char *err,
                      size_t errlen)
{
    const char *s;
    *heap = o->heap_bytes;
    uint64_t h;
    if (*heap == 0 && (s = getenv("SS_ENCLAVE_HEAP")) && *s) {
        if (ss_parse_u64(s, 10, SS_NUM_BYTES, SS_CORE_MAX_HEAP, &h) != 0) {
            ss_say(err, errlen, "SS_ENCLAVE_HEAP=%s: expected bytes, or a number with K, M or G", s);
            return SS_ERR_USAGE;
        }
        *heap = (size_t)h;
    }
    if (*heap == 0)
        *heap = DEFAULT_HEAP;
    if (*heap < SS_CORE_MIN_HEAP || *heap > SS_CORE_MAX_HEAP) {
        ss_say(err, errlen, "enclave heap of %zu bytes: expected 1 MiB to 1 TiB", *heap);
        return SS_ERR_USAGE;
    }
    *budget = o->budget_ms;
    if (*budget == 0 && (s = getenv("SS_ENCLAVE_BUDGET")) && *s && parse_ms(s, budget) != 0) {
        ss_say(err, errlen, "SS_ENCLAVE_BUDGET=%s: expected CPU time per record, like 500ms or 2s", s);
        return SS_ERR_USAGE;
    }
    if (*budget == 0)
        *budget = DEFAULT_BUDGET;
    if (*budget < SS_CORE_MIN_BUDGET || *budget > SS_CORE_MAX_BUDGET) {
        ss_say(err, errlen, "enclave budget of %llu ms: expected %u ms to %u ms (a day)",
               (unsigned long long)*budget, SS_CORE_MIN_BUDGET, SS_CORE_MAX_BUDGET);
        return SS_ERR_USAGE;
    }
    return SS_OK;
}

/* ---- calls ------------------------------------------------------------------- */

static void reap(ss_enclave_t *e)
{
    if (e->dead || e->pid <= 0)
        return;
    while (waitpid(e->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    e->dead = 1;
}

/* One request: posted, answered. SS_ERR_CLOSED when the child is gone. */
static ss_err roundtrip(ss_enclave_t *e)
{
    if (e->dead)
        return SS_ERR_CLOSED;
    ss_channel_ctl *ctl = e->ch.ctl;
    uint64_t want = atomic_load(&ctl->posted) + 1;
    atomic_store(&ctl->posted, want);
    if (ss_channel_ring(e->sock, &ctl->enclave_waiting, 1) != 0
        || ss_channel_await(e->sock, &e->spin, &ctl->answered, want, &ctl->host_waiting) != 0) {
        kill(e->pid, SIGKILL);
        reap(e);
        return SS_ERR_CLOSED;
    }
    return SS_OK;
}

/* Copy the child's reply into r, checking every length against its area
 * (on a private copy: the shared one could change between check and use). */
static ss_err take_reply(ss_enclave_t *e, const ss_channel_reply *shared, const uint8_t *area,
                         ss_ecall_result *r)
{
    ss_channel_reply copy;
    memcpy(&copy, shared, sizeof copy);
    const ss_channel_reply *rep = &copy;
    r->has_output = 0;
    r->in = rep->in;
    r->out = rep->out;
    r->skipped = rep->skipped;
    r->rejected = rep->rejected;
    r->refused = rep->refused;
    r->foreign = rep->foreign;
    memcpy(r->message, rep->message, sizeof r->message);
    r->message[sizeof r->message - 1] = 0;
    if (rep->has_output) {
        if (rep->lineage_len > SS_CHANNEL_AREA_BYTES || rep->payload_len > SS_CHANNEL_AREA_BYTES
            || SS_HEADER_SIZE + rep->lineage_len + rep->payload_len > SS_CHANNEL_AREA_BYTES) {
            snprintf(r->message, sizeof r->message, "the enclave answered with impossible sizes");
            if (e->isolated) {
                kill(e->pid, SIGKILL);
                reap(e);
            }
            return SS_ERR_CLOSED;
        }
        r->has_output = 1;
        r->header = area;
        r->lineage = area + SS_HEADER_SIZE;
        r->lineage_len = rep->lineage_len;
        r->payload = area + SS_HEADER_SIZE + rep->lineage_len;
        r->payload_len = rep->payload_len;
    }
    if (rep->status < SS_OK || rep->status >= SS_ERR__COUNT)
        return SS_ERR_CLOSED;
    return (ss_err)rep->status;
}

/* The inprocess backend's output: header and lineage at the core's head,
 * payload in its buffer. */
static ss_err inprocess_result(ss_enclave_t *e, ss_ecall_result *r, ss_err rc)
{
    ss_channel_reply *rep = &e->rep;
    rep->status = rc;
    ss_err st = take_reply(e, rep, ss_core_head(e->core), r);
    if (r->has_output)
        r->payload = ss_core_buffer(e->core);
    return st;
}

static void clear_result(ss_ecall_result *r)
{
    memset(r, 0, sizeof *r);
}

ss_err ss_enclave_batch(ss_enclave_t *e, const uint8_t *header, const uint8_t *lineage,
                        size_t lineage_len, const uint8_t *payload, size_t payload_len,
                        uint64_t seq, int redelivered, ss_ecall_result *r)
{
    clear_result(r);
    if (lineage_len > SS_CHANNEL_AREA_BYTES || payload_len > SS_CHANNEL_AREA_BYTES
        || SS_HEADER_SIZE + lineage_len + payload_len > SS_CHANNEL_AREA_BYTES) {
        snprintf(r->message, sizeof r->message, "a message of %zu bytes exceeds the %u-byte limit",
                 SS_HEADER_SIZE + lineage_len + payload_len, SS_MAX_MESSAGE);
        return SS_ERR_TOOBIG;
    }
    if (!e->isolated) {
        memset(&e->rep, 0, sizeof e->rep);
        ss_err rc = ss_core_batch(e->core, header, lineage, lineage_len, payload, payload_len, seq,
                                  redelivered, &e->rep);
        return inprocess_result(e, r, rc);
    }
    if (e->dead)
        return SS_ERR_CLOSED;
    uint8_t *in = e->ch.in;
    memcpy(in, header, SS_HEADER_SIZE);
    if (lineage_len)
        memcpy(in + SS_HEADER_SIZE, lineage, lineage_len);
    if (payload_len)
        memcpy(in + SS_HEADER_SIZE + lineage_len, payload, payload_len);
    ss_channel_request *req = &e->ch.ctl->req;
    req->op = SS_OP_BATCH;
    req->seq = seq;
    req->redelivered = redelivered != 0;
    req->lineage_len = lineage_len;
    req->payload_len = payload_len;
    ss_err rc = roundtrip(e);
    if (rc != SS_OK)
        return rc;
    return take_reply(e, &e->ch.ctl->rep, e->ch.out, r);
}

ss_err ss_enclave_flush(ss_enclave_t *e, uint64_t seq, ss_ecall_result *r)
{
    clear_result(r);
    if (!e->isolated) {
        memset(&e->rep, 0, sizeof e->rep);
        return inprocess_result(e, r, ss_core_flush(e->core, seq, &e->rep));
    }
    e->ch.ctl->req.op = SS_OP_FLUSH;
    e->ch.ctl->req.seq = seq;
    ss_err rc = roundtrip(e);
    if (rc != SS_OK)
        return rc;
    return take_reply(e, &e->ch.ctl->rep, e->ch.out, r);
}

ss_err ss_enclave_finish(ss_enclave_t *e, const char *id, uint64_t seq, const uint8_t **record,
                         size_t *len)
{
    *record = NULL;
    *len = 0;
    if (strlen(id) >= sizeof e->ch.ctl->req.id)
        return SS_ERR_TOOBIG;
    ss_channel_reply copy, *rep;
    const uint8_t *area;
    if (!e->isolated) {
        rep = &e->rep;
        memset(rep, 0, sizeof *rep);
        rep->status = ss_core_finish(e->core, id, seq, rep);
        area = ss_core_buffer(e->core);
    } else {
        snprintf(e->ch.ctl->req.id, sizeof e->ch.ctl->req.id, "%s", id);
        e->ch.ctl->req.op = SS_OP_FINISH;
        e->ch.ctl->req.seq = seq;
        ss_err rc = roundtrip(e);
        if (rc != SS_OK)
            return rc;
        memcpy(&copy, &e->ch.ctl->rep, sizeof copy);
        rep = &copy;
        area = e->ch.out;
    }
    if (rep->status != SS_OK)
        return rep->status > SS_OK && rep->status < SS_ERR__COUNT ? (ss_err)rep->status : SS_ERR_CLOSED;
    if (rep->payload_len > SS_CHANNEL_AREA_BYTES)
        return SS_ERR_CLOSED;
    *record = area;
    *len = rep->payload_len;
    return SS_OK;
}

ss_err ss_enclave_ping(ss_enclave_t *e)
{
    if (!e->isolated)
        return ss_core_ping(e->core, &e->rep);
    e->ch.ctl->req.op = SS_OP_PING;
    ss_err rc = roundtrip(e);
    return rc != SS_OK ? rc : (ss_err)e->ch.ctl->rep.status;
}

/* The stop message, then wait (at most STOP_TIMEOUT_MS) for the child to
 * go (EOF on the doorbell); killed if it does not. Reaped either way. */
static void stop_child(ss_enclave_t *e)
{
    e->ch.ctl->req.op = SS_OP_QUIT;
    atomic_store(&e->ch.ctl->posted, atomic_load(&e->ch.ctl->posted) + 1);
    int gone = 0;
    if (ss_channel_ring(e->sock, &e->ch.ctl->enclave_waiting, 1) == 0) {
        struct pollfd p = { .fd = e->sock, .events = POLLIN };
        int64_t until = ss_now_ms() + STOP_TIMEOUT_MS;
        char b;
        while (!gone) {
            int64_t left = until - ss_now_ms();
            if (left <= 0 || poll(&p, 1, (int)left) <= 0)
                break;
            ssize_t n = recv(e->sock, &b, 1, 0);
            gone = n == 0 || (n < 0 && errno != EINTR);
        }
    }
    if (!gone)
        kill(e->pid, SIGKILL);
    reap(e);
}

void ss_enclave_destroy(ss_enclave_t **ep)
{
    if (!ep || !*ep)
        return;
    ss_enclave_t *e = *ep;
    ss_core_destroy(&e->core);
    if (e->isolated && e->pid > 0 && !e->dead)
        stop_child(e);
    ss_channel_detach(&e->ch);
    if (e->sock >= 0)
        close(e->sock);
    free(e);
    *ep = NULL;
}

/* ---- start-up ------------------------------------------------------------------ */

static ss_err new_inprocess(ss_enclave_t *e, const ss_core_opts *co, char *err, size_t errlen)
{
    ss_err rc = ss_core_prepare(co, &e->core, err, errlen);
    if (rc == SS_OK)
        rc = ss_core_start(e->core, err, errlen);
    if (rc != SS_OK)
        return rc;
    e->stateful = ss_core_stateful(e->core);
    memcpy(e->measurement, ss_core_measurement(e->core), sizeof e->measurement);
    return SS_OK;
}

/* The shared memory, and whether both sides may spin. *mem gets the memfd
 * (or -1), which the caller closes. */
static ss_err make_channel(ss_enclave_t *e, int *mem, char *err, size_t errlen)
{
    ss_err rc = ss_channel_create(&e->ch, mem, err, errlen);
    if (rc != SS_OK)
        return rc;
    e->spin.enabled = ss_channel_spin_allowed();
    e->ch.ctl->spin = (uint32_t)e->spin.enabled;
    return SS_OK;
}

/* Lay the start-up request out in the in area, for the child to find. */
static ss_err put_init(ss_enclave_t *e, const ss_core_opts *co, char *err, size_t errlen)
{
    ss_channel_init w = {
        .heap = co->heap, .budget_ms = co->budget_ms, .producer = co->producer, .stream = co->stream,
        .fail = (uint32_t)(co->fail != 0), .pos = (uint32_t)co->pos, .is_code = (uint32_t)co->is_code,
        .run_given = (uint32_t)(co->run_given != 0),
    };
    memcpy(w.run, co->run, SS_RUN_BYTES);
    const char *s[SS_INIT_COUNT] = { co->code, co->code_name, co->key_file, co->stage, co->name };
    uint8_t *in = e->ch.in;
    size_t at = sizeof w;
    for (int i = 0; i < SS_INIT_COUNT; i++) {
        size_t n = s[i] ? strlen(s[i]) : 0;
        if (n + 1 > SS_CHANNEL_AREA_BYTES - at) {
            ss_say(err, errlen, "the stage code is too large (%zu bytes)", n);
            return SS_ERR_TOOBIG;
        }
        w.off[i] = (uint32_t)at;
        w.len[i] = (uint32_t)n;
        if (n)
            memcpy(in + at, s[i], n);
        in[at + n] = 0;
        at += n + 1;
    }
    memcpy(in, &w, sizeof w);
    e->ch.ctl->req.op = SS_OP_INIT;
    return SS_OK;
}

extern char **environ;

static int fd_high(int fd)
{
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    close(fd);
    return h;
}

/* In the child between fork and exec: async-signal-safe calls only (the
 * host may have threads). The doorbell becomes fd 3, the memory fd 4; an
 * errno that stops the exec goes to errpipe. */
static _Noreturn void exec_child(const char *program, int bell, int mem, int errpipe)
{
    char *const argv[] = { (char *)"securestreams", (char *)"enclave-child", (char *)"--doorbell",
                           (char *)"3", (char *)"--memory", (char *)"4", NULL };
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(bell, SS_CHANNEL_DOORBELL) < 0 || dup2(mem, SS_CHANNEL_MEMORY) < 0) {
        int en = errno;
        (void)!write(errpipe, &en, sizeof en);
        _exit(127);
    }
    close_range(SS_CHANNEL_MEMORY + 1, ~0U, CLOSE_RANGE_CLOEXEC);
    execve(program, argv, environ);
    int en = errno;
    (void)!write(errpipe, &en, sizeof en);
    _exit(127);
}

/* Fork and exec the child with the doorbell and the memory (*mem, closed
 * here once passed on). SS_OK once the exec happened; SS_ERR_IO with the
 * reason when the descriptors, the fork or the exec failed. */
static ss_err spawn(ss_enclave_t *e, const char *program, int *mem, char *err, size_t errlen)
{
    int sv[2] = { -1, -1 }, ep[2] = { -1, -1 };
    ss_err rc = SS_ERR_IO;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 || pipe2(ep, O_CLOEXEC) != 0) {
        int en = errno;
        ss_say(err, errlen, "cannot create the enclave's doorbell: %s", strerror(en));
        goto out;
    }
    /* out of the way of 3 and 4, so the child's dup2s cannot collide */
    if ((sv[1] = fd_high(sv[1])) < 0 || (*mem = fd_high(*mem)) < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot move descriptors: %s", strerror(en));
        goto out;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot fork the enclave: %s", strerror(en));
        goto out;
    }
    if (pid == 0)
        exec_child(program, sv[1], *mem, ep[1]);
    e->pid = pid;
    close(ep[1]);
    ep[1] = -1;
    close(sv[1]);
    sv[1] = -1;
    close(*mem);
    *mem = -1;
    e->sock = sv[0];
    sv[0] = -1;

    int child_errno = 0;
    ssize_t n;
    while ((n = read(ep[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR)
        ;
    if (n > 0) {
        ss_say(err, errlen, "cannot start the enclave program %s: %s", program, strerror(child_errno));
        reap(e);
        goto out;
    }
    rc = SS_OK;
out:
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0)
            close(sv[i]);
        if (ep[i] >= 0)
            close(ep[i]);
    }
    return rc;
}

/* The child's answer to the start-up request: ready (stateful or not, its
 * measurement) or the error it met, which is ours. */
static ss_err read_ready(ss_enclave_t *e, char *err, size_t errlen)
{
    ss_channel_reply copy;   /* the child could change the shared one as we read it */
    memcpy(&copy, &e->ch.ctl->rep, sizeof copy);
    ss_channel_reply *rep = &copy;
    rep->message[sizeof rep->message - 1] = 0;
    rep->measurement[sizeof rep->measurement - 1] = 0;
    if (rep->status != SS_OK) {
        ss_say(err, errlen, "%s", rep->message);
        ss_err rc = rep->status > SS_OK && rep->status < SS_ERR__COUNT ? (ss_err)rep->status : SS_ERR_IO;
        if (!e->dead) {
            kill(e->pid, SIGKILL);
            reap(e);
        }
        return rc;
    }
    e->stateful = rep->stateful != 0;
    memcpy(e->measurement, rep->measurement, sizeof e->measurement);
    return SS_OK;
}

/* The handshake: post the start-up request and wait, at most
 * START_TIMEOUT_MS, for the child's answer. SS_ERR_TIMEOUT (the child is
 * killed), SS_ERR_IO when it died without answering, else as read_ready. */
static ss_err await_ready(ss_enclave_t *e, char *err, size_t errlen)
{
    ss_channel_ctl *ctl = e->ch.ctl;
    uint64_t want = 1;
    atomic_store(&ctl->posted, want);
    struct pollfd p = { .fd = e->sock, .events = POLLIN };
    int64_t until = ss_now_ms() + START_TIMEOUT_MS;
    while (atomic_load(&ctl->answered) < want) {
        atomic_store(&ctl->host_waiting, 1);
        if (atomic_load(&ctl->answered) >= want)
            break;
        int64_t left = until - ss_now_ms();
        int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0) {
            ss_say(err, errlen, "the enclave did not get ready within %d s", START_TIMEOUT_MS / 1000);
            kill(e->pid, SIGKILL);
            reap(e);
            return SS_ERR_TIMEOUT;
        }
        char b;
        ssize_t n = recv(e->sock, &b, 1, 0);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            int status = 0;
            while (waitpid(e->pid, &status, 0) < 0 && errno == EINTR)
                ;
            e->dead = 1;
            if (atomic_load(&ctl->answered) >= want && ctl->rep.status != SS_OK)
                break;
            if (WIFSIGNALED(status))
                ss_say(err, errlen, "the enclave died during start-up (signal %d)", WTERMSIG(status));
            else
                ss_say(err, errlen, "the enclave exited during start-up (status %d)", WEXITSTATUS(status));
            return SS_ERR_IO;
        }
    }
    atomic_store(&ctl->host_waiting, 0);
    return read_ready(e, err, errlen);
}

static ss_err new_isolated(ss_enclave_t *e, const ss_enclave_opts *o, const ss_core_opts *co,
                           char *err, size_t errlen)
{
    const char *program = o->program && *o->program ? o->program : "/proc/self/exe";
    int mem = -1;
    ss_err rc = make_channel(e, &mem, err, errlen);
    if (rc == SS_OK)
        rc = put_init(e, co, err, errlen);
    if (rc == SS_OK)
        rc = spawn(e, program, &mem, err, errlen);
    if (mem >= 0)
        close(mem);
    if (rc == SS_OK)
        rc = await_ready(e, err, errlen);
    return rc;
}

ss_err ss_enclave_new(const ss_enclave_opts *o, ss_enclave_t **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_say(err, errlen, "%s", "");
    const char *backend = o->backend && *o->backend ? o->backend : "isolated";
    int isolated = !strcmp(backend, "isolated");
    if (!isolated && strcmp(backend, "inprocess") != 0) {
        ss_say(err, errlen, "enclave backend \"%s\": expected \"isolated\" or \"inprocess\"%s", backend,
               !strcmp(backend, "sgx") ? " (sgx is planned, not available here)" : "");
        return SS_ERR_USAGE;
    }
    if ((o->script != NULL) == (o->code != NULL)) {
        ss_say(err, errlen, "an enclave needs either a stage script or stage code");
        return SS_ERR_USAGE;
    }
    ss_core_opts co = {
        .code = o->script ? o->script : o->code, .is_code = o->code != NULL,
        .code_name = o->code_name, .key_file = o->key_file, .stage = o->stage, .name = o->name,
        .fail = o->fail_on_error, .pos = o->pos, .producer = o->producer, .stream = o->stream,
        .run_given = o->run != NULL,
    };
    if (o->run)
        memcpy(co.run, o->run, SS_RUN_BYTES);
    ss_err rc = resolve(o, &co.heap, &co.budget_ms, err, errlen);
    if (rc != SS_OK)
        return rc;
    if (ss_crypto_init() != SS_OK) {
        ss_say(err, errlen, "cannot start libsodium (or SS_CIPHER is wrong)");
        return SS_ERR_CRYPTO;
    }
    ss_enclave_t *e = calloc(1, sizeof *e);
    if (!e) {
        ss_say(err, errlen, "out of memory");
        return SS_ERR_NOMEM;
    }
    e->sock = -1;
    e->isolated = isolated;
    rc = isolated ? new_isolated(e, o, &co, err, errlen) : new_inprocess(e, &co, err, errlen);
    if (rc != SS_OK) {
        ss_enclave_destroy(&e);
        return rc;
    }
    *out = e;
    return SS_OK;
}
