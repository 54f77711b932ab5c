/*
 * cmd_gen.c - `securestreams gen`: test data on standard output or in a file.
 */
#include "cli.h"
#include "base/common.h"
#include "pipeline/gen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_ROWS UINT64_MAX   /* --rows not given */

/*
 * securestreams gen flights --rows N [--seed S] [-o FILE]; argv[0] is "gen".
 * Exit status: 0 done (or --help), 1 write error, 2 bad arguments.
 */
int ss_cmd_gen(int argc, char **argv)
{
    const char *path = NULL, *args[1];
    uint64_t rows = NO_ROWS, seed = 1;
    int nargs;
    const ss_opt opts[] = {
        { "--rows", 0, SS_OPT_UINT, &rows, "N", "number of data rows (required)", .max = NO_ROWS - 1 },
        { "--seed", 0, SS_OPT_UINT, &seed, "S", "64-bit seed (default 1)", .max = UINT64_MAX },
        { "--output", 'o', SS_OPT_STRING, &path, "FILE", "write to FILE instead of standard output (- for stdout)" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "gen", .synopsis = "flights --rows N [--seed S] [-o FILE]", .opts = opts,
        .about = "Write a header line and N rows of airline on-time data (Data Expo 2009\n"
                 "schema, 29 columns, \"NA\" where missing, about 100 bytes a row) to FILE,\n"
                 "or to standard output. The same seed (default 1) gives the same bytes.",
        .min_args = 0, .max_args = 1,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)args, &nargs);
    if (rc != SS_CLI_GO)
        return rc;
    if (nargs == 0)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "which data set? the only one is 'flights'");
    if (strcmp(args[0], "flights") != 0)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "unknown data set '%s' (the only one is 'flights')", args[0]);
    if (rows == NO_ROWS)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "missing --rows N");

    if (path && !strcmp(path, "-"))
        path = NULL;
    FILE *out = stdout;
    if (path && !(out = fopen(path, "wb"))) {
        int en = errno;
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "cannot open %s: %s", path, strerror(en));
    }
    ss_err err = ss_gen_flights(out, rows, seed);
    int en = errno;
    rc = out == stdout ? fflush(out) : fclose(out);
    if (err == SS_OK && rc != 0) {
        en = errno;
        err = SS_ERR_IO;
    }
    if (err != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "writing %s: %s", path ? path : "standard output",
                           err == SS_ERR_IO ? strerror(en) : ss_strerror(err));
    return SS_EXIT_OK;
}
