// The sd_notify protocol, with fd passing for systemd's fd store (FDSTORE=1).
#define _GNU_SOURCE
#include "chsm.h"
#include "chsm_systemd.h"
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

int chsm_sd_notify_fds(const char *state, const int *fds, int nfds) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    if (nfds < 0 || nfds > CHSM_SD_MAX_FDS) return -EINVAL;
    struct sockaddr_un a; socklen_t len;
    int r = chsm_fill_sockaddr(path, &a, &len);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct iovec iov = { .iov_base = (void *)state, .iov_len = strlen(state) };
    union {
        char buf[CMSG_SPACE(sizeof(int) * CHSM_SD_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = { .msg_name = &a, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do { n = sendmsg(fd, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    return n < 0 ? -e : 0;
}

int chsm_sd_notify(const char *state) { return chsm_sd_notify_fds(state, NULL, 0); }

int chsm_fd_is_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

int chsm_fd_set_cloexec(int fd) { return fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ? -errno : 0; }

int chsm_reserve_fd_number(int fd) {
    if (fcntl(fd, F_GETFD) >= 0) return -EBUSY;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0) return -errno;
    int r = null == fd ? fd : dup3(null, fd, O_CLOEXEC);
    int e = errno;
    if (null != fd) close(null);
    return r < 0 ? -e : 0;
}
