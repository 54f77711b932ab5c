/*
 * test_csv.c - the Lua modules written in C: csv.parse (lib/lua/lcsv.c) and
 * json.encode/json.decode (lib/lua/ljson.c). Table-driven: each case is an
 * input and either the expected result or a substring of the error.
 */
#include "test.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

/* Run `code` (a chunk returning values); LUA_OK or the status, with the
 * results or the error message on the stack. */
static int run(lua_State *L, const char *code)
{
    int status = luaL_loadstring(L, code);
    if (status != LUA_OK)
        fail_msg("loading %s: %s", code, lua_tostring(L, -1));
    return lua_pcall(L, 0, LUA_MULTRET, 0);
}

/* ---- csv ---------------------------------------------------------------- */

#define MAXF 8

typedef struct {
    const char *line;
    size_t len;              /* 0: strlen(line) */
    const char *sep;         /* NULL: default */
    int nfields;             /* -1: an error is expected */
    const char *fields[MAXF];
    size_t flen[MAXF];       /* 0: strlen(field) */
} csv_case;

static const csv_case csv_cases[] = {
    {"a,b,c", 0, NULL, 3, {"a", "b", "c"}, {0}},
    {"2008,1,3,4,WN,NA", 0, NULL, 6, {"2008", "1", "3", "4", "WN", "NA"}, {0}},
    {"", 0, NULL, 1, {""}, {0}},
    {",", 0, NULL, 2, {"", ""}, {0}},
    {"a,,c,", 0, NULL, 4, {"a", "", "c", ""}, {0}},
    {"\"quoted\",plain", 0, NULL, 2, {"quoted", "plain"}, {0}},
    {"\"\"", 0, NULL, 1, {""}, {0}},
    {"\"\",\"\"", 0, NULL, 2, {"", ""}, {0}},
    {"\"say \"\"hi\"\"\",x", 0, NULL, 2, {"say \"hi\"", "x"}, {0}},
    {"\"\"\"\"", 0, NULL, 1, {"\""}, {0}},
    {"\"a,b\",c", 0, NULL, 2, {"a,b", "c"}, {0}},
    {"\"line1\nline2\",z", 0, NULL, 2, {"line1\nline2", "z"}, {0}},
    {"a,b\r", 0, NULL, 2, {"a", "b"}, {0}},
    {"a,b\r\n", 0, NULL, 2, {"a", "b"}, {0}},
    {"a,b\n", 0, NULL, 2, {"a", "b"}, {0}},
    {"a,\"b\"\r", 0, NULL, 2, {"a", "b"}, {0}},
    {"a\rb,c", 0, NULL, 2, {"a\rb", "c"}, {0}},
    {" a , b ", 0, NULL, 2, {" a ", " b "}, {0}},
    {"a;b,c;\"d;e\"", 0, ";", 3, {"a", "b,c", "d;e"}, {0}},
    {"a\tb", 0, "\t", 2, {"a", "b"}, {0}},
    {"nul\0byte,x", 10, NULL, 2, {"nul\0byte", "x"}, {8, 0}},
    {"\"a\",\"b\"\"c\",\"\"", 0, NULL, 3, {"a", "b\"c", ""}, {0}},
    /* malformed: the error names the column and the problem */
    {"a,\"bc", 0, NULL, -1, {"unterminated quoted field starting at column 2"}, {0}},
    {"a,b,\"c\"\"", 0, NULL, -1, {"unterminated quoted field starting at column 3"}, {0}},
    {"\"", 0, NULL, -1, {"unterminated quoted field starting at column 1"}, {0}},
    {"ab\"c,d", 0, NULL, -1, {"quote inside unquoted field at column 1"}, {0}},
    {"x,ab\"", 0, NULL, -1, {"quote inside unquoted field at column 2"}, {0}},
    {"\"a\"b,c", 0, NULL, -1, {"after the closing quote of column 1"}, {0}},
    {"x,\"a\" ,c", 0, NULL, -1, {"after the closing quote of column 2"}, {0}},
    {"a,b", 0, "ab", -1, {"separator must be one character"}, {0}},
    {"a,b", 0, "\"", -1, {"separator must be one character"}, {0}},
};

static void test_csv_parse(void **state)
{
    lua_State *L = *state;
    for (size_t i = 0; i < sizeof csv_cases / sizeof *csv_cases; i++) {
        const csv_case *c = &csv_cases[i];
        int top = lua_gettop(L);
        lua_getglobal(L, "csv");
        lua_getfield(L, -1, "parse");
        lua_remove(L, -2);
        lua_pushlstring(L, c->line, c->len ? c->len : strlen(c->line));
        if (c->sep)
            lua_pushstring(L, c->sep);
        int status = lua_pcall(L, c->sep ? 2 : 1, 1, 0);
        if (c->nfields < 0) {
            if (status == LUA_OK)
                fail_msg("case %zu: parsed, expected error '%s'", i, c->fields[0]);
            const char *msg = lua_tostring(L, -1);
            if (!msg || !strstr(msg, c->fields[0]))
                fail_msg("case %zu: error '%s', expected '%s'", i, msg ? msg : "?", c->fields[0]);
            lua_settop(L, top);
            continue;
        }
        if (status != LUA_OK)
            fail_msg("case %zu: %s", i, lua_tostring(L, -1));
        assert_true(lua_istable(L, -1));
        if ((int)lua_rawlen(L, -1) != c->nfields)
            fail_msg("case %zu: %d fields, expected %d", i, (int)lua_rawlen(L, -1), c->nfields);
        for (int f = 0; f < c->nfields; f++) {
            size_t want = c->flen[f] ? c->flen[f] : strlen(c->fields[f]), got;
            lua_rawgeti(L, -1, f + 1);
            const char *s = lua_tolstring(L, -1, &got);
            assert_non_null(s);
            if (got != want || memcmp(s, c->fields[f], want) != 0)
                fail_msg("case %zu field %d: '%s', expected '%s'", i, f + 1, s, c->fields[f]);
            lua_pop(L, 1);
        }
        lua_settop(L, top);
    }
}

/* csv.fields on every comma-separated case: the same count and the same
 * fields as csv.parse for several choices of columns (lines without a quote
 * take the fast path, the others the full parser), the same errors. */
static void test_csv_fields_agrees(void **state)
{
    lua_State *L = *state;
    assert_int_equal(run(L, "local csv = require 'csv'\n"
                            "function check_fields(line)\n"
                            "  local ok, f = pcall(csv.parse, line)\n"
                            "  for _, cols in ipairs({ {1}, {2, 3, 1}, {3}, {9, 15}, {40, 2}, {4, 4} }) do\n"
                            "    local r = table.pack(pcall(csv.fields, line, table.unpack(cols)))\n"
                            "    if r[1] ~= ok then return 'ok ' .. tostring(r[1]) end\n"
                            "    if not ok then\n"
                            "      if r[2] ~= f then return 'error ' .. tostring(r[2]) end\n"
                            "    else\n"
                            "      if r[2] ~= #f then return 'count ' .. tostring(r[2]) end\n"
                            "      for i, c in ipairs(cols) do\n"
                            "        if r[i + 2] ~= f[c] then return 'column ' .. c .. ': ' .. tostring(r[i + 2]) end\n"
                            "      end\n"
                            "    end\n"
                            "  end\n"
                            "  return 'same'\n"
                            "end"),
                     LUA_OK);
    for (size_t i = 0; i < sizeof csv_cases / sizeof *csv_cases; i++) {
        const csv_case *c = &csv_cases[i];
        if (c->sep)
            continue;
        lua_getglobal(L, "check_fields");
        lua_pushlstring(L, c->line, c->len ? c->len : strlen(c->line));
        assert_int_equal(lua_pcall(L, 1, 1, 0), LUA_OK);
        if (strcmp(lua_tostring(L, -1), "same") != 0)
            fail_msg("case %zu (%s): csv.fields differs from csv.parse: %s", i, c->line, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    /* lines past the 16-byte steps of the scan, a quote late in the line,
     * columns past the fast path's 64 */
    assert_int_equal(run(L, "local long = {}\n"
                            "for i = 1, 80 do long[i] = ('f%d'):format(i) end\n"
                            "local lines = { table.concat(long, ','), ('x'):rep(40) .. ',\"q,r\",z',\n"
                            "  ('a,'):rep(33), ',,,,,,,,,,,,,,,,,,,,', ('y'):rep(31) .. '\"' }\n"
                            "for _, l in ipairs(lines) do\n"
                            "  local r = check_fields(l)\n"
                            "  if r ~= 'same' then return l .. ': ' .. r end\n"
                            "  local ok, n, a, b = pcall(csv.fields, l, 70, 66)\n"
                            "  local pok, f = pcall(csv.parse, l)\n"
                            "  if ok ~= pok or (ok and (n ~= #f or a ~= f[70] or b ~= f[66])) then return l end\n"
                            "end\n"
                            "return 'same'"),
                     LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "same");
    lua_pop(L, 1);
}

static void test_csv_from_lua(void **state)
{
    lua_State *L = *state;
    assert_int_equal(run(L, "local csv = require 'csv'\n"
                            "local t = csv.parse('2008,1,3,4,2003,1955,2211,2225,WN,335')\n"
                            "local ok, err = pcall(csv.parse, 'a,\"b')\n"
                            "return #t, t[9], ok, err, pcall(csv.parse)"),
                     LUA_OK);
    assert_int_equal(lua_tointeger(L, -6), 10);
    assert_string_equal(lua_tostring(L, -5), "WN");
    assert_false(lua_toboolean(L, -4));
    ASSERT_CONTAINS(lua_tostring(L, -3), "csv: unterminated");
    assert_false(lua_toboolean(L, -2));   /* no argument */
    lua_settop(L, 0);
}

/* ---- json --------------------------------------------------------------- */

static void test_json_encode_exact(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *expr;
        const char *json;
    } cases[] = {
        {"nil", "null"}, {"json.null", "null"}, {"true", "true"}, {"false", "false"},
        {"0", "0"}, {"-17", "-17"}, {"math.maxinteger", "9223372036854775807"},
        {"math.mininteger", "-9223372036854775808"}, {"1.5", "1.5"}, {"1.0", "1.0"},
        {"-2.0", "-2.0"}, {"0.1", "0.1"}, {"1e300", "1e+300"}, {"1/3", "0.33333333333333331"},
        {"''", "\"\""}, {"'plain'", "\"plain\""},
        {"'q\"b\\\\s/'", "\"q\\\"b\\\\s/\""},
        {"'\\n\\r\\t\\b\\f\\1\\31'", "\"\\n\\r\\t\\b\\f\\u0001\\u001f\""},
        {"'caf\\u{e9}'", "\"caf\xc3\xa9\""},
        {"{}", "{}"}, {"{1, 2, 3}", "[1,2,3]"}, {"{'a', {true}, {}}", "[\"a\",[true],{}]"},
        {"{a = 1}", "{\"a\":1}"}, {"{[5] = 'x'}", "{\"5\":\"x\"}"}, {"{[1.5] = 0}", "{\"1.5\":0}"},
        {"{x = {y = {json.null}}}", "{\"x\":{\"y\":[null]}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char code[256];
        snprintf(code, sizeof code, "return json.encode(%s)", cases[i].expr);
        if (run(L, code) != LUA_OK)
            fail_msg("%s: %s", cases[i].expr, lua_tostring(L, -1));
        const char *got = lua_tostring(L, -1);
        if (strcmp(got, cases[i].json) != 0)
            fail_msg("json.encode(%s) = %s, expected %s", cases[i].expr, got, cases[i].json);
        lua_settop(L, 0);
    }
}

static void test_json_round_trip(void **state)
{
    lua_State *L = *state;
    static const char *const cases[] = {
        "0", "42", "-7", "math.mininteger", "math.tointeger(2^53)", "-math.tointeger(2^53)", "1.5", "-0.25",
        "1e-300", "0.1", "true", "false", "''", "'text with \"quotes\" and \\\\'",
        "'\\1\\2\\31 controls'", "'utf-8 \\u{1F600}'", "{1, 2, 3}", "{a = 1, b = 'two'}",
        "{list = {1.5, 'x', {}, {k = false}}, n = -3}", "{{{{{'deep'}}}}}", "nest(64)",
        "(function() local t = {} for i = 1, 1000 do t[i] = i end return t end)()",
        "{name = 'mixed', list = {'a', 'b'}}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char code[512];
        snprintf(code, sizeof code,
                 "local v = %s\nlocal s = json.encode(v)\nreturn deq(json.decode(s), v), s",
                 cases[i]);
        if (run(L, code) != LUA_OK)
            fail_msg("%s: %s", cases[i], lua_tostring(L, -1));
        if (!lua_toboolean(L, -2))
            fail_msg("%s: did not survive encode/decode (text %s)", cases[i], lua_tostring(L, -1));
        lua_settop(L, 0);
    }
}

static void test_json_decode(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *text;
        const char *expr;   /* expected value, compared with deq */
    } cases[] = {
        {"1", "1"}, {"1.0", "1"}, {"-0", "0"}, {"2.5", "2.5"}, {"1e3", "1000"},
        {"1e20", "1e20"}, {"9223372036854775807", "9.2233720368547758e18"},
        {"-9223372036854775808", "math.mininteger"}, {"\"s\"", "'s'"},
        {"\"\\u00e9\\n\\\"\"", "'\\u{e9}\\n\"'"}, {" [1, \"a\", true] ", "{1, 'a', true}"},
        {"{\"a\": {\"b\": []}}", "{a = {b = {}}}"}, {"{\"a\":1,\"a\":2}", "{a = 2}"},
        {"[[], {}]", "{{}, {}}"}, {"true", "true"}, {"\n{}\n", "{}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char code[512];
        snprintf(code, sizeof code, "return deq(json.decode(%s), %s)",
                 "...", cases[i].expr);
        int status = luaL_loadstring(L, code);
        assert_int_equal(status, LUA_OK);
        lua_pushstring(L, cases[i].text);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK)
            fail_msg("decode %s: %s", cases[i].text, lua_tostring(L, -1));
        if (!lua_toboolean(L, -1))
            fail_msg("decode %s is not %s", cases[i].text, cases[i].expr);
        lua_settop(L, 0);
    }
    /* null is json.null: at top level, in arrays (no holes) and objects */
    assert_int_equal(run(L, "local a = json.decode('[1,null,3]')\n"
                            "local o = json.decode('{\"k\":null}')\n"
                            "return json.decode('null') == json.null, #a, a[2] == json.null,\n"
                            "  o.k == json.null, json.null ~= nil, math.type(json.decode('7'))"),
                     LUA_OK);
    assert_true(lua_toboolean(L, 1));
    assert_int_equal(lua_tointeger(L, 2), 3);
    assert_true(lua_toboolean(L, 3));
    assert_true(lua_toboolean(L, 4));
    assert_true(lua_toboolean(L, 5));
    assert_string_equal(lua_tostring(L, 6), "integer");
    lua_settop(L, 0);
}

static void test_json_errors(void **state)
{
    lua_State *L = *state;
    static const struct {
        const char *code;
        const char *error;
    } cases[] = {
        {"json.encode(print)", "json: cannot encode a value of type function"},
        {"json.encode({f = print})", "type function"},
        {"json.encode({io.stdout})", "type userdata"},
        {"local t = {} t[1] = t return json.encode(t)", "cycle"},
        {"local t = {a = {}} t.a.b = t return json.encode(t)", "cycle"},
        {"json.encode(nest(65))", "deeper than 64"},
        {"json.encode(0/0)", "NaN or infinity"},
        {"json.encode({math.huge})", "NaN or infinity"},
        {"json.encode({[true] = 1})", "table key of type boolean"},
        {"json.encode()", "bad argument"},
        {"json.decode('')", "empty string"},
        {"json.decode('{')", "malformed input at byte"},
        {"json.decode('[1,2')", "malformed input at byte"},
        {"json.decode('{\"a\" 1}')", "malformed input at byte 5"},
        {"json.decode('tru')", "malformed input at byte"},
        {"json.decode('[1,]')", "malformed input at byte"},
        {"json.decode('\"unterminated')", "malformed input at byte"},
        {"json.decode('1 2')", "unexpected text after the value at byte 2"},
        {"json.decode('{} x')", "unexpected text after the value at byte 3"},
        {"json.decode('[1]\\0')", "unexpected text after the value at byte 3"},
        {"json.decode(string.rep('[', 2000))", "json:"},
        {"json.decode({})", "bad argument"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (run(L, cases[i].code) == LUA_OK)
            fail_msg("%s: succeeded, expected '%s'", cases[i].code, cases[i].error);
        const char *msg = lua_tostring(L, -1);
        if (!msg || !strstr(msg, cases[i].error))
            fail_msg("%s: error '%s', expected '%s'", cases[i].code, msg ? msg : "?",
                     cases[i].error);
        lua_settop(L, 0);
    }
    /* shared (non-cyclic) tables are fine; the state still works after errors */
    assert_int_equal(run(L, "local s = {1} return json.encode({s, s})"), LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "[[1],[1]]");
    lua_settop(L, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_csv_parse, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_csv_fields_agrees, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_csv_from_lua, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_json_encode_exact, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_json_round_trip, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_json_decode, test_lua_setup,
                                        test_lua_teardown),
        cmocka_unit_test_setup_teardown(test_json_errors, test_lua_setup,
                                        test_lua_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
