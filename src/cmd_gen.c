/*
 * cmd_gen.c - `securestreams gen`: test data on standard output or in a file.
 */
#include "cli.h"
#include "pipeline/gen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: securestreams gen flights --rows N [--seed S] [-o FILE]\n"
          "\n"
          "Write a header line and N rows of airline on-time data (Data Expo 2009\n"
          "schema, 29 columns, \"NA\" where missing, about 100 bytes a row) to FILE,\n"
          "or to standard output. The same seed (default 1) gives the same bytes.\n"
          "\n"
          "  --rows N         number of data rows (required)\n"
          "  --seed S         64-bit seed (default 1)\n"
          "  -o, --output F   write to F instead of standard output (- for stdout)\n"
          "  -h, --help       show this help\n",
          f);
}

static int bad_usage(const char *fmt, const char *arg)
{
    fputs("securestreams gen: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n(see securestreams gen --help)\n", stderr);
    return 2;
}

/* Value of option argv[*i] given as "--name=value" or "--name value". */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) == 0 && a[n] == '=')
        return a + n + 1;
    if (*i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int opt_is(const char *a, const char *name)
{
    size_t n = strlen(name);
    return strncmp(a, name, n) == 0 && (a[n] == '\0' || (a[n] == '=' && name[1] == '-'));
}

/*
 * securestreams gen flights --rows N [--seed S] [-o FILE]; argv[0] is "gen".
 * Exit status: 0 done (or --help), 1 write error, 2 bad arguments.
 */
int ss_cmd_gen(int argc, char **argv)
{
    const char *dataset = NULL, *path = NULL;
    uint64_t rows = 0, seed = 1;
    int have_rows = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (opt_is(a, "--rows")) {
            if (!(v = opt_value(argc, argv, &i, "--rows")))
                return bad_usage("option --rows needs a value", NULL);
            if (ss_parse_u64(v, 10, SS_NUM_PLAIN, UINT64_MAX, &rows) != 0)
                return bad_usage("--rows wants a non-negative integer, not '%s'", v);
            have_rows = 1;
        } else if (opt_is(a, "--seed")) {
            if (!(v = opt_value(argc, argv, &i, "--seed")))
                return bad_usage("option --seed needs a value", NULL);
            if (ss_parse_u64(v, 10, SS_NUM_PLAIN, UINT64_MAX, &seed) != 0)
                return bad_usage("--seed wants a non-negative integer, not '%s'", v);
        } else if (opt_is(a, "-o") || opt_is(a, "--output")) {
            if (!(v = opt_value(argc, argv, &i, a[1] == '-' ? "--output" : "-o")) || !*v)
                return bad_usage("option %s needs a file name", a);
            path = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            return bad_usage("unknown option '%s'", a);
        } else if (!dataset) {
            dataset = a;
        } else {
            return bad_usage("unexpected argument '%s'", a);
        }
    }
    if (!dataset)
        return bad_usage("which data set? the only one is 'flights'", NULL);
    if (strcmp(dataset, "flights") != 0)
        return bad_usage("unknown data set '%s' (the only one is 'flights')", dataset);
    if (!have_rows)
        return bad_usage("missing --rows N", NULL);

    if (path && !strcmp(path, "-"))
        path = NULL;
    FILE *out = stdout;
    if (path && !(out = fopen(path, "wb"))) {
        int en = errno;
        fprintf(stderr, "securestreams gen: cannot open %s: %s\n", path, strerror(en));
        return 1;
    }
    ss_err err = ss_gen_flights(out, rows, seed);
    int en = errno;
    int rc = out == stdout ? fflush(out) : fclose(out);
    if (err == SS_OK && rc != 0) {
        en = errno;
        err = SS_ERR_IO;
    }
    if (err != SS_OK) {
        fprintf(stderr, "securestreams gen: writing %s: %s\n", path ? path : "standard output",
                err == SS_ERR_IO ? strerror(en) : ss_strerror(err));
        return 1;
    }
    return 0;
}
