/*
 * memscan.c - counts occurrences of byte patterns in the memory of a running
 * process (every readable mapping, through /proc/PID/mem). The tests use it
 * to show that a canary from the input and the data key never reach the
 * memory of a router or of an enclave worker's host process.
 * Usage: memscan PID HEXPATTERN...   prints one count per pattern.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t unhex(const char *h, unsigned char *out, size_t cap)
{
    size_t n = 0;
    for (; h[0] && h[1] && n < cap; h += 2) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1)
            return 0;
        out[n++] = (unsigned char)v;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: memscan PID HEXPATTERN...\n");
        return 2;
    }
    int np = argc - 2;
    unsigned char pat[16][128];
    size_t plen[16];
    long count[16] = { 0 };
    if (np > 16)
        np = 16;
    for (int i = 0; i < np; i++)
        if (!(plen[i] = unhex(argv[i + 2], pat[i], sizeof pat[i]))) {
            fprintf(stderr, "memscan: bad pattern %s\n", argv[i + 2]);
            return 2;
        }
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/maps", argv[1]);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof path, "/proc/%s/mem", argv[1]);
    int mem = open(path, O_RDONLY);
    if (!maps || mem < 0) {
        fprintf(stderr, "memscan: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[512];
    size_t cap = 1 << 20;
    unsigned char *buf = malloc(cap);
    long scanned = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r')
            continue;
        if (strstr(line, "[vvar]") || strstr(line, "[vsyscall]"))
            continue;
        /* a reservation of 4 GiB or more is no process's data here: it is
         * AddressSanitizer's shadow memory in a sanitized build, terabytes
         * of untouched pages */
        if (hi - lo >= (4ul << 30))
            continue;
        for (unsigned long a = lo; a < hi;) {
            size_t want = hi - a < cap ? hi - a : cap;
            ssize_t got = pread(mem, buf, want, (off_t)a);
            if (got <= 0)
                break;
            scanned += got;
            for (int i = 0; i < np; i++)
                for (ssize_t k = 0; k + (ssize_t)plen[i] <= got; k++)
                    if (buf[k] == pat[i][0] && !memcmp(buf + k, pat[i], plen[i]))
                        count[i]++;
            /* patterns straddling two chunks are missed only if a mapping is
             * larger than 1 MiB and the pattern sits on the boundary: step
             * back by the longest pattern to cover it */
            size_t back = 0;
            for (int i = 0; i < np; i++)
                if (plen[i] > back)
                    back = plen[i];
            a += (size_t)got > back && (unsigned long)(a + got) < hi ? (size_t)got - back : (size_t)got;
        }
    }
    for (int i = 0; i < np; i++)
        printf("%ld\n", count[i]);
    fprintf(stderr, "memscan: %ld bytes scanned\n", scanned);
    free(buf);
    fclose(maps);
    close(mem);
    return 0;
}
