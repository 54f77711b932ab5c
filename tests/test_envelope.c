/*
 * test_envelope.c - whole messages sealed into a run (lib/wire/envelope.c,
 * docs/crypto.md): what an envelope seals names its run, role and position,
 * and what it opens must be of its run, from the position before its own,
 * with a source only at position 0. Changing the run, role or position in a
 * payload's prefix fails authentication; a component not told its run or
 * position adopts the first input's and holds the rest to it; a batch under
 * another key is told apart (its key id named); statistics records name
 * their maker; run ids parse strictly. Each refusal has its control: the
 * same message opens where it belongs.
 */
#include "test.h"

#include "crypto/crypto.h"
#include "wire/envelope.h"

#include <stdlib.h>
#include <string.h>

static ss_key_t key, other_key;
static const uint8_t run_a[SS_RUN_BYTES] = { 0xaa, 1, 2, 3 };
static const uint8_t run_b[SS_RUN_BYTES] = { 0xbb, 1, 2, 3 };

static int group_setup(void **state)
{
    (void)state;
    if (ss_crypto_init() != SS_OK)
        return -1;
    ss_key_generate(&key);
    ss_key_generate(&other_key);
    return 0;
}

/* A sealed message as a router forwards it. */
typedef struct {
    uint8_t header[SS_HEADER_SIZE];
    uint8_t lineage[SS_LINEAGE_ENTRY];
    uint8_t *payload;
    size_t len;
} msg;

static ss_envelope_t *env(const ss_key_t *k, const uint8_t *run, ss_maker_role role, int pos)
{
    ss_envelope_t *e = NULL;
    ss_envelope_opts o = { .run = run, .role = role, .pos = pos };
    assert_int_equal(ss_envelope_new(k, &o, &e), SS_OK);
    return e;
}

static void seal(ss_envelope_t *e, uint64_t seq, msg *m)
{
    ss_header_t h = { .type = SS_MSG_DATA, .stream = SS_DEFAULT_STREAM, .producer = 77, .seq = seq,
                      .count = 1, .origin = 1 };
    ss_lineage_put(m->lineage, 0, (ss_lineage_id){ 77, seq });
    const uint8_t *sealed;
    size_t slen;
    assert_int_equal(ss_envelope_seal(e, &h, m->lineage, sizeof m->lineage, "\x91\xa1x", 3, &sealed,
                                      &slen), SS_OK);
    ss_header_encode(&h, m->header);
    m->payload = malloc(slen);
    assert_non_null(m->payload);
    memcpy(m->payload, sealed, slen);
    m->len = slen;
}

static ss_err open_msg(ss_envelope_t *e, const msg *m, ss_open_info *info, char *why, size_t whylen)
{
    const uint8_t *plain;
    size_t plen;
    why[0] = 0;
    return ss_envelope_open(e, m->header, m->lineage, sizeof m->lineage, m->payload, m->len, &plain,
                            &plen, info, why, whylen);
}

static void run_role_and_position_are_checked(void **state)
{
    (void)state;
    ss_envelope_t *source = env(&key, run_a, SS_MAKER_SOURCE, 0);
    ss_envelope_t *stage1 = env(&key, run_a, SS_MAKER_WORKER, 1);
    ss_envelope_t *stage2 = env(&key, run_a, SS_MAKER_WORKER, 2);
    ss_envelope_t *other_run = env(&key, run_b, SS_MAKER_WORKER, 1);
    msg m;
    char why[256];
    ss_open_info info;
    seal(source, 1, &m);
    /* the control: position 1 of run a takes it, and learns who made it */
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_OK);
    assert_int_equal(info.maker.role, SS_MAKER_SOURCE);
    assert_int_equal(info.maker.pos, 0);
    assert_memory_equal(info.maker.run, run_a, SS_RUN_BYTES);
    /* another run */
    assert_int_equal(open_msg(other_run, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_true(info.authentic);
    assert_false(info.foreign);
    ASSERT_CONTAINS(why, "batch of another run (run aa010203");
    ASSERT_CONTAINS(why, "this run is bb010203");
    /* another position: a stage skipped */
    assert_int_equal(open_msg(stage2, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_string_equal(why, "made at stage position 0, expected 1");
    /* each byte of run and position, and the role, changed in the prefix */
    for (size_t i = SS_SEAL_PREFIX_FILE; i < SS_SEAL_PREFIX; i++) {
        m.payload[i] ^= 0x80;
        assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
        assert_false(info.authentic);
        ASSERT_CONTAINS(why, "authentication failed");
        m.payload[i] ^= 0x80;
    }
    m.payload[1] = SS_MAKER_WORKER;
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    ASSERT_CONTAINS(why, "authentication failed");
    m.payload[1] = SS_MAKER_SOURCE;
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_OK);
    free(m.payload);
    /* a worker claiming position 0 is not a source */
    ss_envelope_t *worker0 = env(&key, run_a, SS_MAKER_WORKER, 0);
    seal(worker0, 2, &m);
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_string_equal(why, "made by a worker at stage position 0 (only a source is at position 0)");
    free(m.payload);
    /* a source is at 0 only: one sealed as a source at 1 is refused at 2 */
    ss_envelope_t *source1 = env(&key, run_a, SS_MAKER_SOURCE, 1);
    seal(source1, 3, &m);
    assert_int_equal(open_msg(stage2, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    ASSERT_CONTAINS(why, "made by a source at stage position 1");
    free(m.payload);
    ss_envelope_destroy(&source);
    ss_envelope_destroy(&stage1);
    ss_envelope_destroy(&stage2);
    ss_envelope_destroy(&other_run);
    ss_envelope_destroy(&worker0);
    ss_envelope_destroy(&source1);
}

/* Not told its run or position, a consumer adopts those of the first input
 * that authenticates, then refuses another run's; its output link follows
 * it. A worker that knows neither yet cannot seal. */
static void adopts_the_first_input(void **state)
{
    (void)state;
    ss_envelope_t *source = env(&key, run_a, SS_MAKER_SOURCE, 0);
    ss_envelope_t *old = env(&key, run_b, SS_MAKER_SOURCE, 0);
    ss_envelope_t *in = NULL, *out = NULL;
    assert_int_equal(ss_envelope_new(&key, NULL, &in), SS_OK);
    assert_int_equal(ss_envelope_new(&key, NULL, &out), SS_OK);
    ss_maker self;
    int run_known, pos_known;
    ss_envelope_self(in, &self, &run_known, &pos_known);
    assert_false(run_known);
    assert_false(pos_known);
    msg m, n;
    char why[256];
    seal(source, 1, &m);
    seal(old, 1, &n);
    /* a worker seals only what it made from an input */
    ss_header_t h = { .type = SS_MSG_DATA, .seq = 1, .count = 0 };
    const uint8_t *sealed;
    size_t slen;
    assert_int_equal(ss_envelope_seal(out, &h, m.lineage, sizeof m.lineage, "\x90", 1, &sealed, &slen),
                     SS_ERR_USAGE);
    assert_int_equal(open_msg(in, &m, NULL, why, sizeof why), SS_OK);
    ss_envelope_self(in, &self, &run_known, &pos_known);
    assert_true(run_known && pos_known);
    assert_memory_equal(self.run, run_a, SS_RUN_BYTES);
    assert_int_equal(self.pos, 1);
    assert_int_equal(open_msg(in, &n, NULL, why, sizeof why), SS_ERR_CRYPTO);
    ASSERT_CONTAINS(why, "batch of another run");
    /* the output link follows: it seals as position 1 of run a, which
     * position 2 of run a takes */
    assert_int_equal(ss_envelope_follow(out, in), SS_OK);
    msg o;
    seal(out, 2, &o);
    ss_envelope_t *stage2 = env(&key, run_a, SS_MAKER_WORKER, 2);
    ss_open_info info;
    assert_int_equal(open_msg(stage2, &o, &info, why, sizeof why), SS_OK);
    assert_int_equal(info.maker.role, SS_MAKER_WORKER);
    assert_int_equal(info.maker.pos, 1);
    free(m.payload);
    free(n.payload);
    free(o.payload);
    ss_envelope_destroy(&source);
    ss_envelope_destroy(&old);
    ss_envelope_destroy(&in);
    ss_envelope_destroy(&out);
    ss_envelope_destroy(&stage2);
}

/* Another key is told apart from a forgery and named; a sealed file's
 * record (bound to no run) is not a message of a run. */
static void foreign_keys_and_file_records(void **state)
{
    (void)state;
    ss_envelope_t *stranger = env(&other_key, run_a, SS_MAKER_SOURCE, 0);
    ss_envelope_t *stage1 = env(&key, run_a, SS_MAKER_WORKER, 1);
    msg m;
    char why[256], id[2 * SS_KEY_ID_BYTES + 1];
    ss_open_info info;
    seal(stranger, 1, &m);
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_true(info.foreign);
    assert_false(info.authentic);
    ss_key_id_hex(other_key.id, id);
    assert_string_equal(info.key_id, id);
    ASSERT_CONTAINS(why, "sealed with another key");
    free(m.payload);
    /* a tampered payload under the right key is not foreign */
    ss_envelope_t *source = env(&key, run_a, SS_MAKER_SOURCE, 0);
    seal(source, 2, &m);
    m.payload[m.len - 1] ^= 1;
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_false(info.foreign);
    free(m.payload);
    /* a sealed file's record: the file layout, authentic, refused */
    ss_sealer_t *file = NULL;
    assert_int_equal(ss_sealer_new(&key, ss_crypto_default_cipher(), NULL, &file), SS_OK);
    ss_header_t h = { .type = SS_MSG_DATA, .flags = SS_HDR_SEALED, .stream = SS_DEFAULT_STREAM,
                      .producer = 77, .seq = 3, .count = 1 };
    uint8_t ad[SS_HEADER_SIZE + SS_LINEAGE_ENTRY], payload[64];
    size_t plen;
    ss_header_encode(&h, m.header);
    ss_lineage_put(m.lineage, 0, (ss_lineage_id){ 77, 3 });
    memcpy(ad, m.header, SS_HEADER_SIZE);
    memcpy(ad + SS_HEADER_SIZE, m.lineage, SS_LINEAGE_ENTRY);
    assert_int_equal(ss_seal(file, 3, ad, sizeof ad, "\x91\xa1x", 3, payload, &plen), SS_OK);
    m.payload = payload;
    m.len = plen;
    assert_int_equal(open_msg(stage1, &m, &info, why, sizeof why), SS_ERR_CRYPTO);
    assert_true(info.authentic);
    assert_int_equal(info.maker.role, SS_MAKER_FILE);
    assert_string_equal(why, "a sealed file's record, not a message of this run");
    ss_sealer_destroy(&file);
    ss_envelope_destroy(&stranger);
    ss_envelope_destroy(&stage1);
    ss_envelope_destroy(&source);
}

/* A statistics record names its maker; the record of a source opens as a
 * source's of its run, and its context binds it to the component id. */
static void records_name_their_maker(void **state)
{
    (void)state;
    ss_envelope_t *source = env(&key, run_a, SS_MAKER_SOURCE, 0);
    ss_envelope_t *sink = env(&key, run_a, SS_MAKER_WORKER, 3);
    const uint8_t *sealed, *plain;
    size_t slen, plen;
    char why[256];
    ss_maker m;
    assert_int_equal(ss_envelope_seal_record(source, 9, "00000000000000aa", "\x80", 1, &sealed, &slen),
                     SS_OK);
    uint8_t copy[128];
    memcpy(copy, sealed, slen);
    assert_int_equal(ss_envelope_open_record(sink, 9, "00000000000000aa", copy, slen, &plain, &plen,
                                             &m, why, sizeof why), SS_OK);
    assert_int_equal(m.role, SS_MAKER_SOURCE);
    assert_memory_equal(m.run, run_a, SS_RUN_BYTES);
    /* under another component's id, or with its role changed: refused */
    assert_int_equal(ss_envelope_open_record(sink, 9, "00000000000000bb", copy, slen, &plain, &plen,
                                             &m, why, sizeof why), SS_ERR_CRYPTO);
    copy[1] = SS_MAKER_WORKER;
    assert_int_equal(ss_envelope_open_record(sink, 9, "00000000000000aa", copy, slen, &plain, &plen,
                                             &m, why, sizeof why), SS_ERR_CRYPTO);
    ASSERT_CONTAINS(why, "authentication failed");
    ss_envelope_destroy(&source);
    ss_envelope_destroy(&sink);
}

static void run_ids_parse_strictly(void **state)
{
    (void)state;
    uint8_t run[SS_RUN_BYTES], again[SS_RUN_BYTES];
    char hex[2 * SS_RUN_BYTES + 1], err[128];
    int given;
    ss_run_new(run);
    ss_run_hex(run, hex);
    assert_int_equal(strlen(hex), 32);
    assert_int_equal(ss_run_parse(hex, again), SS_OK);
    assert_memory_equal(run, again, SS_RUN_BYTES);
    assert_int_equal(ss_run_parse("00112233445566778899AABBCCDDEEFF", again), SS_OK);
    assert_int_equal(again[15], 0xff);
    assert_int_equal(ss_run_parse("0011223344556677", again), SS_ERR_USAGE);
    assert_int_equal(ss_run_parse("00112233445566778899aabbccddeefg", again), SS_ERR_USAGE);
    assert_int_equal(ss_run_parse("00112233445566778899aabbccddeeff0", again), SS_ERR_USAGE);
    setenv("SS_RUN", "", 1);
    assert_int_equal(ss_run_from_env(again, &given, err, sizeof err), SS_OK);
    assert_false(given);
    setenv("SS_RUN", "xyz", 1);
    assert_int_equal(ss_run_from_env(again, &given, err, sizeof err), SS_ERR_USAGE);
    ASSERT_CONTAINS(err, "SS_RUN=xyz");
    setenv("SS_RUN", hex, 1);
    assert_int_equal(ss_run_from_env(again, &given, err, sizeof err), SS_OK);
    assert_true(given);
    assert_memory_equal(run, again, SS_RUN_BYTES);
    unsetenv("SS_RUN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(run_role_and_position_are_checked),
        cmocka_unit_test(adopts_the_first_input),
        cmocka_unit_test(foreign_keys_and_file_records),
        cmocka_unit_test(records_name_their_maker),
        cmocka_unit_test(run_ids_parse_strictly),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
