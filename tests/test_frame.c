/*
 * test_frame.c - the wire format of docs/protocol.md (lib/wire/frame.c): link
 * frames and stream headers round-trip byte for byte, every wrong size,
 * version, kind or type is refused, lineage frames are checked and
 * normalised.
 */
#include "test.h"

#include "wire/frame.h"

#include <string.h>

static void link_round_trip(void **state)
{
    static const ss_link_t cases[] = {
        { SS_LINK_JOIN, 0, SS_ROLE_PRODUCER, 0x0123456789abcdefull },
        { SS_LINK_WELCOME, 0, 0, 1 },
        { SS_LINK_CREDIT, 0, 0xffffffffu, 0 },
        { SS_LINK_PUBLISH, 0, 0, UINT64_MAX },
        { SS_LINK_RECEIPT, 0x4, 0, 7 },
        { SS_LINK_DELIVER, SS_LINK_REDELIVERED | SS_LINK_LATE, 0, 42 },
        { SS_LINK_ACK, 0, 0, 42 },
        { SS_LINK_HEARTBEAT, 0xffff, 0, 0 },
        { SS_LINK_LEAVE, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[SS_LINK_SIZE];
        ss_link_t out;
        ss_link_encode(&cases[i], buf);
        assert_int_equal(buf[0], SS_WIRE_VERSION);
        assert_int_equal(buf[1], cases[i].kind);
        assert_int_equal(ss_link_decode(buf, sizeof buf, &out), SS_OK);
        assert_int_equal(out.kind, cases[i].kind);
        assert_int_equal(out.flags, cases[i].flags);
        assert_int_equal(out.n, cases[i].n);
        assert_int_equal(out.tag, cases[i].tag);
    }
}

/* The exact bytes of docs/protocol.md: little-endian at fixed offsets. */
static void link_layout(void **state)
{
    ss_link_t l = { SS_LINK_CREDIT, 0x0201, 0x06050403u, 0x0e0d0c0b0a090807ull };
    uint8_t buf[SS_LINK_SIZE];
    ss_link_encode(&l, buf);
    static const uint8_t want[SS_LINK_SIZE] = { 1, 3, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                                0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e };
    assert_memory_equal(buf, want, sizeof want);
}

static void link_rejects(void **state)
{
    uint8_t buf[SS_LINK_SIZE + 8];
    ss_link_t l = { SS_LINK_ACK, 0, 0, 9 }, out;
    memset(buf, 0, sizeof buf);
    ss_link_encode(&l, buf);
    for (size_t len = 0; len <= sizeof buf; len++)
        if (len != SS_LINK_SIZE)
            assert_int_equal(ss_link_decode(buf, len, &out), SS_ERR_FORMAT);
    static const uint8_t versions[] = { 0, 2, 255 };
    for (size_t i = 0; i < sizeof versions; i++) {
        buf[0] = versions[i];
        assert_int_equal(ss_link_decode(buf, SS_LINK_SIZE, &out), SS_ERR_FORMAT);
    }
    buf[0] = SS_WIRE_VERSION;
    static const uint8_t kinds[] = { 0, SS_LINK_LEAVE + 1, 100, 255 };
    for (size_t i = 0; i < sizeof kinds; i++) {
        buf[1] = kinds[i];
        assert_int_equal(ss_link_decode(buf, SS_LINK_SIZE, &out), SS_ERR_FORMAT);
    }
    buf[1] = SS_LINK_ACK;
    assert_int_equal(ss_link_decode(buf, SS_LINK_SIZE, &out), SS_OK);
}

static void header_round_trip(void **state)
{
    static const ss_header_t cases[] = {
        { SS_MSG_DATA, 0, 1, 2, 0, 64, 1 },
        { SS_MSG_DATA, SS_HDR_SEALED, 0xffffffffu, UINT64_MAX, UINT64_MAX, 0xffffffffu, UINT64_MAX },
        { SS_MSG_EOS, 0, SS_DEFAULT_STREAM, 0x0123456789abcdefull, 0, 3, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[SS_HEADER_SIZE];
        ss_header_t out;
        ss_header_encode(&cases[i], buf);
        assert_int_equal(ss_header_decode(buf, sizeof buf, &out), SS_OK);
        assert_int_equal(out.type, cases[i].type);
        assert_int_equal(out.flags, cases[i].flags);
        assert_int_equal(out.stream, cases[i].stream);
        assert_int_equal(out.producer, cases[i].producer);
        assert_int_equal(out.seq, cases[i].seq);
        assert_int_equal(out.count, cases[i].count);
        assert_int_equal(out.origin, cases[i].origin);
    }
}

static void header_layout(void **state)
{
    ss_header_t h = { SS_MSG_EOS, 0x0201, 0x06050403u, 0x0e0d0c0b0a090807ull,
                      0x161514131211100full, 0x1a191817u, 0x2221201f1e1d1c1bull };
    uint8_t buf[SS_HEADER_SIZE];
    ss_header_encode(&h, buf);
    static const uint8_t want[SS_HEADER_SIZE] = {
        1, 2, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
        0x17, 0x18, 0x19, 0x1a, 0, 0, 0, 0,
        0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22,
    };
    assert_memory_equal(buf, want, sizeof want);
}

static void header_rejects(void **state)
{
    uint8_t buf[SS_HEADER_SIZE + 8];
    ss_header_t h = { SS_MSG_DATA, 0, 1, 2, 3, 4, 5 }, out;
    memset(buf, 0, sizeof buf);
    ss_header_encode(&h, buf);
    for (size_t len = 0; len <= sizeof buf; len++)
        if (len != SS_HEADER_SIZE)
            assert_int_equal(ss_header_decode(buf, len, &out), SS_ERR_FORMAT);
    static const uint8_t versions[] = { 0, 2, 255 };
    for (size_t i = 0; i < sizeof versions; i++) {
        buf[0] = versions[i];
        assert_int_equal(ss_header_decode(buf, SS_HEADER_SIZE, &out), SS_ERR_FORMAT);
    }
    buf[0] = SS_WIRE_VERSION;
    static const uint8_t types[] = { 0, 3, 255 };
    for (size_t i = 0; i < sizeof types; i++) {
        buf[1] = types[i];
        assert_int_equal(ss_header_decode(buf, SS_HEADER_SIZE, &out), SS_ERR_FORMAT);
    }
    buf[1] = SS_MSG_DATA;
    for (int i = 28; i < 32; i++) {   /* reserved must be zero */
        buf[i] = 1;
        assert_int_equal(ss_header_decode(buf, SS_HEADER_SIZE, &out), SS_ERR_FORMAT);
        buf[i] = 0;
    }
    assert_int_equal(ss_header_decode(buf, SS_HEADER_SIZE, &out), SS_OK);
}

static void lineage_put_get(void **state)
{
    uint8_t buf[3 * SS_LINEAGE_ENTRY];
    ss_lineage_id ids[3] = { { 1, 2 }, { 1, UINT64_MAX }, { UINT64_MAX, 0 } };
    for (size_t i = 0; i < 3; i++)
        ss_lineage_put(buf, i, ids[i]);
    for (size_t i = 0; i < 3; i++) {
        ss_lineage_id id = ss_lineage_get(buf, i);
        assert_int_equal(id.source, ids[i].source);
        assert_int_equal(id.seq, ids[i].seq);
    }
    /* Little-endian source then seq. */
    assert_int_equal(buf[0], 1);
    assert_int_equal(buf[8], 2);
    size_t n = 99;
    assert_int_equal(ss_lineage_check(buf, sizeof buf, &n), SS_OK);
    assert_int_equal(n, 3);
}

static void lineage_check_rejects(void **state)
{
    uint8_t buf[4 * SS_LINEAGE_ENTRY];
    size_t n = 0;
    memset(buf, 0, sizeof buf);
    assert_int_equal(ss_lineage_check(buf, 0, &n), SS_OK);
    assert_int_equal(n, 0);
    for (size_t len = 1; len < sizeof buf; len++)
        if (len % SS_LINEAGE_ENTRY)
            assert_int_equal(ss_lineage_check(buf, len, &n), SS_ERR_FORMAT);

    static const struct {
        ss_lineage_id a, b;
        ss_err want;
    } pairs[] = {
        { { 1, 1 }, { 1, 2 }, SS_OK },
        { { 1, 9 }, { 2, 0 }, SS_OK },
        { { 1, 2 }, { 1, 2 }, SS_ERR_FORMAT },   /* duplicate */
        { { 1, 3 }, { 1, 2 }, SS_ERR_FORMAT },   /* seq out of order */
        { { 2, 0 }, { 1, 9 }, SS_ERR_FORMAT },   /* source out of order */
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        ss_lineage_put(buf, 0, pairs[i].a);
        ss_lineage_put(buf, 1, pairs[i].b);
        assert_int_equal(ss_lineage_check(buf, 2 * SS_LINEAGE_ENTRY, &n), pairs[i].want);
    }
}

static void lineage_normalise(void **state)
{
    ss_lineage_id ids[] = { { 3, 1 }, { 1, 5 }, { 3, 1 }, { 1, 2 }, { 2, 7 }, { 1, 5 } };
    size_t n = ss_lineage_normalise(ids, sizeof ids / sizeof ids[0]);
    assert_int_equal(n, 4);
    static const ss_lineage_id want[] = { { 1, 2 }, { 1, 5 }, { 2, 7 }, { 3, 1 } };
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ids[i].source, want[i].source);
        assert_int_equal(ids[i].seq, want[i].seq);
    }
    uint8_t buf[4 * SS_LINEAGE_ENTRY];
    for (size_t i = 0; i < n; i++)
        ss_lineage_put(buf, i, ids[i]);
    size_t count;
    assert_int_equal(ss_lineage_check(buf, n * SS_LINEAGE_ENTRY, &count), SS_OK);
    assert_int_equal(count, n);
    assert_int_equal(ss_lineage_normalise(ids, 0), 0);
    ss_lineage_id one = { 5, 5 };
    assert_int_equal(ss_lineage_normalise(&one, 1), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(link_round_trip),
        cmocka_unit_test(link_layout),
        cmocka_unit_test(link_rejects),
        cmocka_unit_test(header_round_trip),
        cmocka_unit_test(header_layout),
        cmocka_unit_test(header_rejects),
        cmocka_unit_test(lineage_put_get),
        cmocka_unit_test(lineage_check_rejects),
        cmocka_unit_test(lineage_normalise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
