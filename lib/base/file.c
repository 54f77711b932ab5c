/*
 * file.c - small files read whole with a bound, written once (file.h).
 */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void ss_file_free(char *buf, size_t len, int flags)
{
    if (!buf)
        return;
    (void)len;
    if (flags & SS_FILE_SECRET)
        sodium_free(buf);   /* wipes it */
    else
        free(buf);
}

ss_err ss_file_read(const char *path, size_t max, int flags, char **out, size_t *len, mode_t *mode,
                    char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer before fstat
     * refuses it; on a regular file it changes nothing. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int en = errno;
        ss_say(err, errlen, "cannot open %s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    ss_err rc = SS_ERR_IO;
    char *buf = NULL;
    size_t n = 0, cap;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int en = errno;
        ss_say(err, errlen, "cannot stat %s: %s", path, strerror(en));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        ss_say(err, errlen, "%s: not a regular file", path);
        rc = SS_ERR_FORMAT;
        goto out;
    }
    if (mode)
        *mode = st.st_mode & 07777;
    if ((uint64_t)st.st_size > max) {
        ss_say(err, errlen, "%s: larger than %zu bytes", path, max);
        rc = SS_ERR_TOOBIG;
        goto out;
    }
    /* Secrets: one allocation of the bound (plus the NUL), in locked memory
     * wiped when freed, so no copy is left in a buffer realloc gave back.
     * Other files: the file's size, grown up to the bound if it grows. */
    if ((flags & SS_FILE_SECRET) && sodium_init() < 0) {   /* idempotent; sodium_malloc needs it */
        ss_say(err, errlen, "cannot read %s: libsodium does not start", path);
        rc = SS_ERR_NOMEM;
        goto out;
    }
    cap = (flags & SS_FILE_SECRET) ? max : (size_t)st.st_size;
    buf = (flags & SS_FILE_SECRET) ? sodium_malloc(cap + 1) : malloc(cap + 1);
    if (!buf) {
        ss_say(err, errlen, "out of memory reading %s", path);
        rc = SS_ERR_NOMEM;
        goto out;
    }
    for (;;) {
        if (n == cap + 1) {   /* full: it grew while we read it (never a secret's) */
            size_t more = cap < max / 2 ? 2 * cap + 4096 : max;
            if (more > max)
                more = max;
            char *p = realloc(buf, more + 1);
            if (!p) {
                ss_say(err, errlen, "out of memory reading %s", path);
                rc = SS_ERR_NOMEM;
                goto out;
            }
            buf = p;
            cap = more;
        }
        ssize_t got = read(fd, buf + n, cap + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int en = errno;
            ss_say(err, errlen, "cannot read %s: %s", path, strerror(en));
            goto out;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > max) {   /* it grew while we read it */
            ss_say(err, errlen, "%s: larger than %zu bytes", path, max);
            rc = SS_ERR_TOOBIG;
            goto out;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
    rc = SS_OK;
out:
    ss_file_free(buf, n, flags);
    close(fd);
    return rc;
}

int ss_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

ss_err ss_file_write_new(const char *path, mode_t mode, const void *data, size_t len, char *err,
                         size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        int en = errno;
        if (en == EEXIST)
            ss_say(err, errlen, "%s already exists; refusing to overwrite it (remove it first to "
                   "replace it)", path);
        else
            ss_say(err, errlen, "cannot create %s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    int en = 0;
    if (fchmod(fd, mode) != 0        /* the umask may have taken bits of a .pub */
        || ss_write_all(fd, data, len) != 0 || fsync(fd) != 0)
        en = errno;
    if (close(fd) != 0 && !en)
        en = errno;
    if (en) {
        unlink(path);
        ss_say(err, errlen, "cannot write %s: %s", path, strerror(en));
        return SS_ERR_IO;
    }
    return SS_OK;
}
