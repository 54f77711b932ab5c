/*
 * test_gen.c - the airline data generator (lib/pipeline/gen.c): exact header, 29
 * fields per row, determinism, row size, the NA rules of cancelled and
 * diverted flights, delay causes, carriers, and the command line.
 */
#include "test.h"

#include "cli.h"
#include "pipeline/gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCOLS 29

static const char header[] =
    "Year,Month,DayofMonth,DayOfWeek,DepTime,CRSDepTime,ArrTime,CRSArrTime,UniqueCarrier,"
    "FlightNum,TailNum,ActualElapsedTime,CRSElapsedTime,AirTime,ArrDelay,DepDelay,Origin,Dest,"
    "Distance,TaxiIn,TaxiOut,Cancelled,CancellationCode,Diverted,CarrierDelay,WeatherDelay,"
    "NASDelay,SecurityDelay,LateAircraftDelay\n";

/* Column numbers as in the awk scripts (1-based). */
enum {
    YEAR = 1, MONTH, DAY, DOW, DEPTIME, CRSDEP, ARRTIME, CRSARR, CARRIER, FLIGHT, TAIL,
    ACTUAL, CRSELAPSED, AIRTIME, ARRDELAY, DEPDELAY, ORIGIN, DEST, DISTANCE, TAXIIN, TAXIOUT,
    CANCELLED, CODE, DIVERTED, CAUSE1
};

typedef struct {
    char *data;
    size_t len;
} blob;

/* Everything ss_gen_flights writes for (rows, seed), NUL-terminated. */
static blob generate(uint64_t rows, uint64_t seed)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(ss_gen_flights(f, rows, seed), SS_OK);
    long n = ftell(f);
    ASSERT_INT_GT(n, 0);
    blob b = {malloc((size_t)n + 1), (size_t)n};
    assert_non_null(b.data);
    rewind(f);
    assert_int_equal(fread(b.data, 1, b.len, f), b.len);
    b.data[b.len] = '\0';
    fclose(f);
    return b;
}

/* Split one line (up to '\n') into fields f[1..]; returns the field count.
 * The line is modified: commas and the newline become NULs. */
static int split(char *line, char **f, int max, char **next)
{
    int n = 0;
    char *p = line;
    f[++n] = p;
    for (; *p && *p != '\n'; p++) {
        if (*p == ',') {
            *p = '\0';
            if (n < max)
                f[++n] = p + 1;
            else
                n++;
        }
    }
    if (*p == '\n')
        *p++ = '\0';
    *next = p;
    return n;
}

static int is_int(const char *s)
{
    if (*s == '-')
        s++;
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static void test_header_exact(void **state)
{
    (void)state;
    blob b = generate(0, 1);
    assert_int_equal(b.len, strlen(header));
    assert_string_equal(b.data, header);
    free(b.data);
}

static void test_fields_per_row(void **state)
{
    (void)state;
    blob b = generate(10000, 7);
    char *p = b.data, *f[NCOLS + 2];
    assert_memory_equal(p, header, strlen(header));
    p += strlen(header);
    int rows = 0;
    while (*p) {
        int n = split(p, f, NCOLS, &p);
        if (n != NCOLS)
            fail_msg("row %d has %d fields", rows + 1, n);
        rows++;
    }
    assert_int_equal(rows, 10000);
    free(b.data);
}

static void test_deterministic(void **state)
{
    (void)state;
    blob a = generate(5000, 42), b = generate(5000, 42), c = generate(5000, 43);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    assert_true(a.len != c.len || memcmp(a.data, c.data, a.len) != 0);
    /* a shorter run is a prefix of a longer one */
    blob d = generate(1000, 42);
    ASSERT_UINT_LT(d.len, a.len);
    assert_memory_equal(d.data, a.data, d.len);
    free(a.data);
    free(b.data);
    free(c.data);
    free(d.data);
}

static void test_row_size(void **state)
{
    (void)state;
    blob b = generate(10000, 3);
    size_t body = b.len - strlen(header);
    double per_row = (double)body / 10000;
    if (per_row < 70 || per_row > 130)
        fail_msg("%.1f bytes per row", per_row);
    free(b.data);
}

/* The NA rules and the value ranges, over 100k rows. */
static void test_values(void **state)
{
    (void)state;
    const int rows = 100000;
    blob b = generate((uint64_t)rows, 2024);
    char *p = b.data + strlen(header), *f[NCOLS + 2];
    char carriers[64][3];
    int ncarriers = 0, cancelled = 0, diverted = 0, positive = 0, negative = 0, zero = 0;
    int with_causes = 0, max_delay = 0;
    for (int r = 0; r < rows; r++) {
        assert_int_equal(split(p, f, NCOLS, &p), NCOLS);
        int year = atoi(f[YEAR]), month = atoi(f[MONTH]), day = atoi(f[DAY]), dow = atoi(f[DOW]);
        ASSERT_INT_GE(year, 2005);
        ASSERT_INT_LE(year, 2008);
        ASSERT_INT_GE(month, 1);
        ASSERT_INT_LE(month, 12);
        ASSERT_INT_GE(day, 1);
        ASSERT_INT_LE(day, 31);
        ASSERT_INT_GE(dow, 1);
        ASSERT_INT_LE(dow, 7);
        assert_int_equal(strlen(f[ORIGIN]), 3);
        assert_int_equal(strlen(f[DEST]), 3);
        assert_string_not_equal(f[ORIGIN], f[DEST]);
        ASSERT_UINT_EQ(strlen(f[TAIL]), 6);
        ASSERT_INT_EQ(f[TAIL][0], 'N');
        assert_true(is_int(f[DISTANCE]));
        ASSERT_INT_GT(atoi(f[DISTANCE]), 0);

        int seen = 0;
        for (int i = 0; i < ncarriers && !seen; i++)
            seen = strcmp(carriers[i], f[CARRIER]) == 0;
        if (!seen) {
            ASSERT_INT_LT(ncarriers, 64);
            ASSERT_UINT_EQ(strlen(f[CARRIER]), 2);
            strcpy(carriers[ncarriers++], f[CARRIER]);
        }

        if (!strcmp(f[CANCELLED], "1")) {
            cancelled++;
            assert_string_equal(f[ARRDELAY], "NA");
            assert_string_equal(f[DEPDELAY], "NA");
            assert_string_equal(f[DEPTIME], "NA");
            assert_string_equal(f[ARRTIME], "NA");
            ASSERT_UINT_EQ(strlen(f[CODE]), 1);
            ASSERT_CONTAINS("ABCD", f[CODE]);
            assert_string_equal(f[CAUSE1], "NA");
            continue;
        }
        assert_string_equal(f[CANCELLED], "0");
        assert_string_equal(f[CODE], "");
        assert_true(is_int(f[DEPDELAY]));
        if (!strcmp(f[DIVERTED], "1")) {
            diverted++;
            assert_string_equal(f[ARRDELAY], "NA");
            assert_string_equal(f[ARRTIME], "NA");
            continue;
        }
        assert_string_equal(f[DIVERTED], "0");
        assert_true(is_int(f[ARRDELAY]));
        int arr = atoi(f[ARRDELAY]), dep = atoi(f[DEPDELAY]);
        /* ArrDelay - DepDelay = ActualElapsedTime - CRSElapsedTime */
        assert_int_equal(arr - dep, atoi(f[ACTUAL]) - atoi(f[CRSELAPSED]));
        assert_int_equal(atoi(f[ACTUAL]), atoi(f[AIRTIME]) + atoi(f[TAXIIN]) + atoi(f[TAXIOUT]));
        positive += arr > 0;
        negative += arr < 0;
        zero += arr == 0;
        max_delay = arr > max_delay ? arr : max_delay;
        if (arr >= 15) {
            with_causes++;
            int sum = 0;
            for (int c = CAUSE1; c < CAUSE1 + 5; c++) {
                assert_true(is_int(f[c]));
                ASSERT_INT_GE(atoi(f[c]), 0);
                sum += atoi(f[c]);
            }
            assert_int_equal(sum, arr);
        } else {
            for (int c = CAUSE1; c < CAUSE1 + 5; c++)
                assert_string_equal(f[c], "NA");
        }
    }
    assert_int_equal(*p, '\0');
    assert_int_equal(ncarriers, 20);
    if (cancelled < rows / 100 || cancelled > rows * 3 / 100)
        fail_msg("%d cancelled of %d", cancelled, rows);
    if (diverted < rows / 2000 || diverted > rows * 4 / 1000)
        fail_msg("%d diverted of %d", diverted, rows);
    int flown = positive + negative + zero;
    if (positive < flown * 38 / 100 || positive > flown * 52 / 100)
        fail_msg("%d of %d ArrDelay > 0", positive, flown);
    ASSERT_INT_GT(negative, flown / 4);
    ASSERT_INT_GT(zero, 0);
    ASSERT_INT_GT(with_causes, flown / 10);
    if (max_delay < 200)
        fail_msg("longest delay %d: no long tail", max_delay);
    free(b.data);
}

static void test_write_error(void **state)
{
    (void)state;
    const char *path = test_path("out.csv");
    test_write_text(path, "");
    FILE *f = fopen(path, "r");   /* read-only: every write fails */
    assert_non_null(f);
    assert_int_equal(ss_gen_flights(f, 50000, 1), SS_ERR_IO);
    fclose(f);
}

static int cmd(int argc, const char *const *argv)
{
    return ss_cmd_gen(argc, (char **)argv);
}

static void test_command_line(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", test_path("flights.csv"));
    test_write_text(path, "");

    const char *ok[] = {"gen", "flights", "--rows", "300", "--seed", "9", "-o", path};
    assert_int_equal(cmd(8, ok), 0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    blob want = generate(300, 9);
    char *got = malloc(want.len + 1);
    assert_non_null(got);
    assert_int_equal(fread(got, 1, want.len + 1, f), want.len);
    assert_memory_equal(got, want.data, want.len);
    fclose(f);

    char opt[600];
    snprintf(opt, sizeof opt, "--output=%s", path);
    const char *eq[] = {"gen", "--rows=300", opt, "flights", "--seed=9"};
    assert_int_equal(cmd(5, eq), 0);
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(got, 1, want.len + 1, f), want.len);
    assert_memory_equal(got, want.data, want.len);
    fclose(f);
    free(got);
    free(want.data);

    const char *help[] = {"gen", "--help"};
    assert_int_equal(cmd(2, help), 0);
    const char *help2[] = {"gen", "flights", "-h"};
    assert_int_equal(cmd(3, help2), 0);

    static const struct {
        int argc;
        const char *argv[6];
    } bad[] = {
        {1, {"gen"}},
        {2, {"gen", "flights"}},
        {4, {"gen", "cars", "--rows", "10"}},
        {3, {"gen", "flights", "--rows"}},
        {4, {"gen", "flights", "--rows", "12x"}},
        {4, {"gen", "flights", "--rows", "-5"}},
        {4, {"gen", "flights", "--rows", ""}},
        {4, {"gen", "flights", "--rows", "99999999999999999999999"}},
        {6, {"gen", "flights", "--rows", "1", "--seed", "abc"}},
        {5, {"gen", "flights", "--rows", "1", "-o"}},
        {5, {"gen", "flights", "--rows", "1", "--bogus"}},
        {5, {"gen", "flights", "flights", "--rows", "1"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = cmd(bad[i].argc, bad[i].argv);
        if (rc != 2)
            fail_msg("bad case %zu exited %d, expected 2", i, rc);
    }

    /* a path under a regular file cannot be opened: exit 1, not 2 */
    char below[600];
    snprintf(below, sizeof below, "%s/x.csv", path);
    const char *unwritable[] = {"gen", "flights", "--rows", "1", "-o", below};
    assert_int_equal(cmd(6, unwritable), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_exact),
        cmocka_unit_test(test_fields_per_row),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_row_size),
        cmocka_unit_test(test_values),
        cmocka_unit_test_setup_teardown(test_write_error, test_dir_setup, test_dir_teardown),
        cmocka_unit_test_setup_teardown(test_command_line, test_dir_setup, test_dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
