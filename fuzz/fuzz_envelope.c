/*
 * fuzz_envelope.c - opening a sealed stream message (lib/wire/envelope.c)
 * as a consumer in the encrypted modes does with whatever arrives: the input
 * is cut into a 40-byte header, a lineage frame (its length in the next
 * byte, in 16-byte entries) and the sealed payload.
 */
#include "fuzz.h"
#include "crypto/crypto.h"
#include "wire/envelope.h"

#include <sanitizer/lsan_interface.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* One envelope for the run. Its opener lives in sodium_malloc'd pages,
     * which LeakSanitizer does not scan, so the cipher contexts it holds
     * would look leaked: they are made with leak checking off. */
    static ss_envelope_t *env;
    if (!env) {
        ss_key_t k;
        if (ss_crypto_init() != SS_OK)
            return 0;
        memset(&k, 0x5a, sizeof k);   /* fixed, so a corpus entry can carry a real seal */
        __lsan_disable();
        static const uint8_t run[SS_RUN_BYTES];   /* a fixed run: a corpus entry can match it */
        ss_err rc = ss_envelope_new(&k, &(ss_envelope_opts){ .run = run, .role = SS_MAKER_WORKER,
                                                             .pos = 1 }, &env);
        __lsan_enable();
        if (rc != SS_OK)
            return 0;
    }
    if (size < SS_HEADER_SIZE + 1)
        return 0;
    const uint8_t *hdr = data;
    size_t llen = (size_t)(data[SS_HEADER_SIZE] % 4) * SS_LINEAGE_ENTRY;
    size_t rest = size - SS_HEADER_SIZE - 1;
    if (llen > rest)
        llen = rest;
    const uint8_t *lineage = data + SS_HEADER_SIZE + 1;
    const uint8_t *sealed = lineage + llen;
    const uint8_t *plain;
    size_t plen;
    char why[256];
    ss_open_info info;
    ss_maker maker;
    (void)ss_envelope_open(env, hdr, lineage, llen, sealed, rest - llen, &plain, &plen, &info, why,
                           sizeof why);
    (void)ss_envelope_open_record(env, 1, "fuzz", sealed, rest - llen, &plain, &plen, &maker, why,
                                  sizeof why);
    return 0;
}
