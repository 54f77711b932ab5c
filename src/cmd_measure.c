/*
 * cmd_measure.c - `securestreams measure SCRIPT`: the enclave measurement of a
 * stage (enclave.h: a hash of the enclave program and the stage code), the
 * value a key-release policy checks before giving an enclave the data key.
 */
#include "cli.h"
#include "enclave/enclave.h"

#include <stdio.h>
#include <string.h>

int ss_cmd_measure(int argc, char **argv)
{
    if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *f = argc == 2 ? stdout : stderr;
        fprintf(f, "usage: securestreams measure SCRIPT\n"
                   "Print the enclave measurement of a stage script: BLAKE2b-256 over the enclave\n"
                   "program (this executable) and the script, in hex. A key-release policy gives\n"
                   "the data key only to an enclave whose measurement it expects.\n");
        return argc == 2 ? 0 : 2;
    }
    char hex[65], err[512];
    if (ss_enclave_measure(argv[1], 0, hex, err, sizeof err) != SS_OK) {
        fprintf(stderr, "securestreams measure: %s\n", err);
        return 1;
    }
    printf("%s  %s\n", hex, argv[1]);
    return 0;
}
