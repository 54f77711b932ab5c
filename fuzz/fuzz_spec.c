/*
 * fuzz_spec.c - the spec loader (lib/pipeline/spec.c) on any file: Lua
 * run with string, table and math only, then every field checked. Inputs
 * with a loop or string.rep are passed over: a spec that loops or allocates
 * without end is the user's own program hanging their own command, not
 * the loader failing (Ctrl-C ends it), and would only time the fuzzer out.
 */
#include "fuzz.h"
#include "pipeline/spec.h"

#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i + 4 < size; i++)
        if (data[i] == 'w' && data[i + 1] == 'h' && data[i + 2] == 'i' && data[i + 3] == 'l')
            return 0;
    for (size_t i = 0; i + 3 < size; i++)
        if ((data[i] == 'f' && data[i + 1] == 'o' && data[i + 2] == 'r')
            || (data[i] == 'g' && data[i + 1] == 'o' && data[i + 2] == 't')
            || (data[i] == 'r' && data[i + 1] == 'e' && data[i + 2] == 'p'))
            return 0;
    char path[64], err[512];
    int fd = fuzz_file(data, size, path);
    if (fd < 0)
        return 0;
    ss_spec s;
    if (ss_spec_load(path, &s, err, sizeof err) == SS_OK)
        ss_spec_cleanup(&s);
    close(fd);
    return 0;
}
