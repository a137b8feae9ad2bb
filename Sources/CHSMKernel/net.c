// TCP for the s3 store: a connect with a deadline, a listener, and accept4 (SOCK_CLOEXEC on
// accepted connections). SHA-256 and HMAC are in sha256.c.
#define _GNU_SOURCE
#include "chsm_net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int connect_one(const struct addrinfo *ai, int timeout_ms) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) return -errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) { int e = errno; close(fd); return -e; }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do n = poll(&p, 1, timeout_ms); while (n < 0 && errno == EINTR);
        if (n == 0) { close(fd); return -ETIMEDOUT; }
        if (n < 0) { int e = errno; close(fd); return -e; }
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) { close(fd); return -err; }
    }
    return fd;
}

int chsm_tcp_connect(const char *host, const char *port, int timeout_ms, int io_timeout_ms,
                     char *resolve_error, size_t resolve_error_len) {
    // No AI_ADDRCONFIG: it asks netlink, which the unit's RestrictAddressFamilies need not allow;
    // every address is tried in turn anyway.
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *list = NULL;
    int rc = getaddrinfo(host, port, &hints, &list);
    if (rc != 0) {
        if (resolve_error && resolve_error_len > 0) snprintf(resolve_error, resolve_error_len, "%s", gai_strerror(rc));
        return -EHOSTUNREACH;
    }
    int fd = -EHOSTUNREACH;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        fd = connect_one(ai, timeout_ms);
        if (fd >= 0) break;
    }
    freeaddrinfo(list);
    if (fd < 0) return fd;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) { int e = errno; close(fd); return -e; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = io_timeout_ms / 1000, .tv_usec = (io_timeout_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
        int e = errno; close(fd); return -e;
    }
    return fd;
}

int chsm_tcp_listen(const char *host, const char *port, int backlog) {
    // Numeric addresses only: a listener resolves no names.
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *list = NULL;
    if (getaddrinfo(host, port, &hints, &list) != 0 || list == NULL) return -EADDRNOTAVAIL;
    int fd = socket(list->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        freeaddrinfo(list);
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, list->ai_addr, list->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        freeaddrinfo(list);
        close(fd);
        return -e;
    }
    freeaddrinfo(list);
    return fd;
}

int chsm_tcp_accept(int listener, int io_timeout_ms) {
    int fd;
    do { fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC); } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -errno;
    struct timeval tv = {.tv_sec = io_timeout_ms / 1000, .tv_usec = (io_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}
