// Extended attributes (the trusted.hsm marker and the file's own).
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

ssize_t chsm_fgetxattr(int fd, const char *name, void *buf, size_t len) {
    ssize_t r = fgetxattr(fd, name, buf, len);
    return r < 0 ? -errno : r;
}

int chsm_fsetxattr(int fd, const char *name, const void *buf, size_t len) {
    return fsetxattr(fd, name, buf, len, 0) < 0 ? -errno : 0;
}

int chsm_fremovexattr(int fd, const char *name) {
    return fremovexattr(fd, name) < 0 ? -errno : 0;
}

ssize_t chsm_flistxattr(int fd, char *buf, size_t len) {
    ssize_t r = flistxattr(fd, buf, len);
    return r < 0 ? -errno : r;
}

ssize_t chsm_lgetxattr(const char *path, const char *name, void *buf, size_t len) {
    ssize_t r = lgetxattr(path, name, buf, len);
    return r < 0 ? -errno : r;
}

ssize_t chsm_inode_ref_getxattr(int fd, const char *name, void *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = getxattr(link, name, buf, len);
    return n < 0 ? -errno : n;
}
