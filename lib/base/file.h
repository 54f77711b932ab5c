/*
 * file.h - the small files every component reads and writes: key files,
 * allow-lists, stage scripts, specs. Each is read whole into memory with a
 * hard upper bound, and written once, never replaced (O_EXCL), so a key is
 * never silently overwritten.
 */
#ifndef SS_FILE_H
#define SS_FILE_H

#include "base/common.h"

#include <sys/types.h>

/* Flags of ss_file_read. */
enum {
    SS_FILE_SECRET = 1,   /* key material: locked memory, wiped when freed */
};

/* Read the regular file `path`, of at most `max` bytes, into a buffer the
 * caller releases with ss_file_free(*out, *len, flags); the buffer holds a
 * NUL after its *len bytes. *mode (may be NULL) receives the file's
 * permission bits. Errors: SS_ERR_IO (cannot open or read, with errno's
 * text), SS_ERR_FORMAT (not a regular file), SS_ERR_TOOBIG (larger than
 * max), SS_ERR_NOMEM; each with a message naming the file in err. */
ss_err ss_file_read(const char *path, size_t max, int flags, char **out, size_t *len, mode_t *mode,
                    char *err, size_t errlen);

/* Release a buffer of ss_file_read, wiping it first under SS_FILE_SECRET.
 * Accepts NULL. */
void ss_file_free(char *buf, size_t len, int flags);

/* Create `path` with exactly `mode` (it must not exist: a file is never
 * replaced) and write `len` bytes to it, synced; a partial file is removed. SS_ERR_IO with a message naming the file. */
ss_err ss_file_write_new(const char *path, mode_t mode, const void *data, size_t len, char *err,
                         size_t errlen);

/* Write all n bytes to fd, retrying on EINTR and short writes: 0, or -1
 * with errno set. */
int ss_write_all(int fd, const void *p, size_t n);

#endif
