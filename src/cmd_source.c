/*
 * cmd_source.c - `securestreams source`: read a file of lines, or a sealed
 * file, and send it to the first router in batches.
 *
 * Lines are found with memchr in a 1 MiB read buffer; a line may not be
 * longer than the buffer. Empty lines are skipped and counted; a batch is
 * cut at an empty line so each batch's `origin` plus an event's index is
 * always that event's line number.
 *
 * With a data key (the encrypted mode) every batch is sealed before it
 * leaves, as made by the source (position 0) of this run (--run, SS_RUN, or
 * a fresh run id, logged), and the statistics record in the end of stream is
 * sealed the same way. A sealed file (securestreams encrypt) holds batches
 * bound to the file, not to a run: each record is opened and sealed again
 * into the run, in two buffers allocated once.
 */
#include "cli.h"

#include "wire/codec.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "wire/envelope.h"
#include "wire/eos.h"
#include "wire/frame.h"
#include "wire/pack.h"
#include "net/link.h"

#include <errno.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define READ_BUF (1u << 20)

typedef struct {
    ss_producer_t *producer;
    ss_batch_writer writer;
    uint64_t id;
    uint32_t stream;
    uint64_t seq;          /* next batch number */
    uint64_t first_line;   /* line number of the first event in the writer */
    uint64_t records, skipped, lines;
    size_t batch_bytes;
    double t0;
    ss_envelope_t *env;     /* encrypted mode */
    uint64_t lineage_source, first_seq, sent;
    uint8_t *plain;         /* a sealed file's batch, opened (SS_SEALED_BATCH_MAX) */
} source_t;

static double wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static ss_err publish(source_t *s)
{
    if (s->writer.count == 0)
        return SS_OK;
    const char *payload;
    size_t len;
    uint8_t lineage[SS_LINEAGE_ENTRY];
    ss_lineage_put(lineage, 0, (ss_lineage_id){ s->id, s->seq });
    ss_batch_writer_finish(&s->writer, &payload, &len);
    ss_header_t h = { .type = SS_MSG_DATA, .stream = s->stream, .producer = s->id,
                      .seq = s->seq, .count = s->writer.count, .origin = s->first_line };
    if (s->env) {
        const uint8_t *sealed;
        ss_err e = ss_envelope_seal(s->env, &h, lineage, sizeof lineage, payload, len, &sealed, &len);
        if (e != SS_OK)
            return e;
        payload = (const char *)sealed;
    }
    uint64_t pubseq;
    ss_err e = ss_producer_publish(s->producer, &h, lineage, sizeof lineage, payload, len, &pubseq);
    if (e != SS_OK)
        return e;
    s->seq++;
    s->sent++;
    ss_batch_writer_reset(&s->writer);
    return SS_OK;
}

/* EOS payload: {members = {id}, stats = {[hex id] = record}} where the record
 * is the statistics map, or {sealed = ..., n = seq} in the encrypted mode
 * (docs/protocol.md, docs/crypto.md). */
static ss_err publish_eos(source_t *s, const char *name)
{
    ss_growbuf rec;
    msgpack_packer rk;
    ss_eos_writer w;
    char hex[SS_EOS_ID_HEX + 1], err[256];
    ss_err e = SS_OK;
    ss_eos_id_hex(s->id, hex);
    ss_growbuf_init(&rec, &rk, SS_EOS_MAX_BYTES);
    msgpack_pack_map(&rk, 12);
    ss_pack_str(&rk, "stage");
    ss_pack_str(&rk, "source");
    ss_pack_str(&rk, "name");
    ss_pack_str(&rk, name);
    ss_pack_kv_u64(&rk, "pos", 0);
    ss_pack_kv_u64(&rk, "in", s->lines);
    ss_pack_kv_u64(&rk, "out", s->records);
    ss_pack_kv_u64(&rk, "skipped", s->skipped);
    ss_pack_kv_u64(&rk, "refused", 0);
    ss_pack_kv_u64(&rk, "rejected", 0);
    ss_pack_kv_u64(&rk, "batches", s->sent);
    ss_pack_kv_u64(&rk, "lineage_source", s->lineage_source);
    ss_pack_kv_u64(&rk, "first_seq", s->first_seq);
    ss_pack_str(&rk, "t0");
    msgpack_pack_double(&rk, s->t0);

    ss_eos_writer_init(&w, 0);
    if (rec.over || rec.nomem) {
        ss_log("error: the source's statistics record does not fit an end of stream");
        e = rec.over ? SS_ERR_TOOBIG : SS_ERR_NOMEM;
        goto out;
    }
    ss_eos_writer_begin(&w, &s->id, 1, 1);
    ss_eos_writer_key(&w, s->id);
    uint64_t seq = s->seq++;
    if (s->env) {
        const uint8_t *sealed;
        size_t slen;
        if ((e = ss_envelope_seal_record(s->env, seq, hex, rec.data, rec.len, &sealed, &slen)) != SS_OK)
            goto out;
        msgpack_packer *pk = ss_eos_writer_packer(&w);
        msgpack_pack_map(pk, 2);
        ss_pack_str(pk, "sealed");
        msgpack_pack_bin(pk, slen);
        msgpack_pack_bin_body(pk, sealed, slen);
        ss_pack_kv_u64(pk, "n", seq);
        seq = s->seq++;
    } else {
        ss_eos_writer_raw(&w, rec.data, rec.len);
    }
    const uint8_t *payload;
    size_t len;
    if ((e = ss_eos_writer_finish(&w, &payload, &len, err, sizeof err)) != SS_OK) {
        ss_log("error: %s", err);
        goto out;
    }
    ss_header_t h = { .type = SS_MSG_EOS, .stream = s->stream, .producer = s->id,
                      .seq = seq, .count = 1 };
    uint64_t pubseq;
    e = ss_producer_publish(s->producer, &h, "", 0, payload, len, &pubseq);
out:
    ss_eos_writer_cleanup(&w);
    ss_growbuf_cleanup(&rec);
    return e;
}

/* Stream a sealed file into the run: each record opened and sealed again
 * as this source's (its producer id and this pipeline's stream id in the
 * header), with the file's sequence numbers and lineage kept; batch 0 holds the header line when the file has one, and
 * is not sent. */
static ss_err stream_sealed(source_t *s, ss_sealed_file_t *f, const char *path)
{
    ss_header_t h;
    const uint8_t *lineage, *sealed;
    size_t llen, plen, slen;
    char err[512];
    s->lineage_source = ss_sealed_file_id(f);
    s->first_seq = (uint64_t)ss_sealed_file_header_lines(f);
    for (;;) {
        ss_err e = ss_sealed_file_next_open(f, &h, &lineage, &llen, s->plain, SS_SEALED_BATCH_MAX,
                                            &plen, err, sizeof err);
        if (e == SS_ERR_CLOSED)
            return SS_OK;
        if (e != SS_OK) {
            ss_log("error: %s", err);
            return e;
        }
        s->seq = h.seq + 1;   /* the EOS and its record are sealed above every batch */
        if (h.seq < s->first_seq)
            continue;
        s->lines += h.count;
        s->records += h.count;
        h.flags = 0;
        h.producer = s->id;       /* re-sealed by this source, under its own name */
        h.stream = s->stream;     /* and into this pipeline, whatever the file carries */
        if ((e = ss_envelope_seal(s->env, &h, lineage, llen, s->plain, plen, &sealed, &slen)) != SS_OK) {
            ss_log("error: %s: sealing batch %llu into the run: %s", path, (unsigned long long)h.seq,
                   ss_strerror(e));
            return e;
        }
        uint64_t pubseq;
        if ((e = ss_producer_publish(s->producer, &h, lineage, llen, sealed, slen, &pubseq)) != SS_OK) {
            ss_log("error: sending %s: %s", path, ss_strerror(e));
            return e;
        }
        s->sent++;
    }
}

/* One line (without its newline). */
static ss_err take_line(source_t *s, const char *path, const char *line, size_t len, int header)
{
    s->lines++;
    if (len && line[len - 1] == '\r')
        len--;
    if (header && s->lines == 1)
        return SS_OK;
    if (len == 0) {
        static uint64_t logged;
        s->skipped++;
        ss_log_limited(&logged, 10, "%s:%llu: empty line skipped", path, (unsigned long long)s->lines);
        return publish(s);
    }
    if (s->writer.count == 0)
        s->first_line = s->lines;
    ss_err e = ss_batch_writer_add_string(&s->writer, line, len);
    if (e == SS_ERR_TOOBIG) {
        if ((e = publish(s)) != SS_OK)
            return e;
        s->first_line = s->lines;
        e = ss_batch_writer_add_string(&s->writer, line, len);
    }
    if (e != SS_OK)
        return e;
    s->records++;
    if (s->writer.len >= s->batch_bytes)
        return publish(s);
    return SS_OK;
}

#define NOT_GIVEN UINT64_MAX   /* --stream left unset */

/* What the command line asks for, once checked. */
typedef struct {
    const char *to, *path, *name, *keyfile;
    uint8_t run[SS_RUN_BYTES];  /* the run id: given, or a fresh one */
    int header;
    size_t batch_bytes;
    uint32_t stream;
} source_args;

/* Everything one run holds; cleanup() releases it all, whatever the phase
 * reached, and wipes the data key. */
typedef struct {
    source_t s;
    ss_key_t key;               /* the data key (encrypted mode), else zeros */
    ss_sealed_file_t *sealed;   /* the input when it is a sealed file... */
    uint32_t sealed_stream;     /* ...and the stream id its records carry */
    FILE *in;                   /* the input when it is lines (may be stdin) */
    char *buf;                  /* READ_BUF bytes of lines */
    void *zctx;
} source_run;

/* The data key and the envelope that seals batches with it, when the
 * command was given one. */
static int load_key(const ss_cli *cli, const source_args *a, source_run *r)
{
    char err[512];
    if (!a->keyfile)
        return SS_EXIT_OK;
    if (ss_crypto_init() != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot initialise libsodium");
    if (ss_key_load(&r->key, a->keyfile, err, sizeof err) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "%s", err);
    ss_envelope_opts eo = { .run = a->run, .role = SS_MAKER_SOURCE, .pos = 0 };
    if (ss_envelope_new(&r->key, &eo, &r->s.env) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "out of memory");
    return SS_EXIT_OK;
}

/* The input: a sealed file (securestreams encrypt), opened with the key,
 * or a file of lines, or standard input for "-". */
static int open_input(const ss_cli *cli, const source_args *a, source_run *r)
{
    char err[512];
    int is_stdin = !strcmp(a->path, "-");
    if (!is_stdin && ss_sealed_file_probe(a->path, &r->sealed_stream) == 1) {
        if (!r->s.env)
            return ss_cli_fail(cli, SS_EXIT_ERROR, "%s is a sealed file: give its data key "
                               "(--key or SS_KEY_FILE)", a->path);
        if (ss_sealed_file_open(a->path, &r->key, &r->sealed, err, sizeof err) != SS_OK)
            return ss_cli_fail(cli, SS_EXIT_ERROR, "%s", err);
        if (!(r->s.plain = malloc(SS_SEALED_BATCH_MAX)))
            return ss_cli_fail(cli, SS_EXIT_ERROR, "out of memory");
        return SS_EXIT_OK;
    }
    r->in = is_stdin ? stdin : fopen(a->path, "rb");
    if (!r->in) {
        int en = errno;
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot open input %s: %s", a->path, strerror(en));
    }
    return SS_EXIT_OK;
}

/* The batch writer, the read buffer and the link to the first router. */
static int connect_router(const ss_cli *cli, const source_args *a, source_run *r)
{
    char err[512];
    if (ss_batch_writer_init(&r->s.writer, SS_BATCH_BYTES_MAX) != SS_OK || !(r->buf = malloc(READ_BUF)))
        return ss_cli_fail(cli, SS_EXIT_ERROR, "out of memory");
    ss_link_opts o;
    ss_link_opts_init(&o);
    o.name = a->name;
    o.id = r->s.id = r->s.lineage_source = ss_random_id();
    o.stream = r->s.stream = a->stream;
    if (!(r->zctx = zmq_ctx_new())) {
        int en = errno;
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot create a ZeroMQ context: %s", zmq_strerror(en));
    }
    if (ss_producer_new(r->zctx, a->to, &o, NULL, NULL, &r->s.producer, err, sizeof err) != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "%s", err);
    return SS_EXIT_OK;
}

/* Read the lines of r->in and send them in batches. Errors are logged. */
static int stream_lines(const source_args *a, source_run *r)
{
    source_t *s = &r->s;
    char *buf = r->buf;
    size_t have = 0;
    uint64_t bytes = 0;
    ss_err e;
    for (;;) {
        size_t got = fread(buf + have, 1, READ_BUF - have, r->in);
        bytes += got;
        have += got;
        int at_end = got == 0;
        if (at_end && ferror(r->in)) {
            int en = errno;
            ss_log("error: reading %s: %s", a->path, strerror(en));
            return SS_EXIT_ERROR;
        }
        size_t start = 0;
        for (;;) {
            char *nl = memchr(buf + start, '\n', have - start);
            if (!nl)
                break;
            if ((e = take_line(s, a->path, buf + start, (size_t)(nl - (buf + start)), a->header)) != SS_OK)
                goto fail;
            start = (size_t)(nl - buf) + 1;
        }
        if (at_end) {
            if (start < have && (e = take_line(s, a->path, buf + start, have - start, a->header)) != SS_OK)
                goto fail;
            break;
        }
        if (start == 0 && have == READ_BUF) {
            ss_log("error: %s:%llu: line longer than %u bytes", a->path,
                   (unsigned long long)s->lines + 1, READ_BUF);
            return SS_EXIT_ERROR;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
    }
    if (bytes == 0) {
        ss_log("error: %s: empty file (no header, no records)", a->path);
        return SS_EXIT_ERROR;
    }
    if (s->records == 0)
        ss_log("warning: %s: no records%s", a->path, a->header ? " after the header" : "");
    if ((e = publish(s)) != SS_OK)
        goto fail;
    return SS_EXIT_OK;
fail:
    ss_log("error: sending to %s: %s", a->to, ss_strerror(e));
    return SS_EXIT_ERROR;
}

/* Stream the sealed file r->sealed as it is stored. Errors are logged. */
static int stream_sealed_file(const source_args *a, source_run *r)
{
    return stream_sealed(&r->s, r->sealed, a->path) == SS_OK ? SS_EXIT_OK : SS_EXIT_ERROR;
}

/* Wait for every batch's receipt, send the end of stream with the
 * statistics, and wait for its receipt too. */
static int finish(const source_args *a, source_run *r)
{
    ss_err e;
    if ((e = ss_producer_drain(r->s.producer, -1)) != SS_OK || (e = publish_eos(&r->s, a->name)) != SS_OK
        || (e = ss_producer_drain(r->s.producer, -1)) != SS_OK) {
        ss_log("error: sending to %s: %s", a->to, ss_strerror(e));
        return SS_EXIT_ERROR;
    }
    ss_log_info("sent %llu records in %llu %sbatches from %s", (unsigned long long)r->s.records,
                (unsigned long long)r->s.sent, r->s.env ? "sealed " : "", a->path);
    return SS_EXIT_OK;
}

static void cleanup(source_run *r)
{
    ss_producer_destroy(&r->s.producer);
    if (r->zctx)
        zmq_ctx_term(r->zctx);
    ss_batch_writer_cleanup(&r->s.writer);
    ss_envelope_destroy(&r->s.env);
    if (r->s.plain)
        sodium_memzero(r->s.plain, SS_SEALED_BATCH_MAX);
    free(r->s.plain);
    ss_sealed_file_close(&r->sealed);
    ss_key_cleanup(&r->key);
    free(r->buf);
    if (r->in && r->in != stdin)
        fclose(r->in);
}

/* One run, phase by phase; every way out goes through cleanup(). */
static int run_source(const ss_cli *cli, const source_args *a)
{
    source_run r;
    memset(&r, 0, sizeof r);
    r.s.batch_bytes = a->batch_bytes;
    r.s.t0 = wall_clock();
    int rc;
    if ((rc = load_key(cli, a, &r)) != SS_EXIT_OK || (rc = open_input(cli, a, &r)) != SS_EXIT_OK
        || (rc = connect_router(cli, a, &r)) != SS_EXIT_OK)
        goto out;
    if ((rc = r.sealed ? stream_sealed_file(a, &r) : stream_lines(a, &r)) != SS_EXIT_OK)
        goto out;
    rc = finish(a, &r);
out:
    cleanup(&r);
    return rc;
}

/* securestreams source --to ADDR --input FILE [options]; argv[0] is
 * "source". Exit status: 0 sent and acknowledged, 1 error, 2 usage. */
int ss_cmd_source(int argc, char **argv)
{
    source_args a = { .name = "source", .header = 1 };
    uint64_t batch_bytes = SS_BATCH_BYTES, stream = NOT_GIVEN;
    const char *run = NULL;
    const ss_opt opts[] = {
        { "--to", 0, SS_OPT_STRING, &a.to, "ADDR", "first router's producer side", .env = "TO" },
        { "--input", 0, SS_OPT_STRING, &a.path, "FILE", "lines of CSV or JSON; '-' for stdin", .env = "DATA_FILE" },
        { "--header", 0, SS_OPT_FLAG, &a.header, NULL, "the first line is a header: skip it (default)" },
        { "--no-header", 0, SS_OPT_FLAG, &a.header, NULL, "every line is a record", .flags = SS_OPTF_CLEAR },
        { "--batch-bytes", 0, SS_OPT_UINT, &batch_bytes, "N", "cut batches at about N bytes (default 1048576)",
          .min = 64, .max = SS_BATCH_BYTES_MAX },
        { "--name", 0, SS_OPT_STRING, &a.name, "NAME", "name in logs (default source)" },
        { "--stream", 0, SS_OPT_UINT, &stream, "ID", "pipeline id shared by every component (default\n"
                                                     "$SS_STREAM, else 0x53530001)",
          .max = UINT32_MAX, .flags = SS_OPTF_HEX },
        { "--key", 0, SS_OPT_STRING, &a.keyfile, "FILE", "data key: seal every batch; a sealed file\n"
                                                        "(securestreams encrypt) is streamed as it is",
          .env = "SS_KEY_FILE" },
        { "--run", 0, SS_OPT_STRING, &run, "HEX", "the run id (32 hex digits) every batch is bound to\n"
                                                  "(default $SS_RUN, else a fresh one, logged)",
          .env = "SS_RUN" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "source", .synopsis = "--to ADDR --input FILE [options]", .opts = opts,
        .about = "Read FILE (or - for stdin) line by line and send it to a router in batches.",
    };
    int rc = ss_cli_parse(&cli, argc, argv, NULL, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!a.to || !a.path)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--to and --input are required");
    char err[256];
    if (stream == NOT_GIVEN && ss_stream_from_env(&a.stream, err, sizeof err) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "%s", err);
    if (stream != NOT_GIVEN)
        a.stream = (uint32_t)stream;
    a.batch_bytes = (size_t)batch_bytes;
    ss_log_init(a.name);
    if (run && *run && ss_run_parse(run, a.run) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "--run %s: a run id is 32 hex digits", run);
    if (!run || !*run) {
        char hex[2 * SS_RUN_BYTES + 1];
        if (ss_crypto_init() != SS_OK)
            return ss_cli_fail(&cli, SS_EXIT_ERROR, "cannot initialise libsodium");
        ss_run_new(a.run);
        ss_run_hex(a.run, hex);
        if (a.keyfile)
            ss_log("run id %s (no --run or SS_RUN: a fresh one; give it to the sink as SS_RUN "
                   "to pin it)", hex);
    }
    return run_source(&cli, &a);
}
