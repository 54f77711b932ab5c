/*
 * curve.h - CurveZMQ on the links (docs/curve.md): routers are CURVE servers
 * with an allow-list of client public keys checked by a ZAP handler; every
 * producer, consumer and sink link is a CURVE client. Key files are text,
 * Z85 keys, secret files 0600 and refused when others can read them.
 */
#ifndef SS_CURVE_H
#define SS_CURVE_H

#include "base/common.h"

#define SS_Z85_KEY 41  /* 40 characters and a NUL */

/* Write a new key pair: PATH (public and secret, 0600) and PATH.pub. */
ss_err ss_curve_keygen(const char *path, char *err, size_t errlen);

/* Load a secret key file (both keys) or a public one (.pub or a secret file). */
ss_err ss_curve_load_secret(const char *path, char pub[SS_Z85_KEY], char sec[SS_Z85_KEY],
                            char *err, size_t errlen);
ss_err ss_curve_load_public(const char *path, char pub[SS_Z85_KEY], char *err, size_t errlen);

/* Contracts of the three above, in detail:
 *  - keygen writes PATH (mode 0600: "securestreams-curve 1", "public Z85",
 *    "secret Z85") and PATH.pub (mode 0644: "securestreams-curve-public 1",
 *    "public Z85"). It refuses to overwrite either (SS_ERR_IO, "... exists").
 *  - load_secret refuses a file that group or others may read or write
 *    (SS_ERR_CRYPTO, "FILE: readable or writable by others (mode 0644);
 *    chmod 600 it"), a malformed one (SS_ERR_FORMAT, message naming the file
 *    and line) and one whose public key does not match its secret key.
 *  - load_public reads a .pub file or the public line of a secret file.
 * Keys come out as 40 Z85 characters and a NUL. The caller should wipe a
 * secret key it no longer needs (sodium_memzero). */

/* 1 when `z85` is exactly 40 Z85 characters that decode to a 32-byte key. */
int ss_curve_key_valid(const char *z85);

/* The ZAP domain the router's CURVE sockets set (ZMQ_ZAP_DOMAIN). */
#define SS_CURVE_ZAP_DOMAIN "securestreams"

/* Make `sock` a CURVE client (ZMQ_CURVE_SERVERKEY, PUBLICKEY, SECRETKEY) of
 * the server whose public key is `server_pub`. Call before connecting.
 * SS_ERR_FORMAT for a key that is not Z85, SS_ERR_IO when libzmq refuses. */
ss_err ss_curve_client_setup(void *sock, const char *server_pub, const char *pub,
                             const char *sec, char *err, size_t errlen);

/* The same from key files: this client's secret key file and the server's
 * public key file (a .pub or its secret file). The secret key is wiped
 * before returning; *pub (may be NULL) receives this client's public key. */
ss_err ss_curve_client_setup_files(void *sock, const char *key_file, const char *server_file,
                                   char pub[SS_Z85_KEY], char *err, size_t errlen);

/* Make `sock` a CURVE server (ZMQ_CURVE_SERVER, ZMQ_CURVE_SECRETKEY,
 * ZMQ_ZAP_DOMAIN SS_CURVE_ZAP_DOMAIN). Call before binding, and only once
 * a ZAP handler (ss_curve_zap_new) exists in the socket's context: without
 * one libzmq lets every CURVE client in. */
ss_err ss_curve_server_setup(void *sock, const char *sec, char *err, size_t errlen);

/* ---- the allow-list of client public keys ----
 * PATH is one of (docs/curve.md):
 *  - a directory: every regular file named *.pub in it is a public key file;
 *  - a public key file (first line "securestreams-curve-public 1"): that key;
 *  - a list: one entry per line; a line of exactly 40 characters that decode
 *    as Z85 is a key, an empty line or one starting with '#' otherwise is
 *    ignored, any other line is the path of a .pub file (relative paths are
 *    taken from the list's directory).
 * A list naming no key is an error, as is any entry that does not load.
 *
 * Roles (docs/curve.md, "Roles"): an entry of a list may be followed by
 * blank-separated role names; in a directory, the *.pub files of its
 * subdirectories source/, worker/, sink/, produce/ and consume/ have that
 * role. A key with no role may do anything; a key listed more than once has
 * the union of its entries' roles. An unknown role name is an error naming
 * the list's file and line. */
typedef struct ss_curve_allow ss_curve_allow_t;

#define SS_CURVE_ROLE_SOURCE 0x01   /* join as a producer; publish only its own batches */
#define SS_CURVE_ROLE_WORKER 0x02   /* join either side; never publish a lineage naming itself */
#define SS_CURVE_ROLE_SINK 0x04     /* join as a consumer */
#define SS_CURVE_ROLE_PRODUCE 0x08  /* join as a producer, publish anything */
#define SS_CURVE_ROLE_CONSUME 0x10  /* join as a consumer */

/* 1 and the role's bit in *bit when the `len` bytes at `word` name a role. */
int ss_curve_role_parse(const char *word, size_t len, unsigned *bit);
/* The roles as "source,sink" ("any" for 0) in buf; returns buf. */
const char *ss_curve_roles_str(unsigned roles, char *buf, size_t len);
/* What a key with `roles` may do: join as a producer, as a consumer, and
 * publish a DATA batch. A batch's lineage is `only_self` when it is exactly
 * one entry naming the publisher's own peer id, `names_self` when any entry
 * does. No role or `produce`: any batch; `source`: only_self; `worker`: not
 * names_self. A key with several roles may do what any of them allows. */
int ss_curve_roles_may_produce(unsigned roles);
int ss_curve_roles_may_consume(unsigned roles);
int ss_curve_roles_may_publish(unsigned roles, int only_self, int names_self);

#define SS_CURVE_ALLOW_MAX 65536   /* keys in one allow-list */

ss_err ss_curve_allow_load(const char *path, ss_curve_allow_t **out, char *err, size_t errlen);
/* 1 when the 32-byte binary key is allowed. */
int ss_curve_allow_has(const ss_curve_allow_t *a, const uint8_t key[32]);
/* 1 when the key is allowed, with its roles in *roles (may be NULL); 0 when not. */
int ss_curve_allow_roles(const ss_curve_allow_t *a, const uint8_t key[32], unsigned *roles);
size_t ss_curve_allow_count(const ss_curve_allow_t *a);
const char *ss_curve_allow_path(const ss_curve_allow_t *a);
/* Accepts NULL; sets *a to NULL. */
void ss_curve_allow_destroy(ss_curve_allow_t **a);

/* ---- the ZAP handler (RFC 27) ----
 * A ZMQ_REP socket bound to inproc://zeromq.zap.01 in `zctx` (one per
 * context: SS_ERR_IO "already in use" for a second one). It answers CURVE
 * requests whose client key is in the allow-list with 200 and the Z85 key
 * as user id, everything else with 400, and logs a refusal the first time
 * a key is refused (at most 100 lines; every refusal is counted). It never
 * blocks: the owner polls ss_curve_zap_socket() and calls
 * ss_curve_zap_serve() when it is readable. */
typedef struct ss_curve_zap ss_curve_zap_t;

ss_err ss_curve_zap_new(void *zctx, const char *allow_path, ss_curve_zap_t **out,
                        char *err, size_t errlen);
void *ss_curve_zap_socket(ss_curve_zap_t *z);
/* Answer every pending request. SS_ERR_IO when the socket failed (logged);
 * SS_ERR_CLOSED when the context is being terminated. */
ss_err ss_curve_zap_serve(ss_curve_zap_t *z);
uint64_t ss_curve_zap_accepted(const ss_curve_zap_t *z);
uint64_t ss_curve_zap_refused(const ss_curve_zap_t *z);
size_t ss_curve_zap_allowed(const ss_curve_zap_t *z);   /* keys in the allow-list */
const ss_curve_allow_t *ss_curve_zap_allow(const ss_curve_zap_t *z);   /* the allow-list */
/* Close the socket after the CURVE sockets it serves. Accepts NULL; sets *z to NULL. */
void ss_curve_zap_destroy(ss_curve_zap_t **z);

/* ---- handshake diagnosis ----
 * A socket monitor (zmq_socket_monitor) on `sock` for `events`, read through
 * a PAIR socket in `zctx` that the caller polls. NULL (message in err) when
 * it cannot be set up. */
void *ss_curve_monitor_open(void *zctx, void *sock, int events, char *err, size_t errlen);
/* One pending event without blocking: 1 with *event and *value set, 0 when
 * none is pending, -1 on a socket error. */
int ss_curve_monitor_read(void *mon, uint16_t *event, uint32_t *value);
/* Stop monitoring `sock` (may be NULL when it is already closed), close
 * *mon. Accepts *mon NULL; sets it to NULL. */
void ss_curve_monitor_close(void *sock, void **mon);

#endif
