/*
 * cmd_keys.c - the key and sealed-file commands: `keygen` (a data key or a
 * CurveZMQ key pair), `encrypt` and `decrypt` (sealed files at rest).
 */
#include "cli.h"
#include "base/common.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "crypto/curve.h"

#include <sodium.h>
#include <sys/stat.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int opt_is(const char *a, const char *name)
{
    size_t n = strlen(name);
    return strncmp(a, name, n) == 0 && (a[n] == '\0' || (a[n] == '=' && name[1] == '-'));
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

static int bad_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "securestreams %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see securestreams %s --help)\n", cmd);
    return SS_EXIT_USAGE;
}

static void keygen_usage(FILE *f)
{
    fputs("usage: securestreams keygen -o KEYFILE [--curve]\n"
          "\n"
          "Write a new random data key to KEYFILE (mode 0600): the key that\n"
          "encrypt, decrypt and the encrypted modes seal batches with. Its key id\n"
          "is printed; it travels in every sealed payload. An existing file is\n"
          "never overwritten.\n"
          "\n"
          "  -o, --output F   the key file to create (required)\n"
          "  --curve          write a CurveZMQ key pair instead: F (secret, 0600)\n"
          "                   and F.pub, for the links of the encrypted modes\n"
          "  -h, --help       show this help\n",
          f);
}

/* securestreams keygen -o KEYFILE [--curve]. 0 done, 1 error, 2 usage. */
int ss_cmd_keygen(int argc, char **argv)
{
    const char *path = NULL;
    int curve = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            keygen_usage(stdout);
            return SS_EXIT_OK;
        } else if (opt_is(a, "-o") || opt_is(a, "--output")) {
            if (!(v = opt_value(argc, argv, &i, a[1] == '-' ? "--output" : "-o")) || !*v)
                return bad_usage("keygen", "option %s needs a file name", a);
            path = v;
        } else if (!strcmp(a, "--curve")) {
            curve = 1;
        } else {
            if (a[0] == '-')
                return bad_usage("keygen", "unknown option '%s'", a);
            return bad_usage("keygen", "unexpected argument '%s' (use -o FILE)", a);
        }
    }
    if (!path)
        return bad_usage("keygen", "missing -o KEYFILE");
    if (ss_crypto_init() != SS_OK)
        return SS_EXIT_ERROR;
    char err[512];
    struct stat st;
    if (lstat(path, &st) == 0) {
        fprintf(stderr, "securestreams keygen: %s already exists; a key file is never "
                "overwritten (remove it first if you really mean to replace that key)\n", path);
        return SS_EXIT_ERROR;
    }
    if (curve) {
        if (ss_curve_keygen(path, err, sizeof err) != SS_OK) {
            fprintf(stderr, "securestreams keygen: %s\n", err);
            return SS_EXIT_ERROR;
        }
        printf("%s: CurveZMQ key pair (public key in %s.pub)\n", path, path);
        return SS_EXIT_OK;
    }
    ss_key_t *k = sodium_malloc(sizeof *k);
    if (!k) {
        fprintf(stderr, "securestreams keygen: out of memory\n");
        return SS_EXIT_ERROR;
    }
    ss_key_generate(k);
    ss_err rc = ss_key_save(k, path, err, sizeof err);
    char id[2 * SS_KEY_ID_BYTES + 1];
    ss_key_id_hex(k->id, id);
    sodium_free(k);
    if (rc != SS_OK) {
        fprintf(stderr, "securestreams keygen: %s\n", err);
        return SS_EXIT_ERROR;
    }
    printf("%s: data key, key id %s\n", path, id);
    return SS_EXIT_OK;
}

static void encrypt_usage(FILE *f)
{
    fputs("usage: securestreams encrypt -k KEYFILE [--no-header] [--batch-bytes N]\n"
          "                             [--stream ID] IN OUT\n"
          "\n"
          "Seal a file of lines into OUT (docs/crypto.md): batches of about 1 MiB of\n"
          "lines, each sealed as it travels in the encrypted modes, then a sealed\n"
          "end-of-stream record. `securestreams source` streams OUT as is, and\n"
          "`securestreams decrypt` gives back IN byte for byte. OUT is written to a\n"
          "temporary file and renamed at the end, so it is never left half written.\n"
          "\n"
          "  -k, --key F        data key file (securestreams keygen)\n"
          "  --no-header        the first line is a record, not a header\n"
          "  --batch-bytes N    cut batches at N bytes (default 1048576)\n"
          "  --stream ID        stream id the records carry (default $SS_STREAM or\n"
          "                     0x53530001)\n"
          "  -h, --help         show this help\n",
          f);
}

static void decrypt_usage(FILE *f)
{
    fputs("usage: securestreams decrypt -k KEYFILE IN OUT\n"
          "\n"
          "Check and open a sealed file (securestreams encrypt) and write the original\n"
          "bytes to OUT (mode 0600). Every record is verified: the file header and key\n"
          "id, each batch's authentication, order and lineage, and the final\n"
          "end-of-stream record with its counts. On any failure OUT is not created\n"
          "(nothing partial is left) and the exit status is 1.\n"
          "\n"
          "  -k, --key F    data key file\n"
          "  -h, --help     show this help\n",
          f);
}

/* encrypt and decrypt: parse, load the key, run. */
static int run_file_command(const char *cmd, int argc, char **argv)
{
    int enc = !strcmp(cmd, "encrypt");
    const char *keyfile = NULL, *paths[2] = { NULL, NULL };
    int npaths = 0, header = 1;
    uint64_t batch = SS_BATCH_BYTES, stream = SS_DEFAULT_STREAM;
    const char *env = enc ? getenv("SS_STREAM") : NULL;
    if (env && *env && (ss_parse_u64(env, 0, SS_NUM_PLAIN, UINT64_MAX, &stream) != 0 || stream > UINT32_MAX))
        return bad_usage(cmd, "SS_STREAM=%s is not a number", env);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            (enc ? encrypt_usage : decrypt_usage)(stdout);
            return SS_EXIT_OK;
        } else if (opt_is(a, "-k") || opt_is(a, "--key")) {
            if (!(v = opt_value(argc, argv, &i, a[1] == '-' ? "--key" : "-k")) || !*v)
                return bad_usage(cmd, "option %s needs a key file", a);
            keyfile = v;
        } else if (enc && !strcmp(a, "--no-header")) {
            header = 0;
        } else if (enc && !strcmp(a, "--header")) {
            header = 1;
        } else if (enc && opt_is(a, "--batch-bytes")) {
            if (!(v = opt_value(argc, argv, &i, "--batch-bytes")) || ss_parse_u64(v, 0, SS_NUM_PLAIN, UINT64_MAX, &batch) != 0
                || batch < 64 || batch > SS_SEALED_BATCH_MAX)
                return bad_usage(cmd, "--batch-bytes wants a number of bytes from 64 to %u",
                                 (unsigned)SS_SEALED_BATCH_MAX);
        } else if (enc && opt_is(a, "--stream")) {
            if (!(v = opt_value(argc, argv, &i, "--stream")) || ss_parse_u64(v, 0, SS_NUM_PLAIN, UINT64_MAX, &stream) != 0
                || stream > UINT32_MAX)
                return bad_usage(cmd, "--stream wants a 32-bit number");
        } else if (a[0] == '-' && a[1] != '\0') {
            return bad_usage(cmd, "unknown option '%s'", a);
        } else if (npaths < 2) {
            paths[npaths++] = a;
        } else {
            return bad_usage(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!keyfile)
        return bad_usage(cmd, "missing -k KEYFILE");
    if (npaths != 2)
        return bad_usage(cmd, "wants IN and OUT");
    if (ss_crypto_init() != SS_OK)
        return SS_EXIT_ERROR;

    char err[1024];
    ss_err rc = SS_ERR_NOMEM;
    ss_key_t *k = sodium_malloc(sizeof *k);
    if (!k)
        snprintf(err, sizeof err, "out of memory");
    else if ((rc = ss_key_load(k, keyfile, err, sizeof err)) == SS_OK) {
        if (enc) {
            ss_encrypt_opts o;
            ss_encrypt_opts_init(&o);
            o.header = header;
            o.batch_bytes = (size_t)batch;
            o.stream = (uint32_t)stream;
            rc = ss_sealed_file_encrypt(paths[0], paths[1], k, &o, err, sizeof err);
        } else {
            rc = ss_sealed_file_decrypt(paths[0], paths[1], k, keyfile, err, sizeof err);
        }
    }
    sodium_free(k);
    if (rc != SS_OK) {
        fprintf(stderr, "securestreams %s: %s\n", cmd, err);
        return SS_EXIT_ERROR;
    }
    return SS_EXIT_OK;
}

int ss_cmd_encrypt(int argc, char **argv)
{
    return run_file_command("encrypt", argc, argv);
}

int ss_cmd_decrypt(int argc, char **argv)
{
    return run_file_command("decrypt", argc, argv);
}
