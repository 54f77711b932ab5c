/*
 * measure.c - the enclave measurement (enclave.h): BLAKE2b-256 over the
 * enclave program, this executable as /proc/self/exe, then the stage code.
 *
 * The core measures the very bytes it compiles (core.c), so what a
 * key-release policy checks (`securestreams measure SCRIPT`) is what runs;
 * the program is streamed through the hash, never held in memory whole.
 */
#include "enclave/core.h"
#include "enclave/enclave.h"

#include "base/file.h"
#include "crypto/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROGRAM "/proc/self/exe"

static ss_err hash_file(crypto_generichash_state *st, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int en = errno;
        ss_say(err, errlen, "%s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    static uint8_t block[1 << 16];
    ss_err rc = SS_OK;
    for (;;) {
        ssize_t n = read(fd, block, sizeof block);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            ss_say(err, errlen, "%s: %s", path, strerror(en));
            rc = SS_ERR_IO;
            break;
        }
        if (n == 0)
            break;
        crypto_generichash_update(st, block, (size_t)n);
    }
    close(fd);
    return rc;
}

ss_err ss_enclave_measure_code(const void *code, size_t len, char out[65], char *err, size_t errlen)
{
    crypto_generichash_state st;
    uint8_t h[32];
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    ss_err rc = hash_file(&st, PROGRAM, err, errlen);
    if (rc != SS_OK)
        return rc;
    crypto_generichash_update(&st, code, len);
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(out, 65, h, sizeof h);
    return SS_OK;
}

ss_err ss_enclave_measure(const char *script_or_code, int is_code, char out[65], char *err,
                          size_t errlen)
{
    if (ss_crypto_init() != SS_OK) {
        ss_say(err, errlen, "cannot start libsodium");
        return SS_ERR_CRYPTO;
    }
    if (is_code)
        return ss_enclave_measure_code(script_or_code, strlen(script_or_code), out, err, errlen);
    char *code;
    size_t len;
    ss_err rc = ss_file_read(script_or_code, SS_CORE_MAX_CODE, 0, &code, &len, NULL, err, errlen);
    if (rc != SS_OK)
        return rc;
    rc = ss_enclave_measure_code(code, len, out, err, errlen);
    ss_file_free(code, len, 0);
    return rc;
}
