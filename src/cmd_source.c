/*
 * source.c - the `source` command (see source.h).
 *
 * Lines are found with memchr in a 1 MiB read buffer; a line may not be
 * longer than the buffer. Empty lines are skipped and counted; a batch is
 * cut at an empty line so each batch's `origin` plus an event's index is
 * always that event's line number.
 *
 * With a data key (the encrypted mode) every batch is sealed before it
 * leaves, and the statistics record in the end of stream is sealed too. A
 * sealed file (securestreams encrypt) is streamed as it is stored: its
 * records are already sealed batches, so the source never sees plaintext.
 */
#include "cli.h"

#include "wire/codec.h"
#include "cli.h"
#include "crypto/crypto.h"
#include "wire/envelope.h"
#include "wire/eos.h"
#include "wire/frame.h"
#include "wire/pack.h"
#include "net/link.h"

#include <errno.h>
#include <getopt.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#ifndef SS_DEFAULT_STREAM
#define SS_DEFAULT_STREAM 0x53530001u
#endif

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

/* Stream a sealed file as stored; batch 0 holds the header line when the
 * file has one, and is not sent. */
static ss_err stream_sealed(source_t *s, ss_sealed_file_t *f, const char *path)
{
    ss_header_t h;
    const uint8_t *lineage, *payload;
    size_t llen, plen;
    char err[512];
    s->lineage_source = ss_sealed_file_id(f);
    s->first_seq = (uint64_t)ss_sealed_file_header_lines(f);
    for (;;) {
        ss_err e = ss_sealed_file_next(f, &h, &lineage, &llen, &payload, &plen, err, sizeof err);
        if (e == SS_ERR_CLOSED)
            return SS_OK;
        if (e != SS_OK) {
            ss_log("error: %s", err);
            return e;
        }
        if (h.seq < s->first_seq)
            continue;
        s->lines += h.count;
        s->records += h.count;
        uint64_t pubseq;
        if ((e = ss_producer_publish(s->producer, &h, lineage, llen, payload, plen, &pubseq)) != SS_OK) {
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

static void usage(FILE *f)
{
    fprintf(f,
            "usage: securestreams source --to ADDR --input FILE [options]\n"
            "Read FILE (or - for stdin) line by line and send it to a router in batches.\n"
            "  --to ADDR           first router's producer side (env TO)\n"
            "  --input FILE        lines of CSV or JSON; '-' for stdin (env DATA_FILE)\n"
            "  --header            the first line is a header: skip it (default)\n"
            "  --no-header         every line is a record\n"
            "  --batch-bytes N     cut batches at about N bytes (default 1048576)\n"
            "  --name NAME         name in logs (default source)\n"
            "  --stream ID         pipeline id shared by every component\n"
            "  --key FILE          data key: seal every batch (env SS_KEY_FILE); a sealed\n"
            "                      file (securestreams encrypt) is streamed as it is\n");
}

int ss_cmd_source(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "to", required_argument, 0, 't' }, { "input", required_argument, 0, 'i' },
        { "header", no_argument, 0, 'H' }, { "no-header", no_argument, 0, 'N' },
        { "batch-bytes", required_argument, 0, 'b' }, { "name", required_argument, 0, 'n' },
        { "stream", required_argument, 0, 'S' }, { "key", required_argument, 0, 'k' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    const char *to = getenv("TO"), *path = getenv("DATA_FILE"), *name = "source";
    const char *stream = getenv("SS_STREAM"), *keyfile = getenv("SS_KEY_FILE");
    int header = 1, c;
    long batch_bytes = SS_BATCH_BYTES;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 't': to = optarg; break;
        case 'i': path = optarg; break;
        case 'H': header = 1; break;
        case 'N': header = 0; break;
        case 'b': batch_bytes = atol(optarg); break;
        case 'n': name = optarg; break;
        case 'S': stream = optarg; break;
        case 'k': keyfile = optarg; break;
        case 'h': usage(stdout); return SS_EXIT_OK;
        default:
            fprintf(stderr, "securestreams source: unknown option %s\n", argv[optind - 1]);
            usage(stderr);
            return SS_EXIT_USAGE;
        }
    }
    if (!to || !path) {
        fprintf(stderr, "securestreams source: --to and --input are required\n");
        usage(stderr);
        return SS_EXIT_USAGE;
    }
    if (batch_bytes < 64 || batch_bytes > (long)(SS_MAX_MESSAGE / 2)) {
        fprintf(stderr, "securestreams source: --batch-bytes must be between 64 and %u\n",
                SS_MAX_MESSAGE / 2);
        return SS_EXIT_USAGE;
    }
    ss_log_init(name);

    int rc = SS_EXIT_ERROR;
    void *zctx = NULL;
    char *buf = NULL;
    ss_sealed_file_t *sealed = NULL;
    ss_key_t key = { 0 };
    char err[512];
    source_t s = { .batch_bytes = (size_t)batch_bytes, .t0 = wall_clock() };
    if (keyfile && *keyfile) {
        if (ss_crypto_init() != SS_OK || ss_key_load(&key, keyfile, err, sizeof err) != SS_OK) {
            ss_log("error: %s", err);
            return SS_EXIT_ERROR;
        }
        if (ss_envelope_new(&key, &s.env) != SS_OK) {
            ss_log("error: out of memory");
            return SS_EXIT_ERROR;
        }
    }
    uint32_t sealed_stream = 0;
    int is_sealed = strcmp(path, "-") ? ss_sealed_file_probe(path, &sealed_stream) : 0;
    if (is_sealed == 1) {
        if (!s.env) {
            ss_log("error: %s is a sealed file: give its data key (--key or SS_KEY_FILE)", path);
            ss_envelope_destroy(&s.env);
            return SS_EXIT_ERROR;
        }
        if (ss_sealed_file_open(path, &key, &sealed, err, sizeof err) != SS_OK) {
            ss_log("error: %s", err);
            ss_envelope_destroy(&s.env);
            return SS_EXIT_ERROR;
        }
    }
    FILE *in = is_sealed == 1 ? NULL : strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!in && !sealed) {
        int en = errno;
        ss_log("error: cannot open input %s: %s", path, strerror(en));
        ss_envelope_destroy(&s.env);
        return SS_EXIT_ERROR;
    }
    if (ss_batch_writer_init(&s.writer, SS_MAX_MESSAGE / 2) != SS_OK || !(buf = malloc(READ_BUF))) {
        ss_log("error: out of memory");
        goto out;
    }
    ss_link_opts o;
    ss_link_opts_init(&o);
    o.name = name;
    o.id = s.id = s.lineage_source = ss_random_id();
    o.stream = s.stream = stream ? (uint32_t)strtoul(stream, NULL, 0) : SS_DEFAULT_STREAM;
    zctx = zmq_ctx_new();
    if (ss_producer_new(zctx, to, &o, NULL, NULL, &s.producer, err, sizeof err) != SS_OK) {
        ss_log("error: %s", err);
        goto out;
    }
    ss_err e = SS_OK;
    if (sealed) {
        if (sealed_stream != s.stream)
            ss_log("warning: %s carries stream id %u, the pipeline uses %u: routers will refuse it",
                   path, (unsigned)sealed_stream, (unsigned)s.stream);
        if (stream_sealed(&s, sealed, path) != SS_OK)
            goto out;
        goto finish;
    }

    size_t have = 0;
    uint64_t bytes = 0;
    for (;;) {
        size_t got = fread(buf + have, 1, READ_BUF - have, in);
        bytes += got;
        have += got;
        int at_end = got == 0;
        if (at_end && ferror(in)) {
            int en = errno;
            ss_log("error: reading %s: %s", path, strerror(en));
            goto out;
        }
        size_t start = 0;
        for (;;) {
            char *nl = memchr(buf + start, '\n', have - start);
            if (!nl)
                break;
            if ((e = take_line(&s, path, buf + start, (size_t)(nl - (buf + start)), header)) != SS_OK)
                goto fail;
            start = (size_t)(nl - buf) + 1;
        }
        if (at_end) {
            if (start < have && (e = take_line(&s, path, buf + start, have - start, header)) != SS_OK)
                goto fail;
            break;
        }
        if (start == 0 && have == READ_BUF) {
            ss_log("error: %s:%llu: line longer than %u bytes", path,
                   (unsigned long long)s.lines + 1, READ_BUF);
            goto out;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
    }
    if (bytes == 0) {
        ss_log("error: %s: empty file (no header, no records)", path);
        goto out;
    }
    if (s.records == 0)
        ss_log("warning: %s: no records%s", path, header ? " after the header" : "");
    if ((e = publish(&s)) != SS_OK)
        goto fail;
finish:
    if ((e = ss_producer_drain(s.producer, -1)) != SS_OK ||
        (e = publish_eos(&s, name)) != SS_OK || (e = ss_producer_drain(s.producer, -1)) != SS_OK)
        goto fail;
    ss_log_info("sent %llu records in %llu %sbatches from %s", (unsigned long long)s.records,
           (unsigned long long)s.sent, s.env ? "sealed " : "", path);
    rc = SS_EXIT_OK;
    goto out;
fail:
    ss_log("error: sending to %s: %s", to, ss_strerror(e));
out:
    ss_producer_destroy(&s.producer);
    if (zctx)
        zmq_ctx_term(zctx);
    ss_batch_writer_cleanup(&s.writer);
    ss_envelope_destroy(&s.env);
    ss_sealed_file_close(&sealed);
    ss_key_cleanup(&key);
    free(buf);
    if (in && in != stdin)
        fclose(in);
    return rc;
}
