/*
 * fuzz_eos.c - the end-of-stream map (lib/wire/eos.c) as a router reads it
 * from any producer, in every mode: ss_msgpack_check first, then msgpack-c,
 * then the map's fields.
 */
#include "fuzz.h"
#include "wire/eos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ss_eos_reader r;
    char err[256];
    (void)ss_eos_read(&r, data, size, err, sizeof err);
    ss_eos_reader_cleanup(&r);
    return 0;
}
