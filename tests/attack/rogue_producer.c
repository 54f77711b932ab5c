/*
 * rogue_producer.c - a hostile producer for the router's attack tests
 * (tests/integration/t_router_attacks.sh). It has only a producer's powers:
 * a ZeroMQ DEALER connected to a router's frontend, speaking the wire format
 * of docs/protocol.md through lib/wire/frame.h. It is run as nobody
 * (setpriv --reuid=65534) and holds no data key.
 *
 *   rogue_producer MODE ADDR [options]
 *
 * MODE
 *   flood    JOIN, then PUBLISH well-formed batches as fast as the socket
 *            takes them, ignoring receipts (and the window)
 *   squat    JOIN, then PUBLISH batches that claim the lineage ids
 *            SOURCE#FIRST .. SOURCE#FIRST+COUNT-1 of a real source, within
 *            the window
 *   honest   the control: PUBLISH within the window granted in WELCOME,
 *            waiting for receipts as a link does
 *   bomb     as honest, but each batch is a decoder bomb of --bytes bytes:
 *            a batch of one event, 60 nested arrays each declaring as many
 *            elements as there are bytes left, then nils
 *   eos-bomb as honest, then an end of stream whose statistics record for
 *            this producer is such a bomb (about 300 bytes)
 *   eos      the control of eos-bomb: as honest, then a well-formed end of
 *            stream whose statistics record is {stage = "rogue"}
 *
 * Options
 *   --count N      batches to publish (default 100)
 *   --bytes N      payload bytes per batch, about (default 1048576)
 *   --window N     window declared in JOIN (default 8)
 *   --source HEX   squat: the source id whose lineage is claimed
 *   --first N      squat: the first sequence number claimed (default 0)
 *   --rejoin N     flood: JOIN again after every N batches (default 0: never)
 *   --name NAME    name in the JOIN (default rogue)
 *   --id HEX       its peer id (default random)
 *
 * The pipeline id comes from SS_STREAM as for every component. Prints one
 * line on stdout: "MODE: sent N batches (B bytes), receipts R, window W".
 * Exit status 0 once everything was sent, 1 when the router never welcomed
 * it or a send timed out, 2 on a usage error.
 */
#include "wire/frame.h"

#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define SEND_TIMEOUT_MS 20000
#define WELCOME_TIMEOUT_MS 10000
#define EVENT_BYTES 1000     /* each event: a string of about this many bytes */

typedef struct {
    const char *mode, *addr, *name;
    uint64_t count, bytes, window, source, first, rejoin, id;
    uint32_t stream;
} args;

typedef struct {
    void *sock;
    uint64_t receipts;      /* RECEIPTs read */
    uint64_t last_receipt;  /* highest receipted publish sequence + 1 */
    unsigned granted;       /* WELCOME's n */
} peer;

static int usage(const char *why)
{
    fprintf(stderr, "rogue_producer: %s\nusage: rogue_producer flood|squat|honest|bomb|eos-bomb|eos ADDR [--count N] "
            "[--bytes N] [--window N] [--source HEX] [--first N] [--rejoin N] [--name NAME] "
            "[--id HEX]\n", why);
    return 2;
}

static int parse(args *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    a->count = 100;
    a->bytes = SS_BATCH_BYTES;
    a->window = SS_DEFAULT_WINDOW;
    a->name = "rogue";
    if (argc < 3)
        return usage("a mode and an address are needed");
    a->mode = argv[1];
    a->addr = argv[2];
    if (strcmp(a->mode, "flood") && strcmp(a->mode, "squat") && strcmp(a->mode, "honest")
        && strcmp(a->mode, "bomb") && strcmp(a->mode, "eos-bomb") && strcmp(a->mode, "eos"))
        return usage("the mode is flood, squat, honest, bomb, eos-bomb or eos");
    for (int i = 3; i < argc; i += 2) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t *num = !strcmp(o, "--count") ? &a->count : !strcmp(o, "--bytes") ? &a->bytes
                      : !strcmp(o, "--window") ? &a->window : !strcmp(o, "--first") ? &a->first
                      : !strcmp(o, "--rejoin") ? &a->rejoin : NULL;
        int hex = 0;
        if (!num && !strcmp(o, "--source"))
            num = &a->source, hex = 1;
        if (!num && !strcmp(o, "--id"))
            num = &a->id, hex = 1;
        if (!v)
            return usage("an option without its value");
        if (!strcmp(o, "--name")) {
            a->name = v;
            continue;
        }
        if (!num || ss_parse_u64(v, hex ? 16 : 10, SS_NUM_PLAIN, UINT64_MAX, num) != 0)
            return usage(o);
    }
    if (a->window == 0 || a->window > UINT16_MAX || a->bytes > SS_MAX_MESSAGE / 2)
        return usage("--window from 1 to 65535, --bytes at most 8 MiB");
    if (!strcmp(a->mode, "squat") && !a->source)
        return usage("squat needs --source");
    if (!a->id)
        a->id = ss_random_id();
    char err[160];
    if (ss_stream_from_env(&a->stream, err, sizeof err) != SS_OK)
        return usage(err);
    return 0;
}

static int send_link(peer *p, uint8_t kind, uint16_t flags, uint32_t n, uint64_t tag, int more)
{
    ss_link_t l = { .kind = kind, .flags = flags, .n = n, .tag = tag };
    uint8_t buf[SS_LINK_SIZE];
    ss_link_encode(&l, buf);
    return zmq_send(p->sock, buf, sizeof buf, more ? ZMQ_SNDMORE : 0) < 0 ? -1 : 0;
}

static int join(peer *p, const args *a)
{
    if (send_link(p, SS_LINK_JOIN, (uint16_t)a->window, SS_ROLE_PRODUCER, a->id, 1) != 0
        || zmq_send(p->sock, a->name, strlen(a->name), 0) < 0)
        return -1;
    return 0;
}

/* Read what the router sent, without blocking (timeout 0) or up to
 * timeout_ms for the first message. Counts receipts, notes WELCOME. */
static void read_all(peer *p, int timeout_ms)
{
    for (;;) {
        zmq_pollitem_t it = { p->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, timeout_ms) <= 0)
            return;
        timeout_ms = 0;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, p->sock, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        ss_link_t l;
        if (ss_link_decode(zmq_msg_data(&m), zmq_msg_size(&m), &l) == SS_OK) {
            if (l.kind == SS_LINK_WELCOME)
                p->granted = l.n ? l.n : SS_DEFAULT_WINDOW;
            if (l.kind == SS_LINK_RECEIPT) {
                p->receipts++;
                if (l.tag + 1 > p->last_receipt)
                    p->last_receipt = l.tag + 1;
            }
        }
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, p->sock, 0) >= 0)
            ;
        zmq_msg_close(&m);
    }
}

/* A MessagePack array of strings of EVENT_BYTES, about `bytes` in all:
 * lines a CSV stage cannot use, so nothing of them reaches a result. */
static void make_payload(msgpack_sbuffer *sb, uint64_t bytes, uint32_t *count)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    uint32_t n = (uint32_t)(bytes / EVENT_BYTES);
    if (n == 0)
        n = 1;
    static char line[EVENT_BYTES];
    memset(line, 'x', sizeof line);
    memcpy(line, "rogue,", 6);
    msgpack_pack_array(&pk, n);
    for (uint32_t i = 0; i < n; i++) {
        msgpack_pack_str(&pk, sizeof line);
        msgpack_pack_str_body(&pk, line, sizeof line);
    }
    *count = n;
}

/* BOMB_LEVELS nested arrays (array32), each declaring as many elements as
 * there are bytes left after it, so each passes a "count no larger than
 * the bytes left" check; the rest is nils. */
#define BOMB_LEVELS 60
static size_t put_bomb(uint8_t *p, size_t len)
{
    size_t pos = 0;
    for (int i = 0; i < BOMB_LEVELS && pos + 5 < len; i++) {
        uint32_t n = (uint32_t)(len - pos - 5);
        p[pos++] = 0xdd;
        for (int b = 3; b >= 0; b--)
            p[pos++] = (uint8_t)(n >> (8 * b));
    }
    memset(p + pos, 0xc0, len - pos);
    return len;
}

/* A batch of one event that is a bomb of `bytes` bytes in all. */
static void make_bomb(msgpack_sbuffer *sb, uint64_t bytes, uint32_t *count)
{
    msgpack_sbuffer_init(sb);
    uint8_t *b = malloc(bytes);
    if (!b)
        abort();
    b[0] = 0x91;   /* an array of one event */
    put_bomb(b + 1, bytes - 1);
    msgpack_sbuffer_write(sb, (const char *)b, bytes);
    free(b);
    *count = 1;
}

/* The end of stream: {members = {id}, stats = {[hex id] = bomb}}, or with
 * the record {stage = "rogue"} instead of the bomb. */
static int publish_eos(peer *p, const args *a, uint64_t seq, int bomb)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)a->id);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 7);
    msgpack_pack_str_body(&pk, "members", 7);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, a->id);
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "stats", 5);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 16);
    msgpack_pack_str_body(&pk, hex, 16);
    if (bomb) {
        uint8_t b[BOMB_LEVELS * 5];
        msgpack_sbuffer_write(&sb, (const char *)b, put_bomb(b, sizeof b));
    } else {
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str(&pk, 5);
        msgpack_pack_str_body(&pk, "stage", 5);
        msgpack_pack_str(&pk, 5);
        msgpack_pack_str_body(&pk, "rogue", 5);
    }
    ss_header_t h = { .type = SS_MSG_EOS, .stream = a->stream, .producer = a->id, .seq = seq,
                      .count = 1 };
    uint8_t hdr[SS_HEADER_SIZE];
    ss_header_encode(&h, hdr);
    int rc = send_link(p, SS_LINK_PUBLISH, 0, 0, seq, 1) != 0
             || zmq_send(p->sock, hdr, sizeof hdr, ZMQ_SNDMORE) < 0
             || zmq_send(p->sock, "", 0, ZMQ_SNDMORE) < 0
             || zmq_send(p->sock, sb.data, sb.size, 0) < 0 ? -1 : 0;
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static int publish(peer *p, const args *a, uint64_t i, const msgpack_sbuffer *payload,
                   uint32_t count)
{
    ss_header_t h = { .type = SS_MSG_DATA, .flags = 0, .stream = a->stream, .producer = a->id,
                      .seq = i, .count = count, .origin = 0 };
    ss_lineage_id id = { a->id, i };
    if (!strcmp(a->mode, "squat"))
        id = (ss_lineage_id){ a->source, a->first + i };
    uint8_t hdr[SS_HEADER_SIZE], lin[SS_LINEAGE_ENTRY];
    ss_header_encode(&h, hdr);
    ss_lineage_put(lin, 0, id);
    if (send_link(p, SS_LINK_PUBLISH, 0, 0, i, 1) != 0
        || zmq_send(p->sock, hdr, sizeof hdr, ZMQ_SNDMORE) < 0
        || zmq_send(p->sock, lin, sizeof lin, ZMQ_SNDMORE) < 0
        || zmq_send(p->sock, payload->data, payload->size, 0) < 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    int rc = parse(&a, argc, argv);
    if (rc != 0)
        return rc;
    int status = 1, timeout = SEND_TIMEOUT_MS;
    void *zctx = zmq_ctx_new();
    peer p = { 0 };
    p.sock = zmq_socket(zctx, ZMQ_DEALER);
    uint8_t rid[SS_ROUTING_ID_SIZE];
    rid[0] = SS_ROUTING_ID_PREFIX;
    ss_put_u64(rid + 1, a.id);
    zmq_setsockopt(p.sock, ZMQ_ROUTING_ID, rid, sizeof rid);
    zmq_setsockopt(p.sock, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    msgpack_sbuffer payload;
    uint32_t count;
    if (!strcmp(a.mode, "bomb"))
        make_bomb(&payload, a.bytes, &count);
    else
        make_payload(&payload, a.bytes, &count);
    uint64_t sent = 0, sent_bytes = 0;
    if (zmq_connect(p.sock, a.addr) != 0) {
        fprintf(stderr, "rogue_producer: cannot connect to %s: %s\n", a.addr, zmq_strerror(errno));
        goto out;
    }
    if (join(&p, &a) != 0) {
        fprintf(stderr, "rogue_producer: cannot send JOIN: %s\n", zmq_strerror(errno));
        goto out;
    }
    read_all(&p, WELCOME_TIMEOUT_MS);
    if (!p.granted) {
        fprintf(stderr, "rogue_producer: no WELCOME from %s\n", a.addr);
        goto out;
    }
    int flood = !strcmp(a.mode, "flood");
    for (uint64_t i = 0; i < a.count; i++) {
        if (flood && a.rejoin && i > 0 && i % a.rejoin == 0 && join(&p, &a) != 0)
            break;
        /* The window, as a link keeps it: squat and honest wait for receipts. */
        while (!flood && i - p.last_receipt >= p.granted)
            read_all(&p, 1000);
        if (publish(&p, &a, i, &payload, count) != 0) {
            fprintf(stderr, "rogue_producer: publishing batch %llu: %s\n", (unsigned long long)i,
                    zmq_strerror(errno));
            goto out;
        }
        sent++;
        sent_bytes += payload.size + SS_HEADER_SIZE + SS_LINEAGE_ENTRY;
        read_all(&p, 0);
    }
    if (!strcmp(a.mode, "eos-bomb") || !strcmp(a.mode, "eos")) {
        while (sent - p.last_receipt >= p.granted)
            read_all(&p, 1000);
        if (publish_eos(&p, &a, sent, !strcmp(a.mode, "eos-bomb")) != 0) {
            fprintf(stderr, "rogue_producer: publishing the end of stream: %s\n", zmq_strerror(errno));
            goto out;
        }
        sent++;
    }
    if (!flood) {
        for (int waited = 0; p.last_receipt < sent && waited < 20; waited++)
            read_all(&p, 500);
    }
    status = 0;
out:
    printf("%s: sent %llu batches (%llu bytes), receipts %llu, window %u\n", a.mode,
           (unsigned long long)sent, (unsigned long long)sent_bytes,
           (unsigned long long)p.receipts, p.granted);
    fflush(stdout);
    msgpack_sbuffer_destroy(&payload);
    int linger = SEND_TIMEOUT_MS;   /* what was sent reaches the router before we exit */
    zmq_setsockopt(p.sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(p.sock);
    zmq_ctx_term(zctx);
    return status;
}
