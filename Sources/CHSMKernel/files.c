// Files: data ranges (holes, copies, write-back), stat and times, opening, leases.
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

int chsm_set_lease(int fd, int type, int signo) {
    // SIGIO is the default lease-break signal: no F_SETSIG needed for it.
    if (type != F_UNLCK && signo != SIGIO && fcntl(fd, F_SETSIG, signo) < 0) return -errno;
    return fcntl(fd, F_SETLEASE, type) < 0 ? -errno : 0;
}

int chsm_get_lease(int fd) {
    int r = fcntl(fd, F_GETLEASE);
    return r < 0 ? -errno : r;
}

int chsm_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) < 0 ? -errno : 0;
}

int64_t chsm_seek_data(int fd, int64_t offset) {
    off_t r = lseek(fd, offset, SEEK_DATA);
    return r < 0 ? -errno : r;
}

int64_t chsm_seek_hole(int fd, int64_t offset) {
    off_t r = lseek(fd, offset, SEEK_HOLE);
    return r < 0 ? -errno : r;
}

int64_t chsm_copy_file_range(int fd_in, int64_t off_in, int fd_out, int64_t off_out, size_t len) {
    loff_t i = off_in, o = off_out;
    ssize_t r = copy_file_range(fd_in, &i, fd_out, &o, len, 0);
    return r < 0 ? -errno : r;
}

/* Nanoseconds since 1970, saturated: btrfs keeps 64-bit seconds, far beyond what 64-bit
 * nanoseconds hold (1677 to 2262), and the plain product overflowed (undefined). */
static int64_t time_ns(const struct statx_timestamp *t) {
    if (t->tv_sec > INT64_MAX / 1000000000LL - 1) return INT64_MAX;
    if (t->tv_sec < INT64_MIN / 1000000000LL + 1) return INT64_MIN;
    return t->tv_sec * 1000000000LL + t->tv_nsec;
}

static void fill_stat(const struct statx *sx, chsm_stat *out) {
    out->dev = ((uint64_t)sx->stx_dev_major << 32) | sx->stx_dev_minor;
    out->ino = sx->stx_ino;
    out->size = sx->stx_size;
    out->blocks = sx->stx_blocks;
    out->mode = sx->stx_mode;
    out->uid = sx->stx_uid;
    out->gid = sx->stx_gid;
    out->nlink = sx->stx_nlink;
    out->atime_ns = time_ns(&sx->stx_atime);
    out->mtime_ns = time_ns(&sx->stx_mtime);
    out->ctime_ns = time_ns(&sx->stx_ctime);
}

int chsm_fstat(int fd, chsm_stat *out) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT, STATX_BASIC_STATS, &sx) < 0) return -errno;
    fill_stat(&sx, out);
    return 0;
}

int chsm_stat_path(const char *path, int nofollow, chsm_stat *out) {
    struct statx sx;
    if (statx(AT_FDCWD, path, nofollow ? AT_SYMLINK_NOFOLLOW : 0, STATX_BASIC_STATS, &sx) < 0) return -errno;
    fill_stat(&sx, out);
    return 0;
}

int chsm_set_mtime(int fd, int64_t mtime_ns) {
    struct timespec ts[2];
    ts[0].tv_sec = 0; ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = mtime_ns / 1000000000LL; ts[1].tv_nsec = mtime_ns % 1000000000LL;
    if (ts[1].tv_nsec < 0) { ts[1].tv_nsec += 1000000000LL; ts[1].tv_sec -= 1; }
    return futimens(fd, ts) < 0 ? -errno : 0;
}

int chsm_open(const char *path, int flags, unsigned int mode) {
    int fd;
    do { fd = open(path, flags | O_CLOEXEC, mode); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

ssize_t chsm_fd_path(int fd, char *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t r = readlink(link, buf, len);
    return r < 0 ? -errno : r;
}

int64_t chsm_fs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) < 0) return -errno;
    return (int64_t)(unsigned long)s.f_type;
}


int chsm_syncfs(int fd) {
    return syncfs(fd) < 0 ? -errno : 0;
}

int chsm_openat(int dirfd, const char *path, int flags) {
    int fd;
    // O_NOFOLLOW: a name looked up in a directory must not lead out of it through a symlink.
    if (flags == CHSM_OPEN_PATH_DIR) flags = O_PATH | O_DIRECTORY | O_NOFOLLOW;
    do { fd = openat(dirfd, path, flags | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int chsm_fsid(const char *path, uint64_t *out) {
    struct statfs s;
    if (statfs(path, &s) < 0) return -errno;
    uint32_t a, b;
    memcpy(&a, &s.f_fsid, 4);
    memcpy(&b, (char *)&s.f_fsid + 4, 4);
    *out = ((uint64_t)a << 32) | b;
    return 0;
}

int chsm_sync_file_range(int fd, int64_t offset, int64_t length, int wait) {
    unsigned int flags = SYNC_FILE_RANGE_WRITE;
    if (wait) flags |= SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WAIT_AFTER;
    return sync_file_range(fd, offset, length, flags) < 0 ? -errno : 0;
}
