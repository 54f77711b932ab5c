/*
 * channel.c - the channel's shared memory and its wake-ups (channel.h).
 *
 * A waiting side first spins on the other's counter for up to SPIN_NS (a
 * call that comes back within it costs no context switch), then sleeps in
 * read() on the doorbell. The spin reads the clock through the vDSO only:
 * the child runs it under a seccomp filter that allows no clock system
 * call, and where the clock would need one it does not spin at all.
 */
#include "enclave/channel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 30000   /* spin this long for the other side before sleeping */

static void layout(ss_channel *ch, uint8_t *shm)
{
    ch->shm = shm;
    ch->ctl = (ss_channel_ctl *)shm;
    ch->in = shm + SS_CHANNEL_CTL_BYTES;
    ch->out = ch->in + SS_CHANNEL_AREA_BYTES;
}

ss_err ss_channel_create(ss_channel *ch, int *fd, char *err, size_t errlen)
{
    memset(ch, 0, sizeof *ch);
    *fd = memfd_create("securestreams-enclave", MFD_CLOEXEC);
    if (*fd < 0 || ftruncate(*fd, (off_t)SS_CHANNEL_BYTES) != 0) {
        int en = errno;
        ss_say(err, errlen, "cannot create the enclave's shared memory: %s", strerror(en));
        return SS_ERR_IO;
    }
    void *shm = mmap(NULL, SS_CHANNEL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (shm == MAP_FAILED) {
        int en = errno;
        ss_say(err, errlen, "cannot map the enclave's shared memory: %s", strerror(en));
        return SS_ERR_IO;
    }
    layout(ch, shm);
    ch->ctl->magic = SS_CHANNEL_MAGIC;
    return SS_OK;
}

int ss_channel_attach(ss_channel *ch, int fd)
{
    memset(ch, 0, sizeof *ch);
    uint8_t *shm = mmap(NULL, SS_CHANNEL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (shm == MAP_FAILED)
        return -1;
    layout(ch, shm);
    return 0;
}

void ss_channel_detach(ss_channel *ch)
{
    if (ch->shm)
        munmap(ch->shm, SS_CHANNEL_BYTES);
    memset(ch, 0, sizeof *ch);
}

int ss_channel_spin_allowed(void)
{
    const char *s = getenv("SS_ENCLAVE_SPIN");
    if (s && *s)
        return strcmp(s, "0") != 0;
    return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* CLOCK_MONOTONIC from the vDSO (no system call); -1 if unavailable. */
static int64_t mono_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until *counter reaches `want` or SPIN_NS pass; 1 if it did. */
static int spin_for(_Atomic uint64_t *counter, uint64_t want)
{
    int64_t until = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load(counter) >= want)
            return 1;
        cpu_relax();
        if ((i & 63) == 63) {
            int64_t now = mono_ns();
            if (now < 0)
                return 0;   /* no clock without a system call: do not spin */
            if (!until)
                until = now + SPIN_NS;
            else if (now >= until)
                return 0;
        }
    }
}

int ss_channel_await(int fd, ss_spinner *sp, _Atomic uint64_t *counter, uint64_t want,
                     _Atomic uint32_t *waiting)
{
    if (sp->enabled && (sp->misses < 4 || sp->waits++ % 16 == 0)) {
        if (spin_for(counter, want)) {
            sp->misses = 0;
            return 0;
        }
        sp->misses++;
    }
    for (;;) {
        atomic_store(waiting, 1);
        if (atomic_load(counter) >= want) {
            atomic_store(waiting, 0);
            return 0;
        }
        char b;
        ssize_t n = read(fd, &b, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            atomic_store(waiting, 0);
            return -1;
        }
    }
}

int ss_channel_ring(int fd, _Atomic uint32_t *waiting, int host)
{
    if (!atomic_load(waiting))
        return 0;
    atomic_store(waiting, 0);
    for (;;) {
        ssize_t n = host ? send(fd, "r", 1, MSG_NOSIGNAL) : write(fd, "r", 1);
        if (n == 1)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
}
