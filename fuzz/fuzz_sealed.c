/*
 * fuzz_sealed.c - the sealed-file reader (lib/crypto/sealed.c) on any
 * file, as a source streams one and `decrypt` opens one: the header, every
 * record, the trailer and its counts.
 */
#include "fuzz.h"
#include "crypto/crypto.h"
#include "crypto/sealed.h"

#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static ss_key_t k;
    if (!ready) {
        if (ss_crypto_init() != SS_OK)
            return 0;
        memset(&k, 0x5a, sizeof k);
        ready = 1;
    }
    char path[64], err[512];
    int fd = fuzz_file(data, size, path);
    if (fd < 0)
        return 0;
    uint32_t stream;
    (void)ss_sealed_file_probe(path, &stream);
    ss_sealed_file_t *f = NULL;
    if (ss_sealed_file_open(path, &k, &f, err, sizeof err) == SS_OK) {
        ss_header_t h;
        const uint8_t *raw, *plain;
        size_t rawlen, plen;
        for (int i = 0; i < 10000; i++)
            if (ss_sealed_file_next(f, &h, &raw, &rawlen, &plain, &plen, err, sizeof err) != SS_OK)
                break;
        ss_sealed_file_close(&f);
    }
    close(fd);
    return 0;
}
