/*
 * cmd_keys.c - the key and sealed-file commands: `keygen` (a data key or a
 * CurveZMQ key pair), `encrypt` and `decrypt` (sealed files at rest).
 */
#include "cli.h"
#include "base/common.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"
#include "crypto/curve.h"
#include "wire/frame.h"

#include <sodium.h>
#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* securestreams keygen -o KEYFILE [--curve]. 0 done, 1 error, 2 usage. */
int ss_cmd_keygen(int argc, char **argv)
{
    const char *path = NULL;
    int curve = 0;
    const ss_opt opts[] = {
        { "--output", 'o', SS_OPT_STRING, &path, "F", "the key file to create (required)" },
        { "--curve", 0, SS_OPT_FLAG, &curve, NULL, "write a CurveZMQ key pair instead: F (secret, 0600)\n"
                                                   "and F.pub, for the links of the encrypted modes" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "keygen", .synopsis = "-o KEYFILE [--curve]", .opts = opts,
        .about = "\nWrite a new random data key to KEYFILE (mode 0600): the key that\n"
                 "encrypt, decrypt and the encrypted modes seal batches with. Its key id\n"
                 "is printed; it travels in every sealed payload. An existing file is\n"
                 "never overwritten.\n",
    };
    int rc = ss_cli_parse(&cli, argc, argv, NULL, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!path)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "missing -o KEYFILE");
    if (ss_crypto_init() != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "cannot initialise libsodium");
    char err[512];
    struct stat st;
    if (lstat(path, &st) == 0)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "%s already exists; a key file is never overwritten "
                           "(remove it first if you really mean to replace that key)", path);
    if (curve) {
        if (ss_curve_keygen(path, err, sizeof err) != SS_OK)
            return ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", err);
        printf("%s: CurveZMQ key pair (public key in %s.pub)\n", path, path);
        return SS_EXIT_OK;
    }
    ss_key_t *k = sodium_malloc(sizeof *k);
    if (!k)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "out of memory");
    ss_key_generate(k);
    ss_err e = ss_key_save(k, path, err, sizeof err);
    char id[2 * SS_KEY_ID_BYTES + 1];
    ss_key_id_hex(k->id, id);
    sodium_free(k);
    if (e != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_ERROR, "%s", err);
    printf("%s: data key, key id %s\n", path, id);
    return SS_EXIT_OK;
}

/* The key, then the work: sealing IN into OUT (encrypt) or opening it
 * (decrypt). The key lives in guarded memory, wiped when freed. */
static int seal_or_open(const ss_cli *cli, const char *keyfile, const char *in, const char *out,
                        const ss_encrypt_opts *enc)
{
    if (ss_crypto_init() != SS_OK)
        return ss_cli_fail(cli, SS_EXIT_ERROR, "cannot initialise libsodium");
    char err[1024];
    ss_err e = SS_ERR_NOMEM;
    ss_key_t *k = sodium_malloc(sizeof *k);
    if (!k)
        snprintf(err, sizeof err, "out of memory");
    else if ((e = ss_key_load(k, keyfile, err, sizeof err)) == SS_OK)
        e = enc ? ss_sealed_file_encrypt(in, out, k, enc, err, sizeof err)
                : ss_sealed_file_decrypt(in, out, k, keyfile, err, sizeof err);
    sodium_free(k);
    return e == SS_OK ? SS_EXIT_OK : ss_cli_fail(cli, SS_EXIT_ERROR, "%s", err);
}

#define NO_STREAM UINT64_MAX   /* --stream not given */

/* securestreams encrypt -k KEYFILE [options] IN OUT. 0 done, 1 error, 2 usage. */
int ss_cmd_encrypt(int argc, char **argv)
{
    const char *keyfile = NULL, *paths[2];
    int header = 1;
    uint64_t batch = SS_BATCH_BYTES, stream = NO_STREAM;
    const ss_opt opts[] = {
        { "--key", 'k', SS_OPT_STRING, &keyfile, "F", "data key file (securestreams keygen)" },
        { "--header", 0, SS_OPT_FLAG, &header, NULL, "the first line is a header (default)" },
        { "--no-header", 0, SS_OPT_FLAG, &header, NULL, "the first line is a record, not a header",
          .flags = SS_OPTF_CLEAR },
        { "--batch-bytes", 0, SS_OPT_UINT, &batch, "N", "cut batches at N bytes (default 1048576)",
          .min = 64, .max = SS_SEALED_BATCH_MAX, .flags = SS_OPTF_HEX },
        { "--stream", 0, SS_OPT_UINT, &stream, "ID", "stream id the records carry (default $SS_STREAM or\n"
                                                     "0x53530001)", .max = UINT32_MAX, .flags = SS_OPTF_HEX },
        { NULL },
    };
    const ss_cli cli = {
        .name = "encrypt", .opts = opts,
        .synopsis = "-k KEYFILE [--no-header] [--batch-bytes N] [--stream ID] IN OUT",
        .about = "\nSeal a file of lines into OUT (docs/crypto.md): batches of about 1 MiB of\n"
                 "lines, each sealed as it travels in the encrypted modes, then a sealed\n"
                 "end-of-stream record. `securestreams source` streams OUT as is, and\n"
                 "`securestreams decrypt` gives back IN byte for byte. OUT is written to a\n"
                 "temporary file and renamed at the end, so it is never left half written.\n",
        .min_args = 2, .max_args = 2,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)paths, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!keyfile)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "missing -k KEYFILE");
    ss_encrypt_opts o;
    ss_encrypt_opts_init(&o);
    char err[256];
    if (stream == NO_STREAM && ss_stream_from_env(&o.stream, err, sizeof err) != SS_OK)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "%s", err);
    if (stream != NO_STREAM)
        o.stream = (uint32_t)stream;
    o.header = header;
    o.batch_bytes = (size_t)batch;
    return seal_or_open(&cli, keyfile, paths[0], paths[1], &o);
}

/* securestreams decrypt -k KEYFILE IN OUT. 0 done, 1 error, 2 usage. */
int ss_cmd_decrypt(int argc, char **argv)
{
    const char *keyfile = NULL, *paths[2];
    const ss_opt opts[] = {
        { "--key", 'k', SS_OPT_STRING, &keyfile, "F", "data key file" },
        { NULL },
    };
    const ss_cli cli = {
        .name = "decrypt", .synopsis = "-k KEYFILE IN OUT", .opts = opts,
        .about = "\nCheck and open a sealed file (securestreams encrypt) and write the original\n"
                 "bytes to OUT (mode 0600). Every record is verified: the file header and key\n"
                 "id, each batch's authentication, order and lineage, and the final\n"
                 "end-of-stream record with its counts. On any failure OUT is not created\n"
                 "(nothing partial is left) and the exit status is 1.\n",
        .min_args = 2, .max_args = 2,
    };
    int rc = ss_cli_parse(&cli, argc, argv, (char **)paths, NULL);
    if (rc != SS_CLI_GO)
        return rc;
    if (!keyfile)
        return ss_cli_fail(&cli, SS_EXIT_USAGE, "missing -k KEYFILE");
    return seal_or_open(&cli, keyfile, paths[0], paths[1], NULL);
}
