/*
 * cmd_measure.c - `securestreams measure SCRIPT`: the enclave measurement of
 * a stage (enclave.h: a hash of the enclave program and the stage code), the
 * value a key-release policy checks before giving an enclave the data key.
 */
#include "cli.h"
#include "enclave/enclave.h"

#include <stdio.h>

/* securestreams measure SCRIPT. 0 done (or --help), 1 error, 2 usage. */
int ss_cmd_measure(int argc, char **argv)
{
    const char *script;
    const ss_opt opts[] = { { NULL } };
    const ss_cli cli = {
        .name = "measure", .synopsis = "SCRIPT", .opts = opts,
        .about = "Print the enclave measurement of a stage script: BLAKE2b-256 over the enclave\n"
                 "program (this executable) and the script, in hex. A key-release policy gives\n"
                 "the data key only to an enclave whose measurement it expects.",
        .min_args = 1, .max_args = 1,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)&script, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    char hex[65], err[512];
    if (ss_enclave_measure(script, 0, hex, err, sizeof err) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", err);
    printf("%s  %s\n", hex, script);
    return SS_EXIT_OK;
}
