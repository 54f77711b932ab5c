/*
 * fuzz.h - what the fuzz targets (fuzz/fuzz_*.c, libFuzzer) share.
 *
 * Each target feeds untrusted bytes to one of the library's parsers the way
 * a hostile peer, file or user would; AddressSanitizer and
 * UndefinedBehaviorSanitizer turn any memory error or undefined behaviour
 * into a crash that libFuzzer saves. A target must not leak: libFuzzer
 * reports leaks as crashes too. scripts/fuzz runs them (make fuzz).
 */
#ifndef SS_FUZZ_H
#define SS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a file that library functions taking a path can open: an
 * anonymous memory file, named /proc/self/fd/N in `path`. Returns the fd
 * (close it when done), or -1. */
int fuzz_file(const uint8_t *data, size_t size, char path[64]);

#endif
