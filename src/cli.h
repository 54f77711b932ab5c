/*
 * cli.h - the command-line layer of the `securestreams` binary: its exit
 * statuses and one entry point per command. Each command lives in its own
 * src/cmd_*.c and uses the library (lib/) only through its public headers;
 * nothing in lib/ includes this file.
 */
#ifndef SS_CLI_H
#define SS_CLI_H

/* Exit statuses shared by the components and `run`. */
#define SS_EXIT_OK 0
#define SS_EXIT_ERROR 1       /* setup, I/O, protocol or script error */
#define SS_EXIT_USAGE 2
#define SS_EXIT_POLICY 3      /* a bad record under on_error = fail */
#define SS_EXIT_INCOMPLETE 4  /* the sink could not account for every batch */
#define SS_EXIT_INTERRUPTED 130

/* The commands: argv[0] is the command's name; each returns an exit status. */
int ss_cmd_run(int argc, char **argv);
int ss_cmd_deploy(int argc, char **argv);
int ss_cmd_gen(int argc, char **argv);
int ss_cmd_router(int argc, char **argv);
int ss_cmd_source(int argc, char **argv);
int ss_cmd_worker(int argc, char **argv);
int ss_cmd_sink(int argc, char **argv);
int ss_cmd_lua(int argc, char **argv);
int ss_cmd_keygen(int argc, char **argv);
int ss_cmd_encrypt(int argc, char **argv);
int ss_cmd_decrypt(int argc, char **argv);
int ss_cmd_measure(int argc, char **argv);
int ss_cmd_enclave(int argc, char **argv);
int ss_cmd_enclave_bench(int argc, char **argv);

#endif
