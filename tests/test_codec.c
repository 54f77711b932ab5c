/*
 * test_codec.c - Lua <-> MessagePack batches (lib/wire/codec.c): round trips of
 * every type, the array/map rule, the integer/float distinction, bounds that
 * leave the batch unchanged, and malformed or truncated payloads.
 */
#include "test.h"

#include "wire/codec.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Push the value of a Lua expression. */
static void eval(lua_State *L, const char *expr)
{
    char code[512];
    snprintf(code, sizeof code, "return %s", expr);
    if (luaL_dostring(L, code) != LUA_OK)
        fail_msg("evaluating %s: %s", expr, lua_tostring(L, -1));
}

/* Pops the two top values; 1 when deq says they are equal. */
static int deep_equal(lua_State *L)
{
    lua_getglobal(L, "deq");
    lua_insert(L, -3);
    assert_int_equal(lua_pcall(L, 2, 1, 0), LUA_OK);
    int eq = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return eq;
}

static const char *const round_trip_cases[] = {
    "nil", "true", "false",
    "0", "1", "-1", "127", "128", "255", "256", "65535", "65536", "-32", "-33", "-128",
    "-129", "-32768", "-32769", "4294967295", "4294967296", "-2147483649",
    "math.maxinteger", "math.mininteger",
    "1.0", "-0.5", "0.1", "1e300", "-1e-300", "2^53", "math.huge", "-math.huge",
    "''", "'hello'", "'a\\0b'", "string.rep('x', 31)", "string.rep('x', 32)",
    "string.rep('y', 255)", "string.rep('y', 256)", "string.rep('z', 70000)",
    "'\\255\\254 not utf-8'",
    "{}", "{1}", "{1, 2, 3}", "{'a', 'b', 'c'}", "{a = 1}", "{a = 1, b = 'two', c = 3.5}",
    "{1, 2, x = 3}", "{[2] = 2}", "{[1] = 1, [3] = 3}", "{[0] = 0, 1}", "{[-1] = 1}",
    "{[1.5] = 'f'}", "{[true] = 1, [false] = 0}", "{{}}", "{{}, {{}}}",
    "{a = {b = {c = {1, {2, {3}}}}}}", "{1, 2.0, '3', true, {4}}",
    "(function() local t = {} for i = 1, 20 do t['k'..i] = i end return t end)()",
    "(function() local t = {} for i = 1, 15 do t['k'..i] = i end return t end)()",
    "(function() local t = {} for i = 1, 16 do t['k'..i] = {i} end return t end)()",
    "(function() local t = {} for i = 1, 70000 do t['k'..i] = i end return t end)()",
    "(function() local t = {} for i = 2, 70001 do t[i] = 'v' end return t end)()",
    "(function() local t = {} for i = 1, 70000 do t[i] = i end return t end)()",
    "(function() local t = {} for i = 1, 16 do t[i] = i * 0.5 end return t end)()",
    "nest(64)",
};

static void test_round_trip_every_type(void **state)
{
    lua_State *L = *state;
    /* the comparison itself tells these apart */
    static const char *const differ[][2] = {
        {"1", "1.0"}, {"{1}", "{1, 2}"}, {"{a = 1}", "{a = 1, b = 2}"}, {"'a'", "'b'"},
        {"{}", "nil"}, {"{{1}}", "{{2}}"},
    };
    for (size_t i = 0; i < sizeof differ / sizeof *differ; i++) {
        eval(L, differ[i][0]);
        eval(L, differ[i][1]);
        assert_false(deep_equal(L));
    }
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 16u << 20), SS_OK);
    for (size_t i = 0; i < sizeof round_trip_cases / sizeof *round_trip_cases; i++) {
        const char *expr = round_trip_cases[i];
        ss_batch_writer_reset(&w);
        int top = lua_gettop(L);
        eval(L, expr);
        msg[0] = '\0';
        ss_err err = ss_batch_writer_add(&w, L, -1, msg, sizeof msg);
        if (err != SS_OK)
            fail_msg("%s: add: %s (%s)", expr, ss_strerror(err), msg);
        assert_int_equal(lua_gettop(L), top + 1);
        assert_int_equal(w.count, 1);

        const char *payload;
        size_t len;
        ss_batch_writer_finish(&w, &payload, &len);
        assert_int_equal((uint8_t)payload[0], 0x91);
        ss_batch_reader r;
        assert_int_equal(ss_batch_reader_init(&r, payload, len), SS_OK);
        assert_int_equal(r.count, 1);
        err = ss_batch_reader_next(&r, L, msg, sizeof msg);
        if (err != SS_OK)
            fail_msg("%s: next: %s (%s)", expr, ss_strerror(err), msg);
        if (!deep_equal(L))
            fail_msg("%s: decoded value differs", expr);
        assert_int_equal(lua_gettop(L), top);
        assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_ERR_CLOSED);
        assert_int_equal(lua_gettop(L), top);
    }
    ss_batch_writer_cleanup(&w);
}

static void test_integer_float_distinction(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *expr;
        int integer;
    } cases[] = {{"1", 1}, {"1.0", 0}, {"0", 1}, {"-0.0", 0}, {"3 // 1", 1}, {"3 / 1", 0},
                 {"math.maxinteger", 1}, {"2^63", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *buf;
        size_t len;
        eval(L, cases[i].expr);
        assert_int_equal(ss_codec_encode(L, -1, &buf, &len), SS_OK);
        lua_pop(L, 1);
        assert_int_equal(ss_codec_decode(L, buf, len), SS_OK);
        free(buf);
        if (lua_isinteger(L, -1) != cases[i].integer)
            fail_msg("%s: decoded as %s", cases[i].expr,
                     lua_isinteger(L, -1) ? "integer" : "float");
        lua_pop(L, 1);
    }
}

/* The first encoded byte shows whether a table became an array or a map. */
static void test_array_detection(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *expr;
        uint8_t first;
    } cases[] = {
        {"{}", 0x80},                 /* empty table: empty map */
        {"{1, 2, 3}", 0x93},
        {"{'a'}", 0x91},
        {"{a = 1}", 0x81},
        {"{1, 2, nil, 4}", 0x83},     /* hole: map of 3 */
        {"{[2] = 'b'}", 0x81},
        {"{1, 2, x = 3}", 0x83},
        {"{[0] = 0, 1}", 0x82},
        {"{[1.0] = 'one'}", 0x91},    /* float key 1.0 is the integer 1 */
        {"setmetatable({}, {__len = function() return 3 end})", 0x80},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *buf;
        size_t len;
        eval(L, cases[i].expr);
        assert_int_equal(ss_codec_encode(L, -1, &buf, &len), SS_OK);
        lua_pop(L, 1);
        if ((uint8_t)buf[0] != cases[i].first)
            fail_msg("%s: first byte 0x%02x, expected 0x%02x", cases[i].expr,
                     (uint8_t)buf[0], cases[i].first);
        free(buf);
    }
}

/* Maps get the smallest header that fits, as msgpack_pack_map writes it. */
static void test_map_headers(void **state)
{
    lua_State *L = *state;
    static const struct {
        int n;
        uint8_t head[5];
        size_t header;
    } cases[] = {{0, {0x80}, 1},        {1, {0x81}, 1}, {15, {0x8f}, 1},
                 {16, {0xde, 0, 16}, 3}, {65535, {0xde, 0xff, 0xff}, 3},
                 {65536, {0xdf, 0, 1, 0, 0}, 5}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        lua_createtable(L, 0, cases[c].n);
        for (int i = 0; i < cases[c].n; i++) {
            lua_pushfstring(L, "k%d", i);
            lua_pushinteger(L, i);
            lua_rawset(L, -3);
        }
        char *out;
        size_t len;
        assert_int_equal(ss_codec_encode(L, -1, &out, &len), SS_OK);
        assert_memory_equal(out, cases[c].head, cases[c].header);
        assert_int_equal(ss_codec_decode(L, out, len), SS_OK);
        lua_Integer k = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            k++;
            lua_pop(L, 1);
        }
        assert_int_equal(k, cases[c].n);
        free(out);
        lua_pop(L, 2);
    }
}

/* Several events in order; the header is the smallest that fits. */
static void test_batch_headers(void **state)
{
    lua_State *L = *state;
    static const struct {
        uint32_t n;
        uint8_t first;
        size_t header;
    } cases[] = {{0, 0x90, 1}, {15, 0x9f, 1}, {16, 0xdc, 3}, {65535, 0xdc, 3}, {65536, 0xdd, 5}};
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 1u << 20), SS_OK);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ss_batch_writer_reset(&w);
        for (uint32_t i = 0; i < cases[c].n; i++) {
            lua_pushinteger(L, (lua_Integer)i * 3);
            assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
            lua_pop(L, 1);
        }
        const char *payload;
        size_t len;
        ss_batch_writer_finish(&w, &payload, &len);
        assert_int_equal((uint8_t)payload[0], cases[c].first);
        assert_int_equal(len, w.len - w.body + cases[c].header);
        ss_batch_reader r;
        assert_int_equal(ss_batch_reader_init(&r, payload, len), SS_OK);
        assert_int_equal(r.count, cases[c].n);
        for (uint32_t i = 0; i < cases[c].n; i++) {
            assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_OK);
            assert_true(lua_isinteger(L, -1));
            assert_int_equal(lua_tointeger(L, -1), (lua_Integer)i * 3);
            lua_pop(L, 1);
        }
        assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_ERR_CLOSED);
    }
    ss_batch_writer_cleanup(&w);
}

static void test_add_string_and_reuse(void **state)
{
    lua_State *L = *state;
    ss_batch_writer w;
    char msg[128];
    assert_int_equal(ss_batch_writer_init(&w, 1u << 20), SS_OK);
    for (int round = 0; round < 3; round++) {
        ss_batch_writer_reset(&w);
        assert_int_equal(ss_batch_writer_add_string(&w, "2008,1,3", 8), SS_OK);
        assert_int_equal(ss_batch_writer_add_string(&w, "", 0), SS_OK);
        assert_int_equal(ss_batch_writer_add_string(&w, "a\0b", 3), SS_OK);
        assert_int_equal(w.count, 3);
        const char *payload;
        size_t len;
        ss_batch_writer_finish(&w, &payload, &len);
        ss_batch_reader r;
        assert_int_equal(ss_batch_reader_init(&r, payload, len), SS_OK);
        static const struct {
            const char *s;
            size_t n;
        } want[] = {{"2008,1,3", 8}, {"", 0}, {"a\0b", 3}};
        for (int i = 0; i < 3; i++) {
            assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_OK);
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            assert_non_null(s);
            assert_int_equal(n, want[i].n);
            assert_memory_equal(s, want[i].s, n);
            lua_pop(L, 1);
        }
    }
    /* storage kept across resets: no growth for the same volume */
    char *data = w.data;
    size_t cap = w.cap;
    ss_batch_writer_reset(&w);
    assert_int_equal(ss_batch_writer_add_string(&w, "x", 1), SS_OK);
    assert_ptr_equal(w.data, data);
    assert_int_equal(w.cap, cap);
    ss_batch_writer_cleanup(&w);
    assert_null(w.data);
    ss_batch_writer_cleanup(&w);   /* twice is harmless */
}

static void test_limit_leaves_batch_unchanged(void **state)
{
    lua_State *L = *state;
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 64), SS_OK);
    lua_pushstring(L, "first");
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
    lua_pop(L, 1);
    size_t len = w.len;

    eval(L, "string.rep('x', 100)");
    msg[0] = '\0';
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_ERR_TOOBIG);
    lua_pop(L, 1);
    ASSERT_CONTAINS(msg, "64");
    assert_int_equal(w.len, len);
    assert_int_equal(w.count, 1);
    /* a table that fails halfway is rolled back too */
    eval(L, "{'aaaaaaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbbbbbb', 'cccccccccccccccccccc'}");
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_ERR_TOOBIG);
    lua_pop(L, 1);
    assert_int_equal(w.len, len);
    assert_int_equal(ss_batch_writer_add_string(&w, msg, 200), SS_ERR_TOOBIG);
    assert_int_equal(w.len, len);

    /* fill to the limit: everything accepted is readable */
    uint32_t added = 1;
    for (;;) {
        lua_pushinteger(L, 1000);
        ss_err err = ss_batch_writer_add(&w, L, -1, msg, sizeof msg);
        lua_pop(L, 1);
        if (err == SS_ERR_TOOBIG)
            break;
        assert_int_equal(err, SS_OK);
        added++;
    }
    ASSERT_UINT_LE(w.len, w.limit);
    ASSERT_UINT_GT(w.len + 3, w.limit);   /* an int16 is 3 bytes: no room left */
    const char *payload;
    size_t plen;
    ss_batch_writer_finish(&w, &payload, &plen);
    ss_batch_reader r;
    assert_int_equal(ss_batch_reader_init(&r, payload, plen), SS_OK);
    assert_int_equal(r.count, added);
    uint32_t got = 0;
    ss_err err;
    while ((err = ss_batch_reader_next(&r, L, msg, sizeof msg)) == SS_OK) {
        got++;
        lua_pop(L, 1);
    }
    assert_int_equal(err, SS_ERR_CLOSED);
    assert_int_equal(got, added);
    ss_batch_writer_cleanup(&w);

    assert_int_equal(ss_batch_writer_init(&w, 5), SS_ERR_USAGE);
    ss_batch_writer_cleanup(&w);
}

static void test_unencodable_values(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *expr;
        const char *error;
    } cases[] = {
        {"print", "function"},
        {"io.stdout", "userdata"},
        {"coroutine.create(print)", "thread"},
        {"{1, 2, print}", "function"},
        {"{a = {b = print}}", "function"},
        {"(function() local t = {} t.self = t return t end)()", "cycle"},
        {"(function() local t = {{}} t[1][1] = t return t end)()", "cycle"},
        {"nest(65)", "deeper than 64"},
        {"{[print] = 1}", "function"},
    };
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 1u << 20), SS_OK);
    lua_pushstring(L, "kept");
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
    lua_pop(L, 1);
    size_t len = w.len;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int top = lua_gettop(L);
        eval(L, cases[i].expr);
        msg[0] = '\0';
        ss_err err = ss_batch_writer_add(&w, L, -1, msg, sizeof msg);
        if (err != SS_ERR_FORMAT || !strstr(msg, cases[i].error))
            fail_msg("%s: got %s '%s', expected format error with '%s'", cases[i].expr,
                     ss_strerror(err), msg, cases[i].error);
        assert_int_equal(w.len, len);
        assert_int_equal(w.count, 1);
        assert_int_equal(lua_gettop(L), top + 1);
        char *buf = NULL;
        size_t blen;
        assert_int_equal(ss_codec_encode(L, -1, &buf, &blen), SS_ERR_FORMAT);
        assert_null(buf);
        lua_pop(L, 1);
    }
    /* shared, non-cyclic references are fine */
    eval(L, "(function() local s = {1} return {s, s, {s}} end)()");
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
    lua_pop(L, 1);
    /* json.null (a NULL light userdata) travels as nil */
    lua_pushlightuserdata(L, NULL);
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, &w);
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_ERR_FORMAT);
    lua_pop(L, 1);
    assert_int_equal(w.count, 3);
    ss_batch_writer_cleanup(&w);
}

/* Values other writers may produce: bin, float32, uint64, map16/32, str8. */
static void test_foreign_encodings(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *bytes;
        size_t len;
        const char *expr;
    } cases[] = {
        {"\xc4\x03" "abc", 5, "'abc'"},
        {"\xc5\x00\x01" "z", 4, "'z'"},
        {"\xd9\x02" "hi", 4, "'hi'"},
        {"\xca\x3f\xc0\x00\x00", 5, "1.5"},
        {"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, "-1"},
        {"\xcf\x00\x00\x00\x00\x00\x00\x00\x07", 9, "7"},
        {"\xd3\xff\xff\xff\xff\xff\xff\xff\xfe", 9, "-2"},
        {"\xd0\x80", 2, "-128"},
        {"\xde\x00\x01\xa1k\x01", 6, "{k = 1}"},
        {"\xdf\x00\x00\x00\x01\x01\x02", 7, "{[1] = 2}"},
        {"\xdc\x00\x02\xc3\xc2", 5, "{true, false}"},
        {"\x92\xc0\x01", 3, "{nil, 1}"},
        {"\x81\x01\xc0", 3, "{}"},   /* a nil value: the key is absent */
        {"\x81\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1v", 12, "{[1] = 'v'}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int top = lua_gettop(L);
        ss_err err = ss_codec_decode(L, cases[i].bytes, cases[i].len);
        if (err != SS_OK)
            fail_msg("case %zu (%s): %s", i, cases[i].expr, ss_strerror(err));
        eval(L, cases[i].expr);
        if (!deep_equal(L))
            fail_msg("case %zu: decoded value is not %s", i, cases[i].expr);
        assert_int_equal(lua_gettop(L), top);
    }
}

static void test_malformed_payloads(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *bytes;
        size_t len;
        int init_fails;      /* the array header itself is refused */
        int good_events;     /* events that decode before the error */
        const char *error;
    } cases[] = {
        {"", 0, 1, 0, NULL},
        {"\x01", 1, 1, 0, NULL},
        {"\x81\x01\x01", 3, 1, 0, NULL},              /* a map, not an array */
        {"\x92\x01", 2, 1, 0, NULL},                  /* 2 events in 1 byte */
        {"\xdc\x00", 2, 1, 0, NULL},                  /* truncated header */
        {"\xdd\xff\xff\xff\xff\x01", 6, 1, 0, NULL},
        {"\x91\xa5" "ab", 4, 0, 0, "string runs past"},
        {"\x91\xd9\x09" "ab", 5, 0, 0, "string runs past"},
        {"\x91\xd9", 2, 0, 0, "truncated"},
        {"\x91\xc1", 2, 0, 0, "0xc1"},
        {"\x91\xd4\x01\x02", 4, 0, 0, "extension"},
        {"\x91\xc7\x01\x05\x00", 5, 0, 0, "extension"},
        {"\x91\xcd\x01", 3, 0, 0, "truncated"},
        {"\x91\xcb\x00\x00", 4, 0, 0, "truncated"},
        {"\x91\xdc\xff\xff\x01", 5, 0, 0, "array longer"},
        {"\x91\xdf\x00\x01\x00\x00\x01", 7, 0, 0, "map longer"},
        {"\x91\x81\xc0\x01", 4, 0, 0, "nil map key"},
        {"\x91\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01", 12, 0, 0, "NaN map key"},
        {"\x92\x01\xc1", 3, 0, 1, "0xc1"},
        {"\x91\x01\x02", 3, 0, 1, "after the last event"},
        {"\x92\x92\x01", 3, 0, 0, "array longer"},
    };
    char msg[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int top = lua_gettop(L);
        ss_batch_reader r;
        ss_err err = ss_batch_reader_init(&r, cases[i].bytes, cases[i].len);
        if (cases[i].init_fails) {
            if (err != SS_ERR_FORMAT)
                fail_msg("case %zu: init gave %s", i, ss_strerror(err));
            continue;
        }
        assert_int_equal(err, SS_OK);
        int good = 0;
        msg[0] = '\0';
        while ((err = ss_batch_reader_next(&r, L, msg, sizeof msg)) == SS_OK) {
            good++;
            lua_pop(L, 1);
        }
        if (err != SS_ERR_FORMAT || !strstr(msg, cases[i].error) || !strstr(msg, "byte"))
            fail_msg("case %zu: got %s '%s', expected '%s'", i, ss_strerror(err), msg,
                     cases[i].error);
        assert_int_equal(good, cases[i].good_events);
        assert_int_equal(lua_gettop(L), top);
        /* the reader stays finished */
        assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_ERR_CLOSED);
    }

    /* 65 nested arrays: refused, where 64 decode */
    uint8_t deep[70];
    deep[0] = 0x91;
    for (int n = 64; n <= 65; n++) {
        memset(deep + 1, 0x91, (size_t)n);
        deep[n + 1] = 0x01;
        ss_batch_reader r;
        assert_int_equal(ss_batch_reader_init(&r, deep, (size_t)n + 2), SS_OK);
        ss_err err = ss_batch_reader_next(&r, L, msg, sizeof msg);
        if (n == 64) {
            assert_int_equal(err, SS_OK);
            lua_pop(L, 1);
        } else {
            assert_int_equal(err, SS_ERR_FORMAT);
            ASSERT_CONTAINS(msg, "deeper than 64");
        }
    }

    /* a standalone document must be exactly one value */
    int top = lua_gettop(L);
    assert_int_equal(ss_codec_decode(L, "\x01\x02", 2), SS_ERR_FORMAT);
    assert_int_equal(ss_codec_decode(L, "", 0), SS_ERR_FORMAT);
    assert_int_equal(ss_codec_decode(L, "\x92\x01", 2), SS_ERR_FORMAT);
    assert_int_equal(lua_gettop(L), top);
}

/* Every strict prefix of a valid batch is refused, never read past its end. */
static void test_truncated_input(void **state)
{
    lua_State *L = *state;
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 1u << 20), SS_OK);
    static const char *const events[] = {
        "{year = 2008, carrier = 'WN', delays = {1, -2, 3.5}, ok = true}",
        "string.rep('s', 300)", "{{{}}}", "-70000", "1.25", "nil",
        "(function() local t = {} for i = 1, 20 do t[i] = 'v' .. i end return t end)()",
    };
    for (size_t i = 0; i < sizeof events / sizeof *events; i++) {
        eval(L, events[i]);
        assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
        lua_pop(L, 1);
    }
    const char *payload;
    size_t len;
    ss_batch_writer_finish(&w, &payload, &len);
    int top = lua_gettop(L);
    for (size_t cut = 0; cut < len; cut++) {
        char *copy = malloc(cut ? cut : 1);   /* exact size: valgrind sees over-reads */
        assert_non_null(copy);
        memcpy(copy, payload, cut);
        ss_batch_reader r;
        ss_err err = ss_batch_reader_init(&r, copy, cut);
        if (err == SS_OK) {
            while ((err = ss_batch_reader_next(&r, L, msg, sizeof msg)) == SS_OK)
                lua_pop(L, 1);
        }
        if (err != SS_ERR_FORMAT)
            fail_msg("prefix of %zu/%zu bytes: %s", cut, len, ss_strerror(err));
        assert_int_equal(lua_gettop(L), top);
        free(copy);
    }
    ss_batch_writer_cleanup(&w);
}

/* A Lua state out of memory while decoding: an error code, no crash. */
typedef struct {
    size_t used, cap, peak;
} arena;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    arena *a = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        a->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && a->used + (nsize - old) > a->cap)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        a->used = a->used - old + nsize;
    if (a->used > a->peak)
        a->peak = a->used;
    return p;
}

/* A decoder bomb: 60 nested arrays, each declaring as many elements as
 * there are bytes left (so each passes the length check), then nils. Tables
 * are pre-sized from one budget of a slot per payload byte, so decoding it
 * costs a small multiple of its size, not 60 times that; it is refused as
 * truncated once the first array runs out of elements. */
static void test_decode_bomb(void **state)
{
    (void)state;
    enum { LEN = 64 << 10, LEVELS = 60 };
    uint8_t *p = malloc(LEN);
    assert_non_null(p);
    size_t pos = 0;
    p[pos++] = 0x91;   /* a batch of one event */
    for (int i = 0; i < LEVELS; i++) {
        uint32_t n = (uint32_t)(LEN - pos - 5);
        p[pos++] = 0xdd;
        for (int b = 3; b >= 0; b--)
            p[pos++] = (uint8_t)(n >> (8 * b));
    }
    memset(p + pos, 0xc0, LEN - pos);
    arena a = {0, SIZE_MAX, 0};
    lua_State *L = lua_newstate(capped_alloc, &a);
    assert_non_null(L);
    size_t base = a.used;
    a.peak = base;
    ss_batch_reader r;
    char msg[256];
    assert_int_equal(ss_batch_reader_init(&r, p, LEN), SS_OK);
    assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_ERR_FORMAT);
    ASSERT_CONTAINS(msg, "truncated");
    size_t cost = a.peak - base;
    if (cost > 40 * (size_t)LEN)
        fail_msg("decoding a %d-byte bomb took %zu bytes (%zu times its size)", LEN, cost, cost / LEN);
    lua_close(L);
    free(p);
}

static void test_decode_out_of_memory(void **state)
{
    (void)state;
    arena a = {0, SIZE_MAX, 0};
    lua_State *L = lua_newstate(capped_alloc, &a);
    assert_non_null(L);
    luaL_openlibs(L);
    ss_batch_writer w;
    char msg[256];
    assert_int_equal(ss_batch_writer_init(&w, 4u << 20), SS_OK);
    assert_int_equal(luaL_dostring(L, "return string.rep('m', 1000000)"), LUA_OK);
    assert_int_equal(ss_batch_writer_add(&w, L, -1, msg, sizeof msg), SS_OK);
    lua_pop(L, 1);
    lua_gc(L, LUA_GCCOLLECT);
    const char *payload;
    size_t len;
    ss_batch_writer_finish(&w, &payload, &len);
    a.cap = a.used + 100000;   /* far less than the string */
    ss_batch_reader r;
    assert_int_equal(ss_batch_reader_init(&r, payload, len), SS_OK);
    int top = lua_gettop(L);
    assert_int_equal(ss_batch_reader_next(&r, L, msg, sizeof msg), SS_ERR_NOMEM);
    assert_int_equal(lua_gettop(L), top);
    a.cap = SIZE_MAX;
    ss_batch_writer_cleanup(&w);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_bomb),
        cmocka_unit_test_setup_teardown(test_round_trip_every_type, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_integer_float_distinction, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_array_detection, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_map_headers, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_batch_headers, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_add_string_and_reuse, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_limit_leaves_batch_unchanged, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_unencodable_values, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_foreign_encodings, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_payloads, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_truncated_input, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test(test_decode_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
