/*
 * main.c - the securestreams command: one binary, one subcommand per
 * component or tool, so a deployment ships a single file.
 */
#include "cli.h"
#include "crypto/crypto.h"
#include "cli.h"
#include "enclave/enclave.h"
#include "pipeline/gen.h"
#include "lua/lstate.h"
#include "cli.h"
#include "net/router.h"
#include "cli.h"

#include <malloc.h>
#include <stdio.h>
#include <string.h>

#define SS_VERSION "0.1.0"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

static const command commands[] = {
    { "run", ss_cmd_run, "run a pipeline spec as local processes" },
    { "deploy", ss_cmd_deploy, "write a Docker Compose file or Swarm stack for a spec" },
    { "gen", ss_cmd_gen, "generate data (gen flights --rows N)" },
    { "router", ss_cmd_router, "the rendezvous between two stages" },
    { "source", ss_cmd_source, "read a file and send it to a router in batches" },
    { "worker", ss_cmd_worker, "run a stage script between two routers" },
    { "sink", ss_cmd_sink, "receive the results and run the sink script" },
    { "lua", ss_cmd_lua, "run a Lua script with the SecureStreams modules" },
    { "keygen", ss_cmd_keygen, "write a new data key (or --curve: a CurveZMQ key pair)" },
    { "encrypt", ss_cmd_encrypt, "seal a file of lines with a data key" },
    { "decrypt", ss_cmd_decrypt, "check and open a sealed file" },
    { "measure", ss_cmd_measure, "print the enclave measurement of a stage script" },
    { "enclave-bench", ss_cmd_enclave_bench, "measure the cost of an enclave call" },
    { "enclave-child", ss_cmd_enclave, "internal: the isolated enclave a worker starts" },
    { NULL, NULL, NULL },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: securestreams COMMAND [ARGS...]   (securestreams COMMAND --help for details)\n\n");
    for (const command *c = commands; c->name; c++)
        fprintf(f, "  %-8s %s\n", c->name, c->what);
    fprintf(f, "  %-8s %s\n", "version", "print the version");
}

int main(int argc, char **argv)
{
    /* Batches of about 1 MiB pass through every component: keep buffers of
     * that size in the heap and reuse them, rather than have malloc map,
     * fault in and unmap each one (a quarter of the system time of a
     * pipeline). Up to 64 MiB of freed heap is kept for reuse. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("securestreams %s\n", SS_VERSION);
        return 0;
    }
    for (const command *c = commands; c->name; c++)
        if (!strcmp(argv[1], c->name))
            return c->run(argc - 1, argv + 1);
    fprintf(stderr, "securestreams: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
