// TLS client sessions over the system's OpenSSL, for the s3 store's https endpoints: the
// server's chain is verified against the system CA bundle or the configured CA file, and
// its certificate must name the host (DNS name or IP address).
#include "chsm_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct chsm_tls_ctx { SSL_CTX *ctx; };
struct chsm_tls { SSL *ssl; int fd; };

static void put_err(char *err, size_t len, const char *prefix) {
    if (!err || len == 0) return;
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        char why[256];
        ERR_error_string_n(e, why, sizeof why);
        snprintf(err, len, "%s: %s", prefix, why);
    } else {
        snprintf(err, len, "%s", prefix);
    }
}

// OpenSSL's socket BIO writes with write(2), which raises SIGPIPE on a connection the
// peer closed; this one sends with MSG_NOSIGNAL and is otherwise the socket BIO.
static BIO_METHOD *nosignal_method;
static pthread_once_t nosignal_once = PTHREAD_ONCE_INIT;

static int nosignal_write(BIO *b, const char *in, int inl) {
    int fd = -1;
    BIO_get_fd(b, &fd);
    ssize_t n;
    do n = send(fd, in, (size_t)inl, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    BIO_clear_retry_flags(b);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
    return (int)n;
}

static void make_nosignal_method(void) {
    const BIO_METHOD *s = BIO_s_socket();
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "hsmd socket");
    if (!m) return;
    BIO_meth_set_write(m, nosignal_write);
    BIO_meth_set_read(m, BIO_meth_get_read(s));
    BIO_meth_set_puts(m, BIO_meth_get_puts(s));
    BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(s));
    BIO_meth_set_create(m, BIO_meth_get_create(s));
    BIO_meth_set_destroy(m, BIO_meth_get_destroy(s));
    nosignal_method = m;
}

chsm_tls_ctx *chsm_tls_ctx_new(const char *ca_file, char *err, size_t err_len) {
    ERR_clear_error();
    pthread_once(&nosignal_once, make_nosignal_method);
    if (!nosignal_method) { put_err(err, err_len, "cannot set up TLS"); return NULL; }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { put_err(err, err_len, "cannot set up TLS"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        put_err(err, err_len, ca_file ? "cannot load the CA file" : "cannot load the system's CA certificates");
        SSL_CTX_free(ctx);
        return NULL;
    }
    chsm_tls_ctx *c = calloc(1, sizeof *c);
    if (!c) { SSL_CTX_free(ctx); if (err && err_len) snprintf(err, err_len, "out of memory"); return NULL; }
    c->ctx = ctx;
    return c;
}

void chsm_tls_ctx_free(chsm_tls_ctx *ctx) {
    if (!ctx) return;
    SSL_CTX_free(ctx->ctx);
    free(ctx);
}

static int is_address(const char *host) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

chsm_tls *chsm_tls_connect(chsm_tls_ctx *ctx, int fd, const char *host, char *err, size_t err_len,
                           int *errno_out, int *cert_failed) {
    *errno_out = 0;
    *cert_failed = 0;
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ctx);
    BIO *bio = ssl ? BIO_new(nosignal_method) : NULL;
    if (!ssl || !bio) {
        put_err(err, err_len, "cannot set up TLS");
        if (ssl) SSL_free(ssl);
        *errno_out = ENOMEM;
        return NULL;
    }
    BIO_set_fd(bio, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl, bio, bio);
    int named;
    if (is_address(host)) {
        named = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        named = SSL_set1_host(ssl, host) && SSL_set_tlsext_host_name(ssl, host);
    }
    if (!named) {
        put_err(err, err_len, "cannot set the host name to verify");
        SSL_free(ssl);
        *errno_out = EINVAL;
        return NULL;
    }
    errno = 0;
    int rc = SSL_connect(ssl);
    if (rc != 1) {
        int e = errno;
        int kind = SSL_get_error(ssl, rc);
        long verify = SSL_get_verify_result(ssl);
        if (verify != X509_V_OK) {
            *cert_failed = 1;
            if (err && err_len) snprintf(err, err_len, "the server's certificate was refused: %s", X509_verify_cert_error_string(verify));
        } else if (kind == SSL_ERROR_WANT_READ || kind == SSL_ERROR_WANT_WRITE) {
            *errno_out = ETIMEDOUT;
            if (err && err_len) snprintf(err, err_len, "TLS handshake timed out");
        } else if (kind == SSL_ERROR_SYSCALL && ERR_peek_last_error() == 0) {
            *errno_out = e != 0 ? e : ECONNRESET;
            if (err && err_len) snprintf(err, err_len, "TLS handshake: %s", e != 0 ? strerror(e) : "the server closed the connection");
        } else {
            // The server does not speak TLS there, or no version or cipher in common:
            // the same at every try.
            *cert_failed = 2;
            put_err(err, err_len, "TLS handshake failed");
        }
        SSL_free(ssl);
        return NULL;
    }
    chsm_tls *t = calloc(1, sizeof *t);
    if (!t) { SSL_free(ssl); *errno_out = ENOMEM; if (err && err_len) snprintf(err, err_len, "out of memory"); return NULL; }
    t->ssl = ssl;
    t->fd = fd;
    return t;
}

// The errno of a failed SSL_read/SSL_write.
static int failure(SSL *ssl, int rc, int saved_errno) {
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return ETIMEDOUT;  // SO_RCVTIMEO/SO_SNDTIMEO expired
    case SSL_ERROR_SYSCALL: return saved_errno != 0 ? saved_errno : ECONNRESET;
    case SSL_ERROR_ZERO_RETURN: return ECONNRESET;
    default: {
        unsigned long e = ERR_peek_last_error();
        // A close without close_notify: a connection the server dropped.
        if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return ECONNRESET;
        return EPROTO;
    }
    }
}

int chsm_tls_write(chsm_tls *t, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ERR_clear_error();
        errno = 0;
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int n = SSL_write(t->ssl, p, chunk);
        if (n <= 0) return -failure(t->ssl, n, errno);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t chsm_tls_read(chsm_tls *t, void *buf, size_t len) {
    ERR_clear_error();
    errno = 0;
    int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
    int n = SSL_read(t->ssl, buf, chunk);
    if (n > 0) return n;
    if (SSL_get_error(t->ssl, n) == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify: end of stream
    int e = failure(t->ssl, n, errno);
    // An EOF without close_notify counts as the end of the stream too: HTTP frames its
    // bodies, so a cut body is still an error above.
    if (e == ECONNRESET && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return 0;
    return -e;
}

void chsm_tls_close(chsm_tls *t) {
    if (!t) return;
    ERR_clear_error();
    // close_notify once, without waiting for the server's.
    if (!(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)) SSL_shutdown(t->ssl);
    SSL_free(t->ssl);
    close(t->fd);
    free(t);
}
