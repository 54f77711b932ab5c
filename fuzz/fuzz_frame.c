/*
 * fuzz_frame.c - the wire format's decoders (lib/wire/frame.c): a link
 * frame, a stream header and a lineage frame, as a router or consumer reads
 * them from any peer. Decoding what was decoded and encoded again must give
 * the same bytes.
 */
#include "fuzz.h"
#include "wire/frame.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ss_link_t l;
    if (ss_link_decode(data, size, &l) == SS_OK) {
        uint8_t again[SS_LINK_SIZE];
        ss_link_encode(&l, again);
        if (memcmp(again, data, SS_LINK_SIZE) != 0)
            abort();
    }
    ss_header_t h;
    if (ss_header_decode(data, size, &h) == SS_OK) {
        uint8_t again[SS_HEADER_SIZE];
        ss_header_encode(&h, again);
        if (memcmp(again, data, SS_HEADER_SIZE) != 0)
            abort();
    }
    size_t n;
    if (ss_lineage_check(data, size, &n) == SS_OK) {
        for (size_t i = 0; i < n; i++)
            (void)ss_lineage_get(data, i);
    }
    return 0;
}
