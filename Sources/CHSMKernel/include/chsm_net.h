// What the S3 store needs below Swift: a TCP connect with a deadline, a listener (tests) and
// accept (SHA-256 and HMAC are in chsm_sha256.h). Plain headers only (docs/ARCHITECTURE.md,
// "Layers").
#ifndef CHSM_NET_H
#define CHSM_NET_H

#include <stddef.h>

/// Connects to host:port (a name or an address, IPv4 or IPv6) within timeout_ms, then sets
/// TCP_NODELAY and SO_RCVTIMEO/SO_SNDTIMEO of io_timeout_ms. Returns the fd, or -errno;
/// a name that does not resolve gives -EHOSTUNREACH and its resolver message in
/// `resolve_error` (of `resolve_error_len` bytes) when that is not NULL.
int chsm_tcp_connect(const char *host, const char *port, int timeout_ms, int io_timeout_ms,
                     char *resolve_error, size_t resolve_error_len);

/// A TCP socket bound to a numeric host and port, listening. Returns the fd, or -errno
/// (-EADDRNOTAVAIL for an address that is not numeric).
int chsm_tcp_listen(const char *host, const char *port, int backlog);

/// Accepts one connection (retrying EINTR) and gives it SO_RCVTIMEO/SO_SNDTIMEO of
/// io_timeout_ms. Returns the fd, or -errno.
int chsm_tcp_accept(int listener, int io_timeout_ms);

#endif
