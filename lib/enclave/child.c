/*
 * child.c - the isolated enclave's process: `securestreams enclave-child
 * --doorbell 3 --memory 4`, exec'd by its host (host.c), serving a core
 * (core.h) over the channel (channel.h).
 *
 * In order: map the channel and copy the start-up request out of it; start
 * libsodium; fix the heap (Lua's bound plus half again for the allocator's
 * headers, plus SS_CORE_FIXED); prepare the core (key, buffers, Lua state,
 * code compiled, measurement); lock down (seccomp); start the core (run the
 * stage code); answer the start-up request. Then one request per doorbell
 * until the stop message or the host's end (EOF), and _exit.
 *
 * Invariants: after the lockdown the child makes no system call but read
 * and write on fd 3 (and the exits); everything it needs was allocated
 * before. A request and its input are copied out of the shared memory
 * before the core looks at them, and a reply is built in private memory
 * and published whole: the child never reads back what it wrote there.
 */
#include "enclave/enclave.h"

#include "enclave/channel.h"
#include "enclave/core.h"
#include "enclave/lsandbox.h"
#include "crypto/crypto.h"

#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Say that request n is answered; the host is gone if the ring fails. */
static void child_reply(ss_channel_ctl *ctl, uint64_t n)
{
    atomic_store(&ctl->answered, n);
    if (ss_channel_ring(SS_CHANNEL_DOORBELL, &ctl->host_waiting, 0) != 0)
        _exit(0);
}

/* Publish a reply made in private memory (the host may write the shared
 * one at any time, so the enclave never reads back what it put there). */
static void child_publish(ss_channel_ctl *ctl, const ss_channel_reply *rep)
{
    memcpy(&ctl->rep, rep, offsetof(ss_channel_reply, message));
    memcpy(ctl->rep.message, rep->message, strnlen(rep->message, sizeof rep->message - 1) + 1);
}

static const char *init_string(const uint8_t *area, const ss_channel_init *w, int i)
{
    if (w->off[i] < sizeof *w || w->off[i] >= SS_CHANNEL_AREA_BYTES
        || w->len[i] >= SS_CHANNEL_AREA_BYTES - w->off[i] || area[w->off[i] + w->len[i]] != 0)
        return NULL;
    return (const char *)area + w->off[i];
}

/* The start-up request, copied out before use (what is measured is what
 * runs): the core's options in co, its strings in strs (the caller wipes
 * and frees them). 0, or -1 when malformed. */
static int read_init(const uint8_t *in, ss_core_opts *co, char *strs[SS_INIT_COUNT])
{
    ss_channel_init w;
    memcpy(&w, in, sizeof w);
    *co = (ss_core_opts){
        .heap = (size_t)w.heap, .budget_ms = w.budget_ms, .producer = w.producer, .stream = w.stream,
        .fail = w.fail != 0, .pos = (int)w.pos, .is_code = w.is_code != 0,
        .run_given = w.run_given != 0,
    };
    memcpy(co->run, w.run, SS_RUN_BYTES);
    int ok = 1;
    for (int i = 0; i < SS_INIT_COUNT; i++) {
        const char *shared = init_string(in, &w, i);
        ok = ok && shared && (strs[i] = strndup(shared, w.len[i])) != NULL;
    }
    co->code = strs[SS_INIT_CODE];
    co->code_name = strs[SS_INIT_CODE_NAME];
    co->key_file = strs[SS_INIT_KEY_FILE];
    co->stage = strs[SS_INIT_STAGE];
    co->name = strs[SS_INIT_NAME];
    if (!ok || w.pos > UINT16_MAX || co->heap < SS_CORE_MIN_HEAP || co->heap > SS_CORE_MAX_HEAP
        || co->budget_ms < SS_CORE_MIN_BUDGET || co->budget_ms > SS_CORE_MAX_BUDGET)
        return -1;
    return 0;
}

/* From the start-up request to a core ready to serve, locked down. The
 * error, if any, in rep->message. */
static ss_err start(const uint8_t *in, ss_core_t **c, ss_channel_reply *rep)
{
    ss_core_opts co;
    char *strs[SS_INIT_COUNT] = { NULL };
    ss_err rc = SS_ERR_USAGE;
    if (read_init(in, &co, strs) != 0) {
        ss_say(rep->message, sizeof rep->message, "malformed start-up request");
        goto out;
    }
    if (ss_crypto_init() != SS_OK) {
        ss_say(rep->message, sizeof rep->message, "cannot start libsodium (or SS_CIPHER is wrong)");
        rc = SS_ERR_CRYPTO;
        goto out;
    }
    /* the fixed heap first, so the buffers below come out of it too; Lua's
     * bound counts the bytes it asks for, so half as much again is kept for
     * the allocator's own chunk headers: Lua meets its bound (a clean "not
     * enough memory") before the heap is exhausted */
    if ((rc = ss_sandbox_fix_heap(co.heap + co.heap / 2 + SS_CORE_FIXED, rep->message,
                                  sizeof rep->message)) != SS_OK)
        goto out;
    rc = ss_core_prepare(&co, c, rep->message, sizeof rep->message);
out:
    for (int i = 0; i < SS_INIT_COUNT; i++) {
        if (strs[i])
            sodium_memzero(strs[i], strlen(strs[i]));
        free(strs[i]);
    }
    if (rc != SS_OK)
        return rc;
    if ((rc = ss_sandbox_lockdown(SS_CHANNEL_DOORBELL, SS_CHANNEL_DOORBELL, rep->message,
                                  sizeof rep->message)) != SS_OK)
        return rc;
    /* locked down: from here on, no system call but the doorbell */
    return ss_core_start(*c, rep->message, sizeof rep->message);
}

/* Serve one request other than SS_OP_INIT. The request and the input are
 * copied out of the shared area first, the output and reply copied in last. */
static void serve(ss_core_t *c, ss_channel *ch)
{
    ss_channel_request req;
    memcpy(&req, &ch->ctl->req, sizeof req);
    ss_channel_reply reply, *rep = &reply;
    memset(rep, 0, offsetof(ss_channel_reply, message) + 1);
    uint8_t *buf = ss_core_buffer(c);
    ss_err rc = SS_OK;
    switch (req.op) {
    case SS_OP_BATCH: {
        if (req.lineage_len > SS_CHANNEL_AREA_BYTES || req.payload_len > SS_CHANNEL_AREA_BYTES
            || SS_HEADER_SIZE + req.lineage_len + req.payload_len > SS_CHANNEL_AREA_BYTES) {
            ss_say(rep->message, sizeof rep->message, "request sizes out of bounds");
            rc = SS_ERR_TOOBIG;
            break;
        }
        size_t total = SS_HEADER_SIZE + req.lineage_len + req.payload_len;
        memcpy(buf, ch->in, total);
        rc = ss_core_batch(c, buf, buf + SS_HEADER_SIZE, req.lineage_len,
                           buf + SS_HEADER_SIZE + req.lineage_len, req.payload_len, req.seq,
                           req.redelivered != 0, rep);
        break;
    }
    case SS_OP_FLUSH:
        rc = ss_core_flush(c, req.seq, rep);
        break;
    case SS_OP_FINISH:
        req.id[sizeof req.id - 1] = 0;
        rc = ss_core_finish(c, req.id, req.seq, rep);
        if (rc == SS_OK)
            memcpy(ch->out, buf, rep->payload_len);
        break;
    case SS_OP_PING:
        break;
    default:
        ss_say(rep->message, sizeof rep->message, "unknown request %u", req.op);
        rc = SS_ERR_USAGE;
        break;
    }
    if (rep->has_output) {
        memcpy(ch->out, ss_core_head(c), SS_HEADER_SIZE + rep->lineage_len);
        memcpy(ch->out + SS_HEADER_SIZE + rep->lineage_len, buf, rep->payload_len);
    }
    rep->status = rc;
    child_publish(ch->ctl, rep);
}

/* Answer request 1 (the start-up request), then every later one until the
 * stop message or the host's end. Never returns. */
static _Noreturn void serve_loop(ss_core_t *c, ss_channel *ch, ss_channel_reply *rep)
{
    ss_spinner spin = { .enabled = ch->ctl->spin != 0 };
    rep->stateful = (uint32_t)ss_core_stateful(c);
    memcpy(rep->measurement, ss_core_measurement(c), sizeof rep->measurement);
    rep->status = SS_OK;
    child_publish(ch->ctl, rep);
    uint64_t n = 1;
    child_reply(ch->ctl, n);
    for (;;) {
        if (ss_channel_await(SS_CHANNEL_DOORBELL, &spin, &ch->ctl->posted, n + 1,
                             &ch->ctl->enclave_waiting) != 0)
            _exit(0);   /* the host is gone */
        n++;
        if (ch->ctl->req.op == SS_OP_QUIT) {
            memset(rep, 0, sizeof *rep);
            child_publish(ch->ctl, rep);
            child_reply(ch->ctl, n);
            _exit(0);
        }
        serve(c, ch);
        child_reply(ch->ctl, n);
    }
}

static void child_usage(void)
{
    fprintf(stderr, "securestreams enclave: internal: the isolated enclave, started by a worker\n");
}

/* --doorbell N and --memory N: -1 for a missing or malformed one. */
static void parse_args(int argc, char **argv, int *doorbell, int *memory)
{
    *doorbell = *memory = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        uint64_t v;
        int *which = !strcmp(argv[i], "--doorbell") ? doorbell
                   : !strcmp(argv[i], "--memory")   ? memory
                                                    : NULL;
        if (which)
            *which = ss_parse_u64(argv[i + 1], 10, SS_NUM_PLAIN, INT32_MAX, &v) == 0 ? (int)v : -1;
    }
}

int ss_enclave_child_main(int argc, char **argv)
{
    int doorbell, memory;
    parse_args(argc, argv, &doorbell, &memory);
    if (doorbell != SS_CHANNEL_DOORBELL || memory != SS_CHANNEL_MEMORY) {
        child_usage();
        return 2;
    }
    ss_log_init("enclave-child");
    struct stat st;
    if (fstat(memory, &st) != 0 || (size_t)st.st_size < SS_CHANNEL_BYTES) {
        child_usage();
        return 2;
    }
    ss_channel ch;
    if (ss_channel_attach(&ch, memory) != 0)
        return 2;
    if (ch.ctl->magic != SS_CHANNEL_MAGIC || ch.ctl->req.op != SS_OP_INIT)
        return 2;
    ss_channel_reply reply;
    memset(&reply, 0, sizeof reply);
    ss_core_t *c = NULL;
    ss_err rc = start(ch.in, &c, &reply);
    if (rc == SS_OK)
        serve_loop(c, &ch, &reply);
    reply.status = rc;
    child_publish(ch.ctl, &reply);
    child_reply(ch.ctl, 1);
    _exit(1);
}
