// File creation for hsmctl import (chsm_create.h).
#define _GNU_SOURCE
#include "chsm_create.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int chsm_open_dir_at(int dirfd, const char *name) {
    int fd;
    do { fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int chsm_mkdir_at(int dirfd, const char *name, unsigned int mode) {
    return mkdirat(dirfd, name, (mode_t)mode) < 0 ? -errno : 0;
}

int chsm_exists_at(int dirfd, const char *name) {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) return 1;
    return errno == ENOENT ? 0 : -errno;
}

int chsm_open_tmpfile(int dirfd, unsigned int mode) {
    int fd;
    do { fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, (mode_t)mode); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int chsm_link_tmpfile(int fd, int dirfd, const char *name) {
    // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc link works for any owner.
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
}

int chsm_fchown(int fd, uint32_t uid, uint32_t gid) {
    return fchown(fd, (uid_t)uid, (gid_t)gid) < 0 ? -errno : 0;
}

int chsm_fchmod(int fd, unsigned int mode) {
    return fchmod(fd, (mode_t)mode) < 0 ? -errno : 0;
}

static void to_timespec(int64_t ns, struct timespec *ts) {
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
    if (ts->tv_nsec < 0) { ts->tv_nsec += 1000000000LL; ts->tv_sec -= 1; }
}

int chsm_set_times(int fd, int64_t atime_ns, int64_t mtime_ns) {
    struct timespec ts[2];
    to_timespec(atime_ns, &ts[0]);
    to_timespec(mtime_ns, &ts[1]);
    return futimens(fd, ts) < 0 ? -errno : 0;
}
