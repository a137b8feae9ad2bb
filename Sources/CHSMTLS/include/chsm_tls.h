// TLS client connections for the s3 store's https endpoints, over the system's OpenSSL.
// Opaque handles only: no OpenSSL type reaches Swift. Plain headers only.
#ifndef CHSM_TLS_H
#define CHSM_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct chsm_tls_ctx chsm_tls_ctx;
typedef struct chsm_tls chsm_tls;

/// A client context that verifies servers against `ca_file` (PEM), or the system's default
/// CA bundle when NULL. TLS 1.2 at least. NULL on failure, with the reason in `err`.
chsm_tls_ctx *chsm_tls_ctx_new(const char *ca_file, char *err, size_t err_len);
void chsm_tls_ctx_free(chsm_tls_ctx *ctx);

/// Runs the handshake on a connected blocking socket (its SO_RCVTIMEO/SO_SNDTIMEO bound
/// each step) and verifies the certificate chain and that it names `host` (a DNS name, or
/// an IPv4/IPv6 address). On success the session owns `fd`. On failure returns NULL, the
/// reason in `err`, *errno_out the errno of a broken connection (0 when none), and
/// *cert_failed 1 when the server's certificate was refused (not a transient failure).
chsm_tls *chsm_tls_connect(chsm_tls_ctx *ctx, int fd, const char *host, char *err, size_t err_len,
                           int *errno_out, int *cert_failed);

/// Writes all `len` bytes: 0, or -errno (ETIMEDOUT when the socket's timeout expired).
int chsm_tls_write(chsm_tls *t, const void *buf, size_t len);
/// Reads at most `len` bytes: the count, 0 at the end of the stream, or -errno.
ssize_t chsm_tls_read(chsm_tls *t, void *buf, size_t len);
/// Ends the session and closes its fd.
void chsm_tls_close(chsm_tls *t);

#endif
