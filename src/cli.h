/*
 * cli.h - the command-line layer of the `securestreams` binary: exit
 * statuses, one entry point per command, and the option tables every
 * command parses its arguments with.
 *
 * Each command lives in its own src/cmd_*.c and uses the library (lib/) only
 * through its public headers; nothing in lib/ includes this file.
 *
 * A command describes its options once, in a table of ss_opt: name, type,
 * bounds, the environment variable that gives its default, and its help.
 * ss_cli_parse reads the environment, then argv, checks every value against
 * its type and bounds and stores it; --help prints the usage made from the
 * same table, so the help and the parser never disagree. Errors name the
 * option or variable and the value, and end the command with exit status 2.
 */
#ifndef SS_CLI_H
#define SS_CLI_H

#include <stdint.h>
#include <stdio.h>

/* Exit statuses shared by the components and `run`. */
#define SS_EXIT_OK 0
#define SS_EXIT_ERROR 1       /* setup, I/O, protocol or script error */
#define SS_EXIT_USAGE 2
#define SS_EXIT_POLICY 3      /* a bad record under on_error = fail */
#define SS_EXIT_INCOMPLETE 4  /* the sink could not account for every batch */
#define SS_EXIT_INTERRUPTED 130

typedef enum {
    SS_OPT_FLAG,     /* no value: *(int *)out = value (1 when value is 0; 0 with SS_OPTF_CLEAR) */
    SS_OPT_STRING,   /* *(const char **)out; a pointer into argv or environ */
    SS_OPT_UINT,     /* *(uint64_t *)out, from min to max, with `suffix` (SS_NUM_*) */
    SS_OPT_MS,       /* *(uint64_t *)out, milliseconds: "500", "500ms" or "2s", min..max */
    SS_OPT_CHOICE,   /* *(const char **)out, one of `choices` */
    SS_OPT_LIST,     /* appends to *(ss_optlist *)out, at most max items; the command
                        line's values replace the environment's */
} ss_opt_type;

/* Flags of an option. */
enum {
    SS_OPTF_HEX = 1,     /* SS_OPT_UINT: also 0x... (C prefixes) */
    SS_OPTF_HIDDEN = 2,  /* not in --help (internal plumbing) */
    SS_OPTF_CLEAR = 4,   /* SS_OPT_FLAG: store 0 (--no-header beside --header) */
};

/* The values of a repeatable option. */
typedef struct {
    const char **items;  /* the caller's array of max entries */
    int n;
} ss_optlist;

typedef struct {
    const char *name;            /* "--workers"; NULL ends a table */
    char letter;                 /* short form, e.g. 'o' for -o, or 0 */
    ss_opt_type type;
    void *out;                   /* where the value goes (see ss_opt_type) */
    const char *arg;             /* the value's name in --help: "FILE", "N" */
    const char *help;            /* one line; '\n' continues it, indented */
    const char *env;             /* variable giving the default, or NULL */
    uint64_t min, max;           /* bounds of UINT, MS and LIST (max items) */
    int suffix;                  /* SS_OPT_UINT: SS_NUM_PLAIN, SS_NUM_KMG, SS_NUM_BYTES */
    int value;                   /* SS_OPT_FLAG: the value stored */
    const char *const *choices;  /* SS_OPT_CHOICE: NULL-terminated */
    int flags;                   /* SS_OPTF_* */
} ss_opt;

/* A command's description: its synopsis, options and positional arguments. */
typedef struct {
    const char *name;        /* "router"; in messages as "securestreams router: " */
    const char *synopsis;    /* after the name in the usage line: "SPEC [options]" */
    const char *about;       /* a paragraph under the usage line */
    const ss_opt *opts;      /* the table, ended by an entry with a NULL name;
                                at most 64 entries */
    const char *epilogue;    /* printed after the options (exit statuses), or NULL */
    int min_args, max_args;  /* positional arguments accepted */
    int options_first;       /* options end at the first positional argument:
                                it and all after it are positional (a script
                                and the script's own arguments) */
} ss_cli;

/* What ss_cli_parse leaves to its caller. */
enum {
    SS_CLI_GO = -1,          /* arguments parsed: run the command */
};

/*
 * Parse argv (argv[0] is the command's name) against cmd: first every
 * option's environment variable, then the arguments, "--name VALUE",
 * "--name=VALUE", "-x VALUE" (a long name may be abbreviated while the
 * abbreviation is unambiguous, as with getopt_long), "--" ending the options
 * (and, with options_first, the first positional argument ending them). A flag's
 * variable turns it on unless it is "0". Positional arguments
 * are stored in args (room for cmd->max_args) and counted in *nargs (both may
 * be NULL when max_args is 0). Returns SS_CLI_GO; or SS_EXIT_OK after --help
 * printed the usage on stdout; or SS_EXIT_USAGE after a message naming the
 * option or variable and the bad value on stderr. Values are checked against
 * their type and bounds; what stays a string is not copied.
 */
int ss_cli_parse(const ss_cli *cmd, int argc, char **argv, char **args, int *nargs);

/* The usage text made from cmd's table. */
void ss_cli_usage(const ss_cli *cmd, FILE *f);

/*
 * The one error format of every command: "securestreams NAME: message" on
 * stderr, then, for SS_EXIT_USAGE, where to find the usage. Returns status,
 * so a command can `return ss_cli_fail(&cli, SS_EXIT_USAGE, "...", ...)`.
 */
int ss_cli_fail(const ss_cli *cmd, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
