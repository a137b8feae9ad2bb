// The control socket: AF_UNIX listen, connect, accept and the peer's credentials.
// Each returns -errno on failure so the Swift layer can build an error that names the
// operation and the path.
#define _GNU_SOURCE
#include "chsm.h"
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/fanotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <linux/falloc.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/un.h>

int chsm_peer_cred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred c;
    socklen_t l = sizeof c;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0) return -errno;
    *pid = c.pid; *uid = c.uid; *gid = c.gid;
    return 0;
}

int chsm_fill_sockaddr(const char *path, struct sockaddr_un *a, socklen_t *len) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof a->sun_path) return -ENAMETOOLONG;
    memcpy(a->sun_path, path, n);
    if (path[0] == '@') a->sun_path[0] = 0;   // abstract namespace
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
    return 0;
}

int chsm_unix_listen(const char *path, unsigned int mode) {
    struct sockaddr_un a; socklen_t len;
    int r = chsm_fill_sockaddr(path, &a, &len);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    unlink(path);
    // Create the socket with no access for anyone, then open it to `mode`: no window
    // in which another user could connect.
    mode_t old = umask(0777);
    r = bind(fd, (struct sockaddr *)&a, len);
    umask(old);
    if (r < 0 || chmod(path, mode) < 0 || listen(fd, 64) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int chsm_unix_connect(const char *path) {
    struct sockaddr_un a; socklen_t len;
    int r = chsm_fill_sockaddr(path, &a, &len);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&a, len) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int chsm_accept(int listener) {
    int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    return c < 0 ? -errno : c;
}
