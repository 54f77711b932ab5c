/*
 * impostor.c - an attacker of a CurveZMQ router (tests/integration/
 * t_curve_attack.sh): a real DEALER socket with its own allow-listed key
 * that claims any routing id, joins any side, grants credit, acknowledges
 * and publishes any lineage, and prints what the router answers.
 *
 *   impostor --connect ADDR --server ROUTER.pub --key SECRET [options]
 *     --peer HEX        peer id in the routing id (default: random)
 *     --rid-key WHICH   key part of the routing id: own (default), none
 *                       (the 9-byte routing id of a plain link) or a .pub file
 *     --nonce HEX       the routing id's random part, 32 hex digits (default:
 *                       random); "save:FILE" draws one and writes it to FILE,
 *                       "load:FILE" reads it back
 *     --join ROLE       producer or consumer: send JOIN (default: none)
 *     --join-id HEX     the JOIN's peer id (default: --peer)
 *     --credit N        consumer: CREDIT N after WELCOME (default 2)
 *     --ack             acknowledge every delivery (an EOS always)
 *     --publish N       producer: publish N DATA batches once welcomed
 *     --lineage HEX     the source id their lineage names (default: --peer);
 *                       batch i names (HEX, i)
 *     --receipts N      producer: stop once N receipts came back
 *     --seconds S       give up after S seconds (default 10)
 *     --no-reconnect    never reconnect once the connection is lost
 *
 * Prints one line per event on stdout: "welcome", "deliver TAG data|eos",
 * "receipt SEQ ok|refused", then "summary welcomed W delivered D receipts R
 * refused F". Exits 0 after an EOS delivery, the receipts asked for, SIGTERM
 * or the deadline, 1 on a usage
 * or setup error. It is only a client: it has no power the network or an
 * allow-listed client lacks.
 */
#include "base/common.h"
#include "crypto/curve.h"
#include "wire/frame.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define HEARTBEAT_MS 250

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int usage(const char *why)
{
    fprintf(stderr, "impostor: %s (see tests/attack/impostor.c)\n", why);
    return 1;
}

static int hex_u64(const char *s, uint64_t *out)
{
    char *end;
    *out = strtoull(s, &end, 16);
    return *s && !*end;
}

static int hex_bytes(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return 0;
        out[i] = (uint8_t)v;
    }
    return 1;
}

/* --nonce: HEX, save:FILE (random, written down) or load:FILE. */
static int nonce_arg(const char *arg, uint8_t nonce[SS_ROUTING_ID_NONCE])
{
    if (strncmp(arg, "save:", 5) == 0) {
        randombytes_buf(nonce, SS_ROUTING_ID_NONCE);
        FILE *f = fopen(arg + 5, "w");
        if (!f)
            return 0;
        for (int i = 0; i < SS_ROUTING_ID_NONCE; i++)
            fprintf(f, "%02x", nonce[i]);
        fprintf(f, "\n");
        return fclose(f) == 0;
    }
    if (strncmp(arg, "load:", 5) == 0) {
        char buf[2 * SS_ROUTING_ID_NONCE + 2] = "";
        FILE *f = fopen(arg + 5, "r");
        if (!f || !fgets(buf, sizeof buf, f)) {
            if (f)
                fclose(f);
            return 0;
        }
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
        return hex_bytes(buf, nonce, SS_ROUTING_ID_NONCE);
    }
    return hex_bytes(arg, nonce, SS_ROUTING_ID_NONCE);
}

static int send_link(void *s, uint8_t kind, uint32_t n, uint64_t tag, int more)
{
    ss_link_t l = { .kind = kind, .n = n, .tag = tag };
    uint8_t b[SS_LINK_SIZE];
    ss_link_encode(&l, b);
    return zmq_send(s, b, sizeof b, more ? ZMQ_SNDMORE : 0) < 0 ? -1 : 0;
}

/* One DATA batch of no events whose lineage is (source, seq). */
static int publish(void *s, uint64_t self, uint64_t seq, uint64_t source)
{
    ss_header_t h = { .type = SS_MSG_DATA, .stream = SS_DEFAULT_STREAM, .producer = self,
                      .seq = seq };
    uint8_t hb[SS_HEADER_SIZE], lin[SS_LINEAGE_ENTRY];
    const char *env = getenv("SS_STREAM");
    if (env && *env)
        h.stream = (uint32_t)strtoul(env, NULL, 0);
    ss_header_encode(&h, hb);
    ss_lineage_put(lin, 0, (ss_lineage_id){ .source = source, .seq = seq });
    if (send_link(s, SS_LINK_PUBLISH, 0, seq, 1) != 0
        || zmq_send(s, hb, sizeof hb, ZMQ_SNDMORE) < 0
        || zmq_send(s, lin, sizeof lin, ZMQ_SNDMORE) < 0
        || zmq_send(s, "\x90", 1, 0) < 0)   /* an empty MessagePack array */
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *connect = NULL, *server = NULL, *key = NULL, *rid_key = "own", *join = NULL;
    const char *nonce_opt = NULL;
    uint64_t peer = 0, join_id = 0, lineage = 0;
    int have_join_id = 0, have_lineage = 0, ack = 0, reconnect = 1;
    long credit = 2, npublish = 0, seconds = 10, want_receipts = -1;
    static const struct option opts[] = {
        { "connect", 1, 0, 'c' }, { "server", 1, 0, 's' },   { "key", 1, 0, 'k' },
        { "peer", 1, 0, 'p' },    { "rid-key", 1, 0, 'r' },  { "nonce", 1, 0, 'n' },
        { "join", 1, 0, 'j' },    { "join-id", 1, 0, 'J' },  { "credit", 1, 0, 'C' },
        { "ack", 0, 0, 'a' },     { "publish", 1, 0, 'P' },  { "lineage", 1, 0, 'l' },
        { "seconds", 1, 0, 'S' }, { "no-reconnect", 0, 0, 'R' }, { "receipts", 1, 0, 'E' },
        { 0, 0, 0, 0 },
    };
    if (sodium_init() < 0)
        return usage("libsodium does not start");
    peer = ss_random_id();
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': connect = optarg; break;
        case 's': server = optarg; break;
        case 'k': key = optarg; break;
        case 'p': if (!hex_u64(optarg, &peer)) return usage("--peer takes hex"); break;
        case 'r': rid_key = optarg; break;
        case 'n': nonce_opt = optarg; break;
        case 'j': join = optarg; break;
        case 'J': if (!hex_u64(optarg, &join_id)) return usage("--join-id takes hex");
                  have_join_id = 1; break;
        case 'C': credit = strtol(optarg, NULL, 10); break;
        case 'a': ack = 1; break;
        case 'P': npublish = strtol(optarg, NULL, 10); break;
        case 'l': if (!hex_u64(optarg, &lineage)) return usage("--lineage takes hex");
                  have_lineage = 1; break;
        case 'S': seconds = strtol(optarg, NULL, 10); break;
        case 'R': reconnect = 0; break;
        case 'E': want_receipts = strtol(optarg, NULL, 10); break;
        default: return usage("unknown option");
        }
    }
    if (!connect || !server || !key)
        return usage("--connect, --server and --key are required");
    if (join && strcmp(join, "producer") != 0 && strcmp(join, "consumer") != 0)
        return usage("--join takes producer or consumer");
    if (!have_join_id)
        join_id = peer;
    if (!have_lineage)
        lineage = peer;

    char err[1024], own_pub[SS_Z85_KEY], other_pub[SS_Z85_KEY];
    uint8_t rid[SS_ROUTING_ID_CURVE_SIZE];
    size_t ridlen = SS_ROUTING_ID_CURVE_SIZE;
    void *zctx = zmq_ctx_new();
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0, never = -1;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (!reconnect)
        zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &never, sizeof never);
    if (ss_curve_client_setup_files(s, key, server, own_pub, err, sizeof err) != SS_OK) {
        fprintf(stderr, "impostor: %s\n", err);
        return 1;
    }
    rid[0] = SS_ROUTING_ID_PREFIX;
    ss_put_u64(rid + 1, peer);
    if (strcmp(rid_key, "none") == 0) {
        ridlen = SS_ROUTING_ID_SIZE;
    } else {
        const char *z85 = own_pub;
        if (strcmp(rid_key, "own") != 0) {
            if (ss_curve_load_public(rid_key, other_pub, err, sizeof err) != SS_OK) {
                fprintf(stderr, "impostor: %s\n", err);
                return 1;
            }
            z85 = other_pub;
        }
        zmq_z85_decode(rid + SS_ROUTING_ID_SIZE, z85);
        uint8_t *nonce = rid + SS_ROUTING_ID_SIZE + SS_ROUTING_ID_KEY;
        if (nonce_opt ? !nonce_arg(nonce_opt, nonce) : (randombytes_buf(nonce, 16), 0))
            return usage("--nonce takes 32 hex digits, save:FILE or load:FILE");
    }
    if (zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, ridlen) != 0 || zmq_connect(s, connect) != 0) {
        fprintf(stderr, "impostor: cannot connect to %s: %s\n", connect, zmq_strerror(errno));
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    fprintf(stderr, "impostor: key %s, peer %016" PRIx64 ", routing id of %zu bytes\n", own_pub,
            peer, ridlen);

    int is_producer = join && strcmp(join, "producer") == 0;
    if (join)
        send_link(s, SS_LINK_JOIN, is_producer ? SS_ROLE_PRODUCER : SS_ROLE_CONSUMER, join_id, 0);
    long welcomed = 0, delivered = 0, receipts = 0, refused = 0, published = 0;
    int64_t end = ss_now_ms() + seconds * 1000, sent = ss_now_ms();
    int eos = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    struct sigaction sa = { .sa_handler = on_term };
    sigaction(SIGTERM, &sa, NULL);
    while (!eos && !stop && receipts != want_receipts && ss_now_ms() < end) {
        zmq_pollitem_t it = { s, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, 50) < 0)
            break;
        if (ss_now_ms() - sent >= HEARTBEAT_MS) {
            send_link(s, SS_LINK_HEARTBEAT, 0, 0, 0);
            sent = ss_now_ms();
        }
        while (zmq_msg_recv(&m, s, ZMQ_DONTWAIT) >= 0) {
            ss_link_t l;
            int ok = ss_link_decode(zmq_msg_data(&m), zmq_msg_size(&m), &l) == SS_OK;
            int is_eos = 0;
            for (int part = 0; zmq_msg_more(&m); part++) {
                zmq_msg_recv(&m, s, 0);
                ss_header_t h;
                if (part == 0 && ss_header_decode(zmq_msg_data(&m), zmq_msg_size(&m), &h) == SS_OK)
                    is_eos = h.type == SS_MSG_EOS;
            }
            if (!ok)
                continue;
            if (l.kind == SS_LINK_WELCOME) {
                welcomed++;
                printf("welcome\n");
                if (!is_producer)
                    send_link(s, SS_LINK_CREDIT, (uint32_t)credit, 0, 0);
                for (; is_producer && published < npublish; published++)
                    publish(s, join_id, (uint64_t)published, lineage);
            } else if (l.kind == SS_LINK_DELIVER) {
                delivered++;
                printf("deliver %" PRIu64 " %s\n", l.tag, is_eos ? "eos" : "data");
                if (ack || is_eos)
                    send_link(s, SS_LINK_ACK, 0, l.tag, 0);
                send_link(s, SS_LINK_CREDIT, 1, 0, 0);
                eos = is_eos;
            } else if (l.kind == SS_LINK_RECEIPT) {
                receipts++;
                refused += (l.flags & SS_LINK_REFUSED) != 0;
                printf("receipt %" PRIu64 " %s\n", l.tag,
                       (l.flags & SS_LINK_REFUSED) ? "refused" : "ok");
            }
        }
    }
    zmq_msg_close(&m);
    printf("summary welcomed %ld delivered %ld receipts %ld refused %ld\n", welcomed, delivered,
           receipts, refused);
    zmq_close(s);
    zmq_ctx_term(zctx);
    return 0;
}
