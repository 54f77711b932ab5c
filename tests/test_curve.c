/*
 * test_curve.c - CurveZMQ on the links (lib/crypto/curve.c, and its use in
 * lib/net/link.c and lib/net/router.c).
 *
 * Part 1: key files (modes, refusal of a secret file others can read,
 * malformed files, table-driven) and allow-lists (directory, list, one .pub).
 * Part 2: a router thread with an allow-list on tcp://127.0.0.1:* and links
 * in the test thread: allowed clients move batches end to end; an unknown
 * key, a plain client, a client with the wrong router key and a CURVE client
 * of a plain router are refused, quickly and with a message saying why; the
 * router logs and counts refusals and keeps serving the allowed clients.
 * Every wait is bounded (joins time out after at most 2 s).
 */
#include "test.h"

#include "crypto/curve.h"
#include "net/link.h"
#include "net/router.h"

#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define STREAM 0x5353c0deu
#define HB_MS 100
#define LIVE_MS 3000   /* above what the refused joins keep the test thread busy */
#define JOIN_MS 2000

/* ---- helpers ---- */

static int setup(void **state)
{
    unsetenv("SS_CURVE_KEY");
    unsetenv("SS_CURVE_SERVER");
    return test_dir_setup(state);
}

/* ------------------------------------------------------------------------
 * Part 1: key files and allow-lists
 * ------------------------------------------------------------------------ */

static void keygen_writes_both_files(void **state)
{
    const char *key = test_path("k1"), *pub = test_path("k1.pub");
    char err[512];
    assert_int_equal(ss_curve_keygen(key, err, sizeof err), SS_OK);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(pub, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);

    char p1[SS_Z85_KEY], s1[SS_Z85_KEY], p2[SS_Z85_KEY], p3[SS_Z85_KEY];
    assert_int_equal(ss_curve_load_secret(key, p1, s1, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_load_public(pub, p2, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_load_public(key, p3, err, sizeof err), SS_OK);
    ASSERT_STR_EQ(p1, p2);
    ASSERT_STR_EQ(p1, p3);
    assert_true(ss_curve_key_valid(p1));
    assert_true(ss_curve_key_valid(s1));

    char expect[256];
    snprintf(expect, sizeof expect, "securestreams-curve 1\npublic %s\nsecret %s\n", p1, s1);
    char *text = test_read_file(key, NULL);
    ASSERT_STR_EQ(text, expect);
    free(text);
    snprintf(expect, sizeof expect, "securestreams-curve-public 1\npublic %s\n", p1);
    text = test_read_file(pub, NULL);
    ASSERT_STR_EQ(text, expect);
    free(text);

    /* Never overwrite: neither the secret file nor a .pub left alone. */
    assert_int_equal(ss_curve_keygen(key, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "exists; refusing to overwrite it");
    const char *lone = test_path("k2"), *lonepub = test_path("k2.pub");
    test_write_text(lonepub, "something\n");
    assert_int_equal(ss_curve_keygen(lone, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, lonepub);
    assert_int_equal(access(lone, F_OK), -1);

    /* Two key pairs differ. */
    const char *other = test_path("k3");
    char p4[SS_Z85_KEY];
    assert_int_equal(ss_curve_keygen(other, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_load_public(other, p4, err, sizeof err), SS_OK);
    assert_string_not_equal(p1, p4);
}

static void secret_readable_by_others_is_refused(void **state)
{
    const char *key = test_path("loose");
    char err[512];
    assert_int_equal(ss_curve_keygen(key, err, sizeof err), SS_OK);
    char pub[SS_Z85_KEY], sec[SS_Z85_KEY];
    static const mode_t modes[] = { 0644, 0640, 0604, 0620, 0602 };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        assert_int_equal(chmod(key, modes[i]), 0);
        assert_int_equal(ss_curve_load_secret(key, pub, sec, err, sizeof err), SS_ERR_CRYPTO);
        char expect[400];
        snprintf(expect, sizeof expect, "%s: readable or writable by others (mode %04o); "
                 "chmod 600 it", key, (unsigned)modes[i]);
        ASSERT_STR_EQ(err, expect);
    }
    assert_int_equal(chmod(key, 0400), 0);
    assert_int_equal(ss_curve_load_secret(key, pub, sec, err, sizeof err), SS_OK);
    /* The public key of a loose secret file may still be read. */
    assert_int_equal(chmod(key, 0644), 0);
    assert_int_equal(ss_curve_load_public(key, pub, err, sizeof err), SS_OK);
}

static void malformed_key_files(void **state)
{
    char pub[SS_Z85_KEY], sec[SS_Z85_KEY];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    char other_pub[SS_Z85_KEY], other_sec[SS_Z85_KEY];
    assert_int_equal(zmq_curve_keypair(other_pub, other_sec), 0);
    char good_secret[256], swapped[256], short_key[256], no_secret[256], two_public[256];
    char pub_with_secret[256], bad_char[256], crlf[256];
    snprintf(good_secret, sizeof good_secret, "securestreams-curve 1\npublic %s\nsecret %s\n",
             pub, sec);
    snprintf(swapped, sizeof swapped, "securestreams-curve 1\npublic %s\nsecret %s\n",
             other_pub, sec);
    snprintf(short_key, sizeof short_key, "securestreams-curve 1\npublic %.39s\nsecret %s\n",
             pub, sec);
    snprintf(no_secret, sizeof no_secret, "securestreams-curve 1\npublic %s\n", pub);
    snprintf(two_public, sizeof two_public, "securestreams-curve 1\npublic %s\npublic %s\n",
             pub, pub);
    snprintf(pub_with_secret, sizeof pub_with_secret,
             "securestreams-curve-public 1\npublic %s\nsecret %s\n", pub, sec);
    snprintf(bad_char, sizeof bad_char, "securestreams-curve-public 1\npublic %.39s~\n", pub);
    snprintf(crlf, sizeof crlf, "securestreams-curve 1\r\npublic %s\r\nsecret %s\r\n", pub, sec);
    static const struct {
        const char *name;
        int secret;          /* load with load_secret, else load_public */
        int text;            /* index into texts[] */
        ss_err rc;
        const char *msg;     /* expected in the message after "FILE" */
    } cases[] = {
        { "empty", 1, 0, SS_ERR_FORMAT, ": empty" },
        { "junk", 0, 1, SS_ERR_FORMAT, " line 1: not a CurveZMQ key file" },
        { "version", 1, 2, SS_ERR_FORMAT, " line 1: unsupported version" },
        { "datakey", 1, 3, SS_ERR_FORMAT, " line 1: not a CurveZMQ key file" },
        { "swapped", 1, 4, SS_ERR_FORMAT, ": the public key does not belong to the secret key" },
        { "short", 1, 5, SS_ERR_FORMAT, " line 2: the public key is not 40 Z85 characters" },
        { "nosecret", 1, 6, SS_ERR_FORMAT, ": no 'secret KEY' line" },
        { "twopublic", 0, 7, SS_ERR_FORMAT, " line 3: a second public key" },
        { "pubsecret", 0, 8, SS_ERR_FORMAT, " line 3: a secret key in a public key file" },
        { "badchar", 0, 9, SS_ERR_FORMAT, " line 2: the public key is not 40 Z85 characters" },
        { "unknownline", 1, 10, SS_ERR_FORMAT, " line 2: expected 'public KEY' or 'secret KEY'" },
        { "pubforsecret", 1, 11, SS_ERR_FORMAT, ": a public key file; give the secret key file" },
        { "crlf", 1, 12, SS_OK, "" },
        { "good", 1, 13, SS_OK, "" },
    };
    char pubfile[256];
    snprintf(pubfile, sizeof pubfile, "securestreams-curve-public 1\npublic %s\n", pub);
    const char *texts[] = {
        "", "hello\n", "securestreams-curve 2\n", "securestreams-key 1\nid 00\nkey 00\n",
        swapped, short_key, no_secret, two_public, pub_with_secret, bad_char,
        "securestreams-curve 1\nprivate x\n", pubfile, crlf, good_secret,
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = test_path(cases[i].name);
        char err[512], expect[400], p[SS_Z85_KEY], s[SS_Z85_KEY];
        test_write_file(path, texts[cases[i].text], strlen(texts[cases[i].text]), 0600);
        err[0] = '\0';
        ss_err rc = cases[i].secret ? ss_curve_load_secret(path, p, s, err, sizeof err)
                                    : ss_curve_load_public(path, p, err, sizeof err);
        if (rc != cases[i].rc)
            fail_msg("case %s: rc %d, expected %d (%s)", cases[i].name, rc, cases[i].rc, err);
        if (rc == SS_OK) {
            ASSERT_STR_EQ(p, pub);
            continue;
        }
        snprintf(expect, sizeof expect, "%s%s", path, cases[i].msg);
        ASSERT_CONTAINS(err, expect);
    }
    char err[512], p[SS_Z85_KEY], s[SS_Z85_KEY];
    const char *missing = test_path("missing");
    assert_int_equal(ss_curve_load_secret(missing, p, s, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, missing);
    assert_int_equal(ss_curve_load_public(test_dir(), p, err, sizeof err), SS_ERR_FORMAT);
    ASSERT_CONTAINS(err, "not a regular file");
}

static void keygen_pub(const char *name, char pub[SS_Z85_KEY])
{
    const char *path = test_path(name);
    char err[512];
    assert_int_equal(ss_curve_keygen(path, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_load_public(path, pub, err, sizeof err), SS_OK);
}

static int allowed(const ss_curve_allow_t *a, const char *z85)
{
    uint8_t bin[32];
    assert_non_null(zmq_z85_decode(bin, z85));
    return ss_curve_allow_has(a, bin);
}

static void allow_list_forms(void **state)
{
    char a[SS_Z85_KEY], b[SS_Z85_KEY], c[SS_Z85_KEY], d[SS_Z85_KEY], err[1024];
    const char *path;
    assert_int_equal(mkdir(test_path("allow"), 0700), 0);
    assert_int_equal(mkdir(test_path("empty"), 0700), 0);
    assert_int_equal(mkdir(test_path("sub"), 0700), 0);
    keygen_pub("allow/a", a);    /* allow/a (secret, not .pub: ignored), allow/a.pub */
    keygen_pub("allow/b", b);
    keygen_pub("sub/c", c);
    keygen_pub("d", d);
    test_write_text(test_path("allow/README"), "not a key\n");

    /* A directory: its *.pub files. */
    ss_curve_allow_t *al = NULL;
    path = test_path("allow");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_allow_count(al), 2);
    assert_true(allowed(al, a));
    assert_true(allowed(al, b));
    assert_false(allowed(al, c));
    ASSERT_STR_EQ(ss_curve_allow_path(al), path);
    ss_curve_allow_destroy(&al);
    assert_null(al);
    ss_curve_allow_destroy(&al);

    /* A list: keys, comments, relative and absolute paths; duplicates merge. */
    char list[2048];
    snprintf(list, sizeof list, "# clients of router 1\n\n%s\n  sub/c.pub\n%s/d.pub\n%s\n",
             a, test_dir(), a);
    path = test_path("clients.list");
    test_write_text(path, list);
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_allow_count(al), 3);
    assert_true(allowed(al, a));
    assert_true(allowed(al, c));
    assert_true(allowed(al, d));
    assert_false(allowed(al, b));
    ss_curve_allow_destroy(&al);

    /* One .pub file. */
    path = test_path("d.pub");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_allow_count(al), 1);
    assert_true(allowed(al, d));
    ss_curve_allow_destroy(&al);

    /* Errors name the path and line. */
    path = test_path("empty");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "names no client key");
    assert_null(al);
    path = test_path("bad.list");
    test_write_text(path, "# one good, one missing\nsub/c.pub\nsub/nope.pub\n");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_IO);
    char expect[400];
    snprintf(expect, sizeof expect, "%s line 3: cannot open %s/sub/nope.pub", path, test_dir());
    ASSERT_CONTAINS(err, expect);
    path = test_path("d");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "a secret key file");
    path = test_path("nothing-here");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, path);
}

static unsigned roles_of(const ss_curve_allow_t *a, const char *z85)
{
    uint8_t bin[32];
    unsigned roles = 0xdead;
    assert_non_null(zmq_z85_decode(bin, z85));
    assert_true(ss_curve_allow_roles(a, bin, &roles));
    return roles;
}

/* Roles after a list's entries, and in a directory's role subdirectories;
 * a key listed twice has both entries' roles; errors name file and line. */
static void allow_list_roles(void **state)
{
    char a[SS_Z85_KEY], b[SS_Z85_KEY], c[SS_Z85_KEY], d[SS_Z85_KEY], err[1024], rs[64];
    ss_curve_allow_t *al = NULL;
    assert_int_equal(mkdir(test_path("dir"), 0700), 0);
    assert_int_equal(mkdir(test_path("dir/sink"), 0700), 0);
    assert_int_equal(mkdir(test_path("dir/worker"), 0700), 0);
    assert_int_equal(mkdir(test_path("dir/other"), 0700), 0);
    keygen_pub("dir/a", a);          /* top level: any role */
    keygen_pub("dir/sink/b", b);
    keygen_pub("dir/worker/c", c);
    keygen_pub("dir/other/d", d);    /* not a role's name: not read */
    const char *path = test_path("dir");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_allow_count(al), 3);
    assert_int_equal(roles_of(al, a), 0);
    assert_int_equal(roles_of(al, b), SS_CURVE_ROLE_SINK);
    assert_int_equal(roles_of(al, c), SS_CURVE_ROLE_WORKER);
    assert_false(allowed(al, d));
    ss_curve_allow_destroy(&al);

    /* A list: KEY-or-PATH then roles; blanks around them do not matter; a
     * key given twice has the union, and any role once an entry has none. */
    char list[2048];
    snprintf(list, sizeof list,
             "%s source\n"
             "dir/sink/b.pub\tsink  consume \n"
             "%s worker\n%s sink\n"
             "# a comment with blanks\n"
             "%s produce\n%s\n",
             a, c, c, d, d);
    path = test_path("roles.list");
    test_write_text(path, list);
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_allow_count(al), 4);
    assert_int_equal(roles_of(al, a), SS_CURVE_ROLE_SOURCE);
    assert_int_equal(roles_of(al, b), SS_CURVE_ROLE_SINK | SS_CURVE_ROLE_CONSUME);
    assert_int_equal(roles_of(al, c), SS_CURVE_ROLE_WORKER | SS_CURVE_ROLE_SINK);
    assert_int_equal(roles_of(al, d), 0);
    ASSERT_STR_EQ(ss_curve_roles_str(roles_of(al, c), rs, sizeof rs), "worker,sink");
    ASSERT_STR_EQ(ss_curve_roles_str(0, rs, sizeof rs), "any");
    ss_curve_allow_destroy(&al);

    /* An unknown role, after a key or a path: the file and line. */
    path = test_path("typo.list");
    snprintf(list, sizeof list, "%s source\n%s sinks\n", a, b);
    test_write_text(path, list);
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_FORMAT);
    char expect[600];
    snprintf(expect, sizeof expect, "%s line 2: unknown role 'sinks' (the roles are source, "
             "worker, sink, produce, consume", path);
    ASSERT_CONTAINS(err, expect);
    assert_null(al);
    path = test_path("path.list");
    test_write_text(path, "\n\ndir/a.pub source wroker\n");
    assert_int_equal(ss_curve_allow_load(path, &al, err, sizeof err), SS_ERR_FORMAT);
    snprintf(expect, sizeof expect, "%s line 3: unknown role 'wroker'", path);
    ASSERT_CONTAINS(err, expect);
}

/* What each role may do (docs/curve.md, "Roles"). */
static void role_rules(void **state)
{
    static const struct {
        unsigned roles;
        int produce, consume;
        int publish_own, publish_other, publish_mixed;   /* only_self; none; names self + others */
    } t[] = {
        { 0, 1, 1, 1, 1, 1 },
        { SS_CURVE_ROLE_SOURCE, 1, 0, 1, 0, 0 },
        { SS_CURVE_ROLE_WORKER, 1, 1, 0, 1, 0 },
        { SS_CURVE_ROLE_SINK, 0, 1, 0, 0, 0 },
        { SS_CURVE_ROLE_PRODUCE, 1, 0, 1, 1, 1 },
        { SS_CURVE_ROLE_CONSUME, 0, 1, 0, 0, 0 },
        { SS_CURVE_ROLE_SOURCE | SS_CURVE_ROLE_WORKER, 1, 1, 1, 1, 0 },
        { SS_CURVE_ROLE_SOURCE | SS_CURVE_ROLE_SINK, 1, 1, 1, 0, 0 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        assert_int_equal(!!ss_curve_roles_may_produce(t[i].roles), t[i].produce);
        assert_int_equal(!!ss_curve_roles_may_consume(t[i].roles), t[i].consume);
        assert_int_equal(ss_curve_roles_may_publish(t[i].roles, 1, 1), t[i].publish_own);
        assert_int_equal(ss_curve_roles_may_publish(t[i].roles, 0, 0), t[i].publish_other);
        assert_int_equal(ss_curve_roles_may_publish(t[i].roles, 0, 1), t[i].publish_mixed);
    }
}

static void link_opts_from_environment(void **state)
{
    ss_link_opts o;
    ss_link_opts_init(&o);
    assert_null(o.curve_key);
    assert_null(o.curve_server);
    setenv("SS_CURVE_KEY", "/keys/worker", 1);
    setenv("SS_CURVE_SERVER", "", 1);
    ss_link_opts_init(&o);
    ASSERT_STR_EQ(o.curve_key, "/keys/worker");
    assert_null(o.curve_server);
    setenv("SS_CURVE_SERVER", "/keys/router.pub", 1);
    ss_link_opts_init(&o);
    ASSERT_STR_EQ(o.curve_server, "/keys/router.pub");
    unsetenv("SS_CURVE_KEY");
    unsetenv("SS_CURVE_SERVER");
}

/* ------------------------------------------------------------------------
 * Part 2: a CurveZMQ router and links on loopback
 * ------------------------------------------------------------------------ */

typedef struct {
    void *zctx;
    test_router tr;
    char key[300], pub[300], allow[300];   /* router's key files, allow-list dir */
} router_run;

/* Keys: router "rk" (its .pub is what clients name), clients "good" and
 * "good2" in the allow-list directory, "stranger" outside it. */
static void make_keys(router_run *rr)
{
    char err[512];
    assert_int_equal(mkdir(test_path("allowed"), 0700), 0);
    snprintf(rr->key, sizeof rr->key, "%s", test_path("rk"));
    snprintf(rr->pub, sizeof rr->pub, "%s", test_path("rk.pub"));
    snprintf(rr->allow, sizeof rr->allow, "%s", test_path("allowed"));
    assert_int_equal(ss_curve_keygen(rr->key, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_keygen(test_path("allowed/good"), err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_keygen(test_path("allowed/good2"), err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_keygen(test_path("stranger"), err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_keygen(test_path("other-router"), err, sizeof err), SS_OK);
}

static void router_start(router_run *rr, int curve)
{
    ss_router_opts o;
    ss_router_opts_init(&o);
    o.frontend = "tcp://127.0.0.1:*";
    o.backend = "tcp://127.0.0.1:*";
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    if (curve) {
        o.curve_key = rr->key;
        o.curve_allow = rr->allow;
    }
    rr->zctx = zmq_ctx_new();
    assert_non_null(rr->zctx);
    test_router_start(&rr->tr, rr->zctx, &o);
}

/* Wait for the router to end (at most secs), take its statistics, destroy it. */
static ss_err router_finish(router_run *rr, int secs, ss_router_stats *st)
{
    ss_err rc = test_router_finish(&rr->tr, secs);
    ss_router_get_stats(rr->tr.r, st);
    ss_router_destroy(&rr->tr.r);
    return rc;
}

static ss_link_opts link_opts(const char *name, const char *key, const char *server)
{
    ss_link_opts o;
    ss_link_opts_init(&o);
    o.name = name;
    o.stream = STREAM;
    o.heartbeat_ms = HB_MS;
    o.liveness_ms = LIVE_MS;
    o.join_timeout_ms = JOIN_MS;
    o.curve_key = key;
    o.curve_server = server;
    return o;
}

static void publish_batches(ss_producer_t *p, uint64_t id, int first, int n)
{
    uint8_t payload[100];
    for (int i = first; i < first + n; i++) {
        uint8_t lin[SS_LINEAGE_ENTRY];
        ss_lineage_put(lin, 0, (ss_lineage_id){ id, (uint64_t)i });
        memset(payload, i & 0xff, sizeof payload);
        ss_header_t h = { SS_MSG_DATA, 0, STREAM, id, (uint64_t)i, 1, (uint64_t)i };
        assert_int_equal(ss_producer_publish(p, &h, lin, sizeof lin, payload, sizeof payload,
                                             NULL), SS_OK);
    }
    assert_int_equal(ss_producer_drain(p, 5000), SS_OK);
    assert_int_equal(ss_producer_refused(p), 0);
}

static void publish_eos(ss_producer_t *p, uint64_t id, uint64_t seq)
{
    msgpack_sbuffer sb;
    test_eos_payload(&sb, &id, 1, NULL, 0, 0);
    ss_header_t h = { SS_MSG_EOS, 0, STREAM, id, seq, 1, 0 };
    assert_int_equal(ss_producer_publish(p, &h, "", 0, sb.data, sb.size, NULL), SS_OK);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(ss_producer_drain(p, 5000), SS_OK);
}

/* Receive n batches of producer `id` (seqs first .. first+n-1) and ack them. */
static void consume_batches(ss_consumer_t *c, uint64_t id, int first, int n)
{
    for (int i = 0; i < n; i++) {
        ss_delivery_t d;
        assert_int_equal(ss_consumer_recv(c, 5000, &d), SS_OK);
        assert_int_equal(d.header.type, SS_MSG_DATA);
        assert_int_equal(d.header.producer, id);
        assert_int_equal(d.header.seq, (uint64_t)(first + i));
        assert_int_equal(d.payload_len, 100);
        assert_int_equal(d.payload[0], (first + i) & 0xff);
        assert_int_equal(ss_consumer_ack(c, d.tag), SS_OK);
    }
}

static void consume_eos(ss_consumer_t *c)
{
    ss_delivery_t d;
    assert_int_equal(ss_consumer_recv(c, 5000, &d), SS_OK);
    assert_int_equal(d.header.type, SS_MSG_EOS);
    assert_int_equal(ss_consumer_ack(c, d.tag), SS_OK);
}

static void allowed_clients_move_batches(void **state)
{
    router_run rr;
    memset(&rr, 0, sizeof rr);
    make_keys(&rr);
    router_start(&rr, 1);
    char good[300], good2[300], err[1024];
    snprintf(good, sizeof good, "%s", test_path("allowed/good"));
    snprintf(good2, sizeof good2, "%s", test_path("allowed/good2"));
    ss_link_opts co = link_opts("curve-consumer", good2, rr.pub);
    ss_consumer_t *c = NULL;
    if (ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &co, &c, err, sizeof err) != SS_OK)
        fail_msg("consumer: %s", err);
    ss_link_opts po = link_opts("curve-producer", good, rr.pub);
    po.id = 0xc0de;
    ss_producer_t *p = NULL;
    if (ss_producer_new(rr.zctx, ss_router_frontend(rr.tr.r), &po, NULL, NULL, &p, err,
                        sizeof err) != SS_OK)
        fail_msg("producer: %s", err);
    publish_batches(p, 0xc0de, 0, 200);
    publish_eos(p, 0xc0de, 200);
    consume_batches(c, 0xc0de, 0, 200);
    consume_eos(c);
    ss_router_stats st;
    assert_int_equal(router_finish(&rr, 10, &st), SS_OK);
    assert_int_equal(st.batches_in, 200);
    assert_int_equal(st.batches_out, 200);
    assert_int_equal(st.refused, 0);
    assert_int_equal(st.auth_refused, 0);
    ss_producer_destroy(&p);
    ss_consumer_destroy(&c);
    zmq_ctx_term(rr.zctx);
}

static void unknown_and_plain_clients_are_refused(void **state)
{
    router_run rr;
    memset(&rr, 0, sizeof rr);
    make_keys(&rr);
    test_capture_start();   /* the teardown ends it if the test fails */
    router_start(&rr, 1);
    char good[300], stranger[300], err[1024];
    snprintf(good, sizeof good, "%s", test_path("allowed/good"));
    snprintf(stranger, sizeof stranger, "%s", test_path("stranger"));
    char stranger_pub[SS_Z85_KEY];
    assert_int_equal(ss_curve_load_public(stranger, stranger_pub, err, sizeof err), SS_OK);

    ss_link_opts co = link_opts("allowed-consumer", good, rr.pub);
    ss_consumer_t *c = NULL;
    if (ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &co, &c, err, sizeof err) != SS_OK)
        fail_msg("consumer: %s", err);
    ss_link_opts po = link_opts("allowed-producer", good, rr.pub);
    po.id = 0xa11;
    ss_producer_t *p = NULL;
    if (ss_producer_new(rr.zctx, ss_router_frontend(rr.tr.r), &po, NULL, NULL, &p, err,
                        sizeof err) != SS_OK)
        fail_msg("producer: %s", err);
    publish_batches(p, 0xa11, 0, 50);

    /* An unknown key: refused at once, not after the join timeout. */
    ss_link_opts so = link_opts("stranger", stranger, rr.pub);
    ss_producer_t *sp = NULL;
    int64_t t0 = ss_now_ms();
    assert_int_equal(ss_producer_new(rr.zctx, ss_router_frontend(rr.tr.r), &so, NULL, NULL, &sp,
                                     err, sizeof err), SS_ERR_CRYPTO);
    ASSERT_INT_LT(ss_now_ms() - t0, JOIN_MS);
    assert_null(sp);
    char expect[512];
    snprintf(expect, sizeof expect, "the router at %s refused this client's CurveZMQ key "
             "(public key %s", ss_router_frontend(rr.tr.r), stranger_pub);
    ASSERT_CONTAINS(err, expect);
    ss_consumer_t *sc = NULL;
    assert_int_equal(ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &so, &sc, err, sizeof err),
                     SS_ERR_CRYPTO);
    ASSERT_CONTAINS(err, "refused this client's CurveZMQ key");

    /* A client without CurveZMQ. */
    ss_link_opts plain = link_opts("plain", NULL, NULL);
    t0 = ss_now_ms();
    assert_int_equal(ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &plain, &sc, err,
                                     sizeof err), SS_ERR_CRYPTO);
    ASSERT_INT_LT(ss_now_ms() - t0, JOIN_MS);
    /* Either the client saw the mechanism mismatch, or the router hung up first. */
    snprintf(expect, sizeof expect, "the router at %s ", ss_router_backend(rr.tr.r));
    ASSERT_CONTAINS(err, expect);
    ASSERT_CONTAINS(err, "requires CurveZMQ: set SS_CURVE_KEY");

    /* A client that names another router's public key: the router cannot
     * read its handshake and hangs up; the client gives up after a few. */
    char wrong[300];
    snprintf(wrong, sizeof wrong, "%s", test_path("other-router.pub"));
    ss_link_opts wo = link_opts("wrong-server", good, wrong);
    t0 = ss_now_ms();
    assert_int_equal(ss_producer_new(rr.zctx, ss_router_frontend(rr.tr.r), &wo, NULL, NULL, &sp,
                                     err, sizeof err), SS_ERR_CRYPTO);
    ASSERT_INT_LT(ss_now_ms() - t0, JOIN_MS);
    snprintf(expect, sizeof expect, "the router at %s closed the connection during the CurveZMQ "
             "handshake 5 times in a row: is SS_CURVE_SERVER the public key of this router",
             ss_router_frontend(rr.tr.r));
    ASSERT_CONTAINS(err, expect);

    /* An unknown key with a router that answers nothing in time: the join
     * timeout names CurveZMQ. (A plain ROUTER socket that never answers.) */
    void *mute = zmq_socket(rr.zctx, ZMQ_ROUTER);
    assert_non_null(mute);
    char mute_pub[SS_Z85_KEY], mute_sec[SS_Z85_KEY];
    assert_int_equal(ss_curve_load_secret(rr.key, mute_pub, mute_sec, err, sizeof err), SS_OK);
    assert_int_equal(ss_curve_server_setup(mute, mute_sec, err, sizeof err), SS_OK);
    assert_int_equal(zmq_bind(mute, "tcp://127.0.0.1:*"), 0);
    char mute_addr[256];
    size_t mute_len = sizeof mute_addr;
    assert_int_equal(zmq_getsockopt(mute, ZMQ_LAST_ENDPOINT, mute_addr, &mute_len), 0);
    wo = link_opts("unanswered", good, rr.pub);
    wo.join_timeout_ms = 400;
    assert_int_equal(ss_producer_new(rr.zctx, mute_addr, &wo, NULL, NULL, &sp, err, sizeof err),
                     SS_ERR_TIMEOUT);
    snprintf(expect, sizeof expect, "no router answered at %s within 0.4 s (with CurveZMQ: is "
             "this client's key in the router's allow-list, with a role that may join as a "
             "producer?)", mute_addr);
    ASSERT_STR_EQ(err, expect);
    zmq_close(mute);

    /* The allowed clients are still served. */
    publish_batches(p, 0xa11, 50, 50);
    publish_eos(p, 0xa11, 100);
    consume_batches(c, 0xa11, 0, 100);
    consume_eos(c);
    ss_router_stats st;
    assert_int_equal(router_finish(&rr, 10, &st), SS_OK);
    char *log = test_capture_stop();
    assert_int_equal(st.batches_in, 100);
    ASSERT_UINT_GE(st.auth_refused, 3);   /* stranger twice, plain once, wrong key */
    snprintf(expect, sizeof expect, "refused a CURVE client from 127.0.0.1 with public key %s: "
             "not in the allow-list (%s)", stranger_pub, rr.allow);
    ASSERT_CONTAINS(log, expect);
    ASSERT_CONTAINS(log, "refused a client on the backend");   /* the plain one */
    ASSERT_CONTAINS(log, "its CurveZMQ handshake does not decrypt");
    ASSERT_CONTAINS(log, "CurveZMQ: server public key");
    /* One line for the stranger's key however often it came back. */
    const char *first = strstr(log, stranger_pub);
    assert_non_null(first);
    ASSERT_NOT_CONTAINS(strstr(first, "\n"), "with public key");
    free(log);
    ss_producer_destroy(&p);
    ss_consumer_destroy(&c);
    zmq_ctx_term(rr.zctx);
}

static void curve_client_of_plain_router(void **state)
{
    router_run rr;
    memset(&rr, 0, sizeof rr);
    make_keys(&rr);
    router_start(&rr, 0);
    char good[300], err[1024];
    snprintf(good, sizeof good, "%s", test_path("allowed/good"));
    ss_link_opts o = link_opts("curve-only", good, rr.pub);
    ss_consumer_t *c = NULL;
    int64_t t0 = ss_now_ms();
    assert_int_equal(ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &o, &c, err, sizeof err),
                     SS_ERR_CRYPTO);
    ASSERT_INT_LT(ss_now_ms() - t0, JOIN_MS);
    ASSERT_CONTAINS(err, "does not use CurveZMQ, but this link does");
    /* A plain client still joins a plain router. */
    o = link_opts("plain", NULL, NULL);
    if (ss_consumer_new(rr.zctx, ss_router_backend(rr.tr.r), &o, &c, err, sizeof err) != SS_OK)
        fail_msg("plain consumer: %s", err);
    ss_consumer_destroy(&c);
    rr.tr.stop = 1;
    ss_router_stats st;
    assert_int_equal(router_finish(&rr, 5, &st), SS_ERR_CLOSED);
    assert_int_equal(st.auth_refused, 0);
    zmq_ctx_term(rr.zctx);
}

static void half_configured_is_a_usage_error(void **state)
{
    router_run rr;
    memset(&rr, 0, sizeof rr);
    make_keys(&rr);
    char good[300], err[1024];
    snprintf(good, sizeof good, "%s", test_path("allowed/good"));
    void *zctx = zmq_ctx_new();
    ss_producer_t *p = NULL;
    ss_link_opts o = link_opts("half", good, NULL);
    assert_int_equal(ss_producer_new(zctx, "tcp://127.0.0.1:1", &o, NULL, NULL, &p, err,
                                     sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "tcp://127.0.0.1:1");
    ASSERT_CONTAINS(err, "not the router's public key file (SS_CURVE_SERVER)");
    ss_consumer_t *c = NULL;
    o = link_opts("half", NULL, rr.pub);
    assert_int_equal(ss_consumer_new(zctx, "tcp://127.0.0.1:1", &o, &c, err, sizeof err),
                     SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "not this client's secret key file (SS_CURVE_KEY)");
    assert_null(c);
    /* A key that does not load is named. */
    char loose[300];
    snprintf(loose, sizeof loose, "%s", test_path("allowed/good2"));
    assert_int_equal(chmod(loose, 0644), 0);
    o = link_opts("loose", loose, rr.pub);
    assert_int_equal(ss_consumer_new(zctx, "tcp://127.0.0.1:1", &o, &c, err, sizeof err),
                     SS_ERR_CRYPTO);
    ASSERT_CONTAINS(err, "readable or writable by others (mode 0644)");

    ss_router_opts ro;
    ss_router_opts_init(&ro);
    ro.frontend = ro.backend = "tcp://127.0.0.1:*";
    ro.curve_key = rr.key;
    ss_router_t *r = NULL;
    assert_int_equal(ss_router_new(zctx, &ro, &r, err, sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "--curve-allow");
    ro.curve_key = NULL;
    ro.curve_allow = rr.allow;
    assert_int_equal(ss_router_new(zctx, &ro, &r, err, sizeof err), SS_ERR_USAGE);
    assert_null(r);
    /* A router given its public key file instead of its secret key. */
    ro.curve_key = rr.pub;
    assert_int_equal(ss_router_new(zctx, &ro, &r, err, sizeof err), SS_ERR_FORMAT);
    ASSERT_CONTAINS(err, "a public key file");
    /* Two CurveZMQ routers cannot share a context (one ZAP endpoint). */
    ro.curve_key = rr.key;
    ss_router_t *r2 = NULL;
    assert_int_equal(ss_router_new(zctx, &ro, &r, err, sizeof err), SS_OK);
    assert_int_equal(ss_router_new(zctx, &ro, &r2, err, sizeof err), SS_ERR_IO);
    ASSERT_CONTAINS(err, "one CurveZMQ router per ZeroMQ context");
    ss_router_destroy(&r);
    /* ... but one may follow another. */
    assert_int_equal(ss_router_new(zctx, &ro, &r, err, sizeof err), SS_OK);
    ss_router_destroy(&r);
    zmq_ctx_term(zctx);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(keygen_writes_both_files, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(secret_readable_by_others_is_refused, setup,
                                        test_dir_teardown),
        cmocka_unit_test_setup_teardown(malformed_key_files, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(allow_list_forms, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(allow_list_roles, setup, test_dir_teardown),
        cmocka_unit_test(role_rules),
        cmocka_unit_test_setup_teardown(link_opts_from_environment, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(allowed_clients_move_batches, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(unknown_and_plain_clients_are_refused, setup,
                                        test_dir_teardown),
        cmocka_unit_test_setup_teardown(curve_client_of_plain_router, setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(half_configured_is_a_usage_error, setup,
                                        test_dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
