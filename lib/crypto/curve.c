/*
 * curve.c - CurveZMQ on the links (docs/curve.md): key files, the
 * allow-list, the socket options of clients and servers, the ZAP handler
 * that checks client keys for a router, and the socket monitor the links
 * use to tell a refused key from a silent router.
 *
 * Key files are small text files (at most KEYFILE_MAX bytes), one keyword
 * and one Z85 key per line after a versioned first line. A secret file is
 * never read when group or others may read or write it; secret keys held in
 * memory are wiped (sodium_memzero) once handed to libzmq.
 *
 * The ZAP handler keeps the allow-list sorted (binary search); it answers
 * from the caller's poll loop, so no thread touches the router's context
 * behind its back. libzmq asks it about every CURVE handshake on a socket
 * that set ZMQ_ZAP_DOMAIN; if no handler were bound, libzmq would let every
 * client in, hence ss_curve_server_setup's precondition.
 */
#define _POSIX_C_SOURCE 200809L
#include "crypto/curve.h"
#include "base/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define KEYFILE_MAX 4096             /* bytes in a key file */
#define LIST_MAX (4u << 20)          /* bytes in an allow-list file */
#define SECRET_HEADER "securestreams-curve 1"
#define PUBLIC_HEADER "securestreams-curve-public 1"
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_LOG_LIMIT 100            /* refusal lines logged, one per new key */
#define ZAP_RECENT 64                /* refused keys remembered to log each once */
#define ZAP_MAX_FRAMES 8
#define ZAP_BIND_WAIT_MS 250         /* a closed handler's endpoint is released by
                                        libzmq's reaper thread, a moment later */

/* ---- files ---- */

static int next_line(char **cursor, char **line)
{
    char *s = *cursor;
    if (!*s)
        return 0;
    char *nl = strchr(s, '\n');
    if (nl) {
        *nl = '\0';
        *cursor = nl + 1;
    } else {
        *cursor = s + strlen(s);
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    *line = s;
    return 1;
}

int ss_curve_key_valid(const char *z85)
{
    uint8_t bin[32];
    if (!z85 || strlen(z85) != SS_Z85_KEY - 1)
        return 0;
    return zmq_z85_decode(bin, z85) != NULL;
}

enum { FILE_SECRET = 1, FILE_PUBLIC = 2 };

/* Parse a key file. `kind` receives FILE_SECRET or FILE_PUBLIC; sec may be
 * NULL (the secret line is then checked for form but not copied). */
static ss_err parse_keyfile(const char *path, char *text, int *kind, char pub[SS_Z85_KEY],
                            char sec[SS_Z85_KEY], char *err, size_t errlen)
{
    char *cur = text, *line;
    int lineno = 1, have_pub = 0, have_sec = 0;
    if (!next_line(&cur, &line)) {
        snprintf(err, errlen, "%s: empty, not a key file", path);
        return SS_ERR_FORMAT;
    }
    if (strcmp(line, SECRET_HEADER) == 0) {
        *kind = FILE_SECRET;
    } else if (strcmp(line, PUBLIC_HEADER) == 0) {
        *kind = FILE_PUBLIC;
    } else if (strncmp(line, "securestreams-curve", 19) == 0) {
        snprintf(err, errlen, "%s line 1: unsupported version (this program reads '"
                 SECRET_HEADER "' and '" PUBLIC_HEADER "')", path);
        return SS_ERR_FORMAT;
    } else {
        snprintf(err, errlen, "%s line 1: not a CurveZMQ key file of securestreams (expected '"
                 SECRET_HEADER "' or '" PUBLIC_HEADER "')", path);
        return SS_ERR_FORMAT;
    }
    while (next_line(&cur, &line)) {
        lineno++;
        if (!*line)
            continue;
        int is_pub = strncmp(line, "public ", 7) == 0;
        int is_sec = strncmp(line, "secret ", 7) == 0;
        if (!is_pub && !is_sec) {
            snprintf(err, errlen, "%s line %d: expected 'public KEY'%s", path, lineno,
                     *kind == FILE_SECRET ? " or 'secret KEY'" : "");
            return SS_ERR_FORMAT;
        }
        if (is_sec && *kind == FILE_PUBLIC) {
            snprintf(err, errlen, "%s line %d: a secret key in a public key file", path, lineno);
            return SS_ERR_FORMAT;
        }
        if ((is_pub && have_pub) || (is_sec && have_sec)) {
            snprintf(err, errlen, "%s line %d: a second %s key", path, lineno,
                     is_pub ? "public" : "secret");
            return SS_ERR_FORMAT;
        }
        const char *key = line + 7;
        if (!ss_curve_key_valid(key)) {
            snprintf(err, errlen, "%s line %d: the %s key is not 40 Z85 characters", path, lineno,
                     is_pub ? "public" : "secret");
            return SS_ERR_FORMAT;
        }
        if (is_pub) {
            memcpy(pub, key, SS_Z85_KEY);
            have_pub = 1;
        } else {
            if (sec)
                memcpy(sec, key, SS_Z85_KEY);
            have_sec = 1;
        }
    }
    if (!have_pub) {
        snprintf(err, errlen, "%s: no 'public KEY' line", path);
        return SS_ERR_FORMAT;
    }
    if (*kind == FILE_SECRET && !have_sec) {
        snprintf(err, errlen, "%s: no 'secret KEY' line", path);
        return SS_ERR_FORMAT;
    }
    return SS_OK;
}

ss_err ss_curve_load_secret(const char *path, char pub[SS_Z85_KEY], char sec[SS_Z85_KEY],
                            char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int kind = 0;
    mode_t mode = 0;
    ss_err rc = ss_file_read(path, KEYFILE_MAX, SS_FILE_SECRET, &text, &len, &mode, err, errlen);
    if (rc != SS_OK)
        return rc;
    rc = parse_keyfile(path, text, &kind, pub, sec, err, errlen);
    ss_file_free(text, len, SS_FILE_SECRET);
    if (rc == SS_OK && kind != FILE_SECRET) {
        snprintf(err, errlen, "%s: a public key file; give the secret key file (the one "
                 "without .pub)", path);
        rc = SS_ERR_FORMAT;
    }
    if (rc == SS_OK && (mode & 077)) {
        snprintf(err, errlen, "%s: readable or writable by others (mode %04o); chmod 600 it",
                 path, (unsigned)mode);
        rc = SS_ERR_CRYPTO;
    }
    if (rc == SS_OK) {
        char derived[SS_Z85_KEY];
        if (zmq_curve_public(derived, sec) != 0 || strcmp(derived, pub) != 0) {
            snprintf(err, errlen, "%s: the public key does not belong to the secret key", path);
            rc = SS_ERR_FORMAT;
        }
    }
    if (rc != SS_OK)
        sodium_memzero(sec, SS_Z85_KEY);
    return rc;
}

ss_err ss_curve_load_public(const char *path, char pub[SS_Z85_KEY], char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int kind = 0;
    ss_err rc = ss_file_read(path, KEYFILE_MAX, SS_FILE_SECRET, &text, &len, NULL, err, errlen);
    if (rc != SS_OK)
        return rc;
    rc = parse_keyfile(path, text, &kind, pub, NULL, err, errlen);
    ss_file_free(text, len, SS_FILE_SECRET);
    return rc;
}

ss_err ss_curve_keygen(const char *path, char *err, size_t errlen)
{
    char pubpath[PATH_MAX], pub[SS_Z85_KEY], sec[SS_Z85_KEY], text[256];
    struct stat st;
    if (!path || !*path) {
        snprintf(err, errlen, "no key file name given");
        return SS_ERR_USAGE;
    }
    if ((size_t)snprintf(pubpath, sizeof pubpath, "%s.pub", path) >= sizeof pubpath) {
        snprintf(err, errlen, "key file name too long: %s", path);
        return SS_ERR_USAGE;
    }
    if (lstat(pubpath, &st) == 0) {
        snprintf(err, errlen, "%s exists; refusing to overwrite it", pubpath);
        return SS_ERR_IO;
    }
    if (zmq_curve_keypair(pub, sec) != 0) {
        int en = errno;
        snprintf(err, errlen, "cannot make a CurveZMQ key pair: %s", zmq_strerror(en));
        return SS_ERR_CRYPTO;
    }
    int n = snprintf(text, sizeof text, SECRET_HEADER "\npublic %s\nsecret %s\n", pub, sec);
    sodium_memzero(sec, sizeof sec);
    ss_err rc = ss_file_write_new(path, 0600, text, (size_t)n, err, errlen);
    sodium_memzero(text, sizeof text);
    if (rc != SS_OK)
        return rc;
    n = snprintf(text, sizeof text, PUBLIC_HEADER "\npublic %s\n", pub);
    rc = ss_file_write_new(pubpath, 0644, text, (size_t)n, err, errlen);
    if (rc != SS_OK)
        unlink(path);   /* ours: created above with O_EXCL */
    return rc;
}

/* ---- socket options ---- */

static ss_err decode_key(const char *z85, const char *what, uint8_t bin[32], char *err,
                         size_t errlen)
{
    if (!ss_curve_key_valid(z85) || !zmq_z85_decode(bin, z85)) {
        snprintf(err, errlen, "the %s is not 40 Z85 characters", what);
        return SS_ERR_FORMAT;
    }
    return SS_OK;
}

ss_err ss_curve_client_setup(void *sock, const char *server_pub, const char *pub,
                             const char *sec, char *err, size_t errlen)
{
    uint8_t server_bin[32], pub_bin[32], sec_bin[32];
    ss_err rc = decode_key(server_pub, "server's public key", server_bin, err, errlen);
    if (rc == SS_OK)
        rc = decode_key(pub, "client's public key", pub_bin, err, errlen);
    if (rc == SS_OK)
        rc = decode_key(sec, "client's secret key", sec_bin, err, errlen);
    if (rc == SS_OK && (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_bin, 32) != 0
                        || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub_bin, 32) != 0
                        || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec_bin, 32) != 0)) {
        int en = errno;
        snprintf(err, errlen, "cannot make the socket a CurveZMQ client: %s%s", zmq_strerror(en),
                 zmq_has("curve") ? "" : " (this libzmq was built without CURVE)");
        rc = SS_ERR_IO;
    }
    sodium_memzero(sec_bin, sizeof sec_bin);
    return rc;
}

ss_err ss_curve_client_setup_files(void *sock, const char *key_file, const char *server_file,
                                   char pub_out[SS_Z85_KEY], char *err, size_t errlen)
{
    char server[SS_Z85_KEY], pub[SS_Z85_KEY], sec[SS_Z85_KEY];
    ss_err rc = ss_curve_load_public(server_file, server, err, errlen);
    if (rc == SS_OK)
        rc = ss_curve_load_secret(key_file, pub, sec, err, errlen);
    if (rc == SS_OK)
        rc = ss_curve_client_setup(sock, server, pub, sec, err, errlen);
    sodium_memzero(sec, sizeof sec);
    if (rc == SS_OK && pub_out)
        memcpy(pub_out, pub, SS_Z85_KEY);
    return rc;
}

ss_err ss_curve_server_setup(void *sock, const char *sec, char *err, size_t errlen)
{
    uint8_t sec_bin[32];
    int one = 1;
    ss_err rc = decode_key(sec, "server's secret key", sec_bin, err, errlen);
    if (rc == SS_OK && (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0
                        || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec_bin, 32) != 0
                        || zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, SS_CURVE_ZAP_DOMAIN,
                                          strlen(SS_CURVE_ZAP_DOMAIN)) != 0)) {
        int en = errno;
        snprintf(err, errlen, "cannot make the socket a CurveZMQ server: %s%s", zmq_strerror(en),
                 zmq_has("curve") ? "" : " (this libzmq was built without CURVE)");
        rc = SS_ERR_IO;
    }
    sodium_memzero(sec_bin, sizeof sec_bin);
    return rc;
}

/* ---- the allow-list ---- */

typedef struct {
    uint8_t key[32];
    unsigned roles;          /* SS_CURVE_ROLE_* bits; 0: any */
} allow_entry;

struct ss_curve_allow {
    allow_entry *e;          /* sorted by key, unique */
    size_t n, cap;
    char path[PATH_MAX];
};

static const struct {
    const char *name;
    unsigned bit;
} role_names[] = {
    { "source", SS_CURVE_ROLE_SOURCE },   { "worker", SS_CURVE_ROLE_WORKER },
    { "sink", SS_CURVE_ROLE_SINK },       { "produce", SS_CURVE_ROLE_PRODUCE },
    { "consume", SS_CURVE_ROLE_CONSUME },
};
#define NROLES (sizeof role_names / sizeof role_names[0])
#define ROLE_LIST "source, worker, sink, produce, consume"

int ss_curve_role_parse(const char *word, size_t len, unsigned *bit)
{
    for (size_t i = 0; i < NROLES; i++)
        if (strlen(role_names[i].name) == len && memcmp(role_names[i].name, word, len) == 0) {
            *bit = role_names[i].bit;
            return 1;
        }
    return 0;
}

const char *ss_curve_roles_str(unsigned roles, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    if (roles == 0)
        snprintf(buf, len, "any");
    for (size_t i = 0; i < NROLES && o < len; i++)
        if (roles & role_names[i].bit)
            o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? "," : "", role_names[i].name);
    return buf;
}

int ss_curve_roles_may_produce(unsigned roles)
{
    return roles == 0
        || (roles & (SS_CURVE_ROLE_SOURCE | SS_CURVE_ROLE_WORKER | SS_CURVE_ROLE_PRODUCE));
}

int ss_curve_roles_may_consume(unsigned roles)
{
    return roles == 0
        || (roles & (SS_CURVE_ROLE_WORKER | SS_CURVE_ROLE_SINK | SS_CURVE_ROLE_CONSUME));
}

int ss_curve_roles_may_publish(unsigned roles, int only_self, int names_self)
{
    return roles == 0 || (roles & SS_CURVE_ROLE_PRODUCE)
        || ((roles & SS_CURVE_ROLE_SOURCE) && only_self)
        || ((roles & SS_CURVE_ROLE_WORKER) && !names_self);
}

static ss_err allow_add(ss_curve_allow_t *a, const char *z85, unsigned roles, const char *where,
                        char *err, size_t errlen)
{
    if (a->n == a->cap) {
        if (a->cap >= SS_CURVE_ALLOW_MAX) {
            snprintf(err, errlen, "%s: more than %d keys in the allow-list", where,
                     SS_CURVE_ALLOW_MAX);
            return SS_ERR_TOOBIG;
        }
        size_t cap = a->cap ? 2 * a->cap : 16;
        allow_entry *e = realloc(a->e, cap * sizeof *e);
        if (!e) {
            snprintf(err, errlen, "out of memory loading the allow-list %s", a->path);
            return SS_ERR_NOMEM;
        }
        a->e = e;
        a->cap = cap;
    }
    if (!zmq_z85_decode(a->e[a->n].key, z85)) {
        snprintf(err, errlen, "%s: not a Z85 key", where);
        return SS_ERR_FORMAT;
    }
    a->e[a->n].roles = roles;
    a->n++;
    return SS_OK;
}

/* Compares the keys of two entries, or a bare key (bsearch) with an entry. */
static int key_cmp(const void *x, const void *y)
{
    return memcmp(x, y, 32);
}

/* The roles after a key or path on a list's line: blank-separated names. */
static ss_err parse_roles(char *s, unsigned *roles, const char *where, char *err, size_t errlen)
{
    *roles = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s)
            return SS_OK;
        size_t n = strcspn(s, " \t");
        unsigned bit;
        if (!ss_curve_role_parse(s, n, &bit)) {
            snprintf(err, errlen, "%s: unknown role '%.*s' (the roles are " ROLE_LIST
                     "; a path may not contain blanks)", where, (int)(n > 64 ? 64 : n), s);
            return SS_ERR_FORMAT;
        }
        *roles |= bit;
        s += n;
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

static ss_err allow_add_file(ss_curve_allow_t *a, const char *file, unsigned roles, char *err,
                             size_t errlen)
{
    char pub[SS_Z85_KEY];
    ss_err rc = ss_curve_load_public(file, pub, err, errlen);
    return rc == SS_OK ? allow_add(a, pub, roles, file, err, errlen) : rc;
}

/* The *.pub files of `dir`, with `roles`; with `subdirs`, also those of its
 * subdirectories named after a role, with that role. */
static ss_err allow_load_dir(ss_curve_allow_t *a, const char *dir, unsigned roles, int subdirs,
                             char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        int en = errno;
        snprintf(err, errlen, "cannot read the allow-list directory %s: %s", dir, strerror(en));
        return SS_ERR_IO;
    }
    ss_err rc = SS_OK;
    struct dirent *e;
    while (rc == SS_OK && (e = readdir(d)) != NULL) {
        unsigned bit = 0;
        int is_pub = ends_with(e->d_name, ".pub");
        int is_role = subdirs && ss_curve_role_parse(e->d_name, strlen(e->d_name), &bit);
        if (!is_pub && !is_role)
            continue;
        char file[PATH_MAX];
        struct stat st;
        if ((size_t)snprintf(file, sizeof file, "%s/%s", dir, e->d_name) >= sizeof file) {
            snprintf(err, errlen, "%s/%s: path too long", dir, e->d_name);
            rc = SS_ERR_USAGE;
            break;
        }
        if (stat(file, &st) != 0)
            continue;
        if (is_role && S_ISDIR(st.st_mode))
            rc = allow_load_dir(a, file, bit, 0, err, errlen);
        else if (is_pub && S_ISREG(st.st_mode))
            rc = allow_add_file(a, file, roles, err, errlen);
    }
    closedir(d);
    return rc;
}

static ss_err allow_load_list(ss_curve_allow_t *a, const char *path, char *text, char *err,
                              size_t errlen)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    char *cur = text, *line;
    int lineno = 0;
    while (next_line(&cur, &line)) {
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s line %d", path, lineno);
        /* KEY-or-PATH [ROLE...]: no blank is a Z85 character */
        char *rest = line + strcspn(line, " \t");
        char sep = *rest;
        *rest = '\0';
        int is_key = ss_curve_key_valid(line);
        *rest = sep;
        if (!is_key && (!*line || *line == '#'))
            continue;
        unsigned roles;
        ss_err rc = parse_roles(rest, &roles, where, err, errlen);
        if (rc != SS_OK)
            return rc;
        *rest = '\0';
        if (is_key) {
            rc = allow_add(a, line, roles, where, err, errlen);
            if (rc != SS_OK)
                return rc;
            continue;
        }
        char file[PATH_MAX];
        if ((size_t)snprintf(file, sizeof file, "%s%s%s", *line == '/' ? "" : dir,
                             *line == '/' ? "" : "/", line) >= sizeof file) {
            snprintf(err, errlen, "%s: path too long", where);
            return SS_ERR_USAGE;
        }
        char sub[PATH_MAX + 64];
        rc = allow_add_file(a, file, roles, sub, sizeof sub);
        if (rc != SS_OK) {
            snprintf(err, errlen, "%s: %s", where, sub);
            return rc;
        }
    }
    return SS_OK;
}

ss_err ss_curve_allow_load(const char *path, ss_curve_allow_t **out, char *err, size_t errlen)
{
    *out = NULL;
    ss_curve_allow_t *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory loading the allow-list %s", path);
        return SS_ERR_NOMEM;
    }
    snprintf(a->path, sizeof a->path, "%s", path);
    ss_err rc;
    char *text = NULL;
    size_t len = 0;
    struct stat st;
    if (stat(path, &st) != 0) {
        int en = errno;
        snprintf(err, errlen, "cannot read the allow-list %s: %s", path, strerror(en));
        rc = SS_ERR_IO;
    } else if (S_ISDIR(st.st_mode)) {
        rc = allow_load_dir(a, path, 0, 1, err, errlen);
    } else if ((rc = ss_file_read(path, LIST_MAX, 0, &text, &len, NULL, err, errlen)) == SS_OK) {
        if (strncmp(text, PUBLIC_HEADER "\n", sizeof PUBLIC_HEADER) == 0
            || strncmp(text, PUBLIC_HEADER "\r", sizeof PUBLIC_HEADER) == 0) {
            rc = allow_add_file(a, path, 0, err, errlen);
        } else if (strncmp(text, SECRET_HEADER, sizeof SECRET_HEADER - 1) == 0) {
            snprintf(err, errlen, "%s: a secret key file; the allow-list takes public keys "
                     "(.pub files)", path);
            rc = SS_ERR_USAGE;
        } else {
            rc = allow_load_list(a, path, text, err, errlen);
        }
    }
    ss_file_free(text, len, 0);
    if (rc == SS_OK && a->n == 0) {
        snprintf(err, errlen, "the allow-list %s names no client key%s", path,
                 S_ISDIR(st.st_mode) ? " (no *.pub file in the directory)" : "");
        rc = SS_ERR_USAGE;
    }
    if (rc != SS_OK) {
        ss_curve_allow_destroy(&a);
        return rc;
    }
    /* One entry per key; a key listed more than once has every role it was
     * given, and any role when one of its entries has none. */
    qsort(a->e, a->n, sizeof *a->e, key_cmp);
    size_t u = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (u > 0 && memcmp(a->e[u - 1].key, a->e[i].key, 32) == 0) {
            allow_entry *k = &a->e[u - 1];
            k->roles = (k->roles && a->e[i].roles) ? k->roles | a->e[i].roles : 0;
            continue;
        }
        a->e[u++] = a->e[i];
    }
    a->n = u;
    *out = a;
    return SS_OK;
}

int ss_curve_allow_has(const ss_curve_allow_t *a, const uint8_t key[32])
{
    return bsearch(key, a->e, a->n, sizeof *a->e, key_cmp) != NULL;
}

int ss_curve_allow_roles(const ss_curve_allow_t *a, const uint8_t key[32], unsigned *roles)
{
    const allow_entry *e = bsearch(key, a->e, a->n, sizeof *a->e, key_cmp);
    if (e && roles)
        *roles = e->roles;
    return e != NULL;
}

size_t ss_curve_allow_count(const ss_curve_allow_t *a)
{
    return a->n;
}

const char *ss_curve_allow_path(const ss_curve_allow_t *a)
{
    return a->path;
}

void ss_curve_allow_destroy(ss_curve_allow_t **ap)
{
    if (!ap || !*ap)
        return;
    free((*ap)->e);
    free(*ap);
    *ap = NULL;
}

/* ---- the ZAP handler ---- */

struct ss_curve_zap {
    void *sock;
    ss_curve_allow_t *allow;
    zmq_msg_t part[ZAP_MAX_FRAMES];
    uint64_t accepted, refused;
    uint64_t nlog;                       /* log limiter */
    uint8_t recent[ZAP_RECENT][32];      /* refused keys already logged */
    size_t nrecent, next_recent;
};

ss_err ss_curve_zap_new(void *zctx, const char *allow_path, ss_curve_zap_t **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    ss_curve_zap_t *z = calloc(1, sizeof *z);
    if (!z) {
        snprintf(err, errlen, "out of memory creating the ZAP handler");
        return SS_ERR_NOMEM;
    }
    for (int i = 0; i < ZAP_MAX_FRAMES; i++)
        zmq_msg_init(&z->part[i]);
    ss_err rc = ss_curve_allow_load(allow_path, &z->allow, err, errlen);
    if (rc != SS_OK)
        goto fail;
    int zero = 0;
    rc = SS_ERR_IO;
    z->sock = zmq_socket(zctx, ZMQ_REP);
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) != 0) {
        snprintf(err, errlen, "cannot create the ZAP socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int64_t give_up = ss_now_ms() + ZAP_BIND_WAIT_MS;
    int bound;
    while ((bound = zmq_bind(z->sock, ZAP_ENDPOINT)) != 0 && errno == EADDRINUSE
           && ss_now_ms() < give_up)
        usleep(2000);
    if (bound != 0) {
        int en = errno;
        snprintf(err, errlen, "cannot bind the ZAP handler to " ZAP_ENDPOINT ": %s%s",
                 zmq_strerror(en), en == EADDRINUSE ? " (one CurveZMQ router per ZeroMQ context)"
                                                    : "");
        goto fail;
    }
    *out = z;
    return SS_OK;
fail:
    ss_curve_zap_destroy(&z);
    return rc;
}

void *ss_curve_zap_socket(ss_curve_zap_t *z)
{
    return z->sock;
}

static int zap_frame_is(zmq_msg_t *m, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), s, n) == 0;
}

/* Log a refused key the first time it is seen among the recent ones. */
static void zap_log_refusal(ss_curve_zap_t *z, const char *address, const uint8_t *key,
                            const char *why)
{
    for (size_t i = 0; key && i < z->nrecent; i++)
        if (memcmp(z->recent[i], key, 32) == 0)
            return;
    if (key) {
        memcpy(z->recent[z->next_recent], key, 32);
        z->next_recent = (z->next_recent + 1) % ZAP_RECENT;
        if (z->nrecent < ZAP_RECENT)
            z->nrecent++;
    }
    ss_log_limited(&z->nlog, ZAP_LOG_LIMIT, "refused a CURVE client from %s%s", address, why);
}

static int zap_reply(ss_curve_zap_t *z, zmq_msg_t *request_id, const char *status,
                     const char *text, const char *user)
{
    zmq_msg_t id;
    zmq_msg_init(&id);
    if (request_id)
        zmq_msg_copy(&id, request_id);
    if (zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE) < 0
        || zmq_msg_send(&id, z->sock, ZMQ_SNDMORE) < 0
        || zmq_send(z->sock, status, strlen(status), ZMQ_SNDMORE) < 0
        || zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE) < 0
        || zmq_send(z->sock, user, strlen(user), ZMQ_SNDMORE) < 0
        || zmq_send(z->sock, "", 0, 0) < 0) {
        zmq_msg_close(&id);
        return -1;
    }
    zmq_msg_close(&id);
    return 0;
}

/* Answer one request already received into z->part[0 .. n). */
static int zap_answer(ss_curve_zap_t *z, size_t n)
{
    /* version, request id, domain, address, identity, mechanism, credentials... */
    char address[64] = "an unknown address";
    if (n >= 4) {
        size_t len = zmq_msg_size(&z->part[3]);
        const char *s = zmq_msg_data(&z->part[3]);
        size_t k = 0;
        for (size_t i = 0; i < len && k + 1 < sizeof address; i++)
            address[k++] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '?';
        address[k] = '\0';
    }
    if (n < 6 || !zap_frame_is(&z->part[0], "1.0")) {
        z->refused++;
        zap_log_refusal(z, address, NULL, ": malformed ZAP request");
        return zap_reply(z, n >= 2 ? &z->part[1] : NULL, "500", "malformed request", "");
    }
    if (!zap_frame_is(&z->part[5], "CURVE")) {
        z->refused++;
        zap_log_refusal(z, address, NULL, ": not a CURVE handshake");
        return zap_reply(z, &z->part[1], "400", "CURVE only", "");
    }
    if (n != 7 || zmq_msg_size(&z->part[6]) != 32) {
        z->refused++;
        zap_log_refusal(z, address, NULL, ": malformed CURVE credentials");
        return zap_reply(z, &z->part[1], "400", "malformed credentials", "");
    }
    const uint8_t *key = zmq_msg_data(&z->part[6]);
    char z85[SS_Z85_KEY];
    zmq_z85_encode(z85, key, 32);
    if (ss_curve_allow_has(z->allow, key)) {
        z->accepted++;
        return zap_reply(z, &z->part[1], "200", "OK", z85);
    }
    z->refused++;
    char why[SS_Z85_KEY + PATH_MAX + 64];
    snprintf(why, sizeof why, " with public key %s: not in the allow-list (%s)", z85,
             z->allow->path);
    zap_log_refusal(z, address, key, why);
    return zap_reply(z, &z->part[1], "400", "key not allowed", "");
}

ss_err ss_curve_zap_serve(ss_curve_zap_t *z)
{
    for (;;) {
        if (zmq_msg_recv(&z->part[0], z->sock, ZMQ_DONTWAIT) < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return SS_OK;
            goto failed;
        }
        size_t n = 1;
        int more = zmq_msg_more(&z->part[0]);
        while (more) {
            zmq_msg_t *m = &z->part[n < ZAP_MAX_FRAMES ? n : ZAP_MAX_FRAMES - 1];
            if (zmq_msg_recv(m, z->sock, 0) < 0) {
                if (errno == EINTR)
                    continue;
                goto failed;
            }
            more = zmq_msg_more(m);
            if (n < ZAP_MAX_FRAMES)
                n++;
        }
        if (zap_answer(z, n) != 0)
            goto failed;
    }
failed:
    if (errno == ETERM)
        return SS_ERR_CLOSED;
    ss_log("the ZAP handler failed: %s", zmq_strerror(errno));
    return SS_ERR_IO;
}

uint64_t ss_curve_zap_accepted(const ss_curve_zap_t *z)
{
    return z->accepted;
}

uint64_t ss_curve_zap_refused(const ss_curve_zap_t *z)
{
    return z->refused;
}

size_t ss_curve_zap_allowed(const ss_curve_zap_t *z)
{
    return ss_curve_allow_count(z->allow);
}

const ss_curve_allow_t *ss_curve_zap_allow(const ss_curve_zap_t *z)
{
    return z->allow;
}

void ss_curve_zap_destroy(ss_curve_zap_t **zp)
{
    if (!zp || !*zp)
        return;
    ss_curve_zap_t *z = *zp;
    if (z->sock)
        zmq_close(z->sock);
    for (int i = 0; i < ZAP_MAX_FRAMES; i++)
        zmq_msg_close(&z->part[i]);
    ss_curve_allow_destroy(&z->allow);
    free(z);
    *zp = NULL;
}

/* ---- socket monitors ---- */

void *ss_curve_monitor_open(void *zctx, void *sock, int events, char *err, size_t errlen)
{
    static unsigned long counter;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://securestreams-monitor-%d-%lu", (int)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    if (zmq_socket_monitor(sock, ep, events) != 0) {
        snprintf(err, errlen, "cannot monitor the socket: %s", zmq_strerror(errno));
        return NULL;
    }
    int zero = 0;
    void *mon = zmq_socket(zctx, ZMQ_PAIR);
    if (!mon || zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof zero) != 0
        || zmq_connect(mon, ep) != 0) {
        snprintf(err, errlen, "cannot read the socket's monitor: %s", zmq_strerror(errno));
        if (mon)
            zmq_close(mon);
        zmq_socket_monitor(sock, NULL, 0);
        return NULL;
    }
    return mon;
}

int ss_curve_monitor_read(void *mon, uint16_t *event, uint32_t *value)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    }
    int ok = zmq_msg_size(&m) == 6;
    if (ok) {
        const uint8_t *d = zmq_msg_data(&m);
        memcpy(event, d, 2);      /* host order, as libzmq writes them */
        memcpy(value, d + 2, 4);
    }
    while (zmq_msg_more(&m))     /* the endpoint frame */
        if (zmq_msg_recv(&m, mon, 0) < 0)
            break;
    zmq_msg_close(&m);
    if (!ok) {
        *event = 0;
        *value = 0;
    }
    return 1;
}

void ss_curve_monitor_close(void *sock, void **mon)
{
    if (!mon || !*mon)
        return;
    if (sock)
        zmq_socket_monitor(sock, NULL, 0);
    zmq_close(*mon);
    *mon = NULL;
}
