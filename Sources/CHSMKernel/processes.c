// What a process blocked on a pre-access event is doing: its threads' syscall lines.
#define _GNU_SOURCE
#include "chsm_processes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

void chsm_syscall_numbers(struct chsm_syscall_numbers *out) {
    out->fallocate = SYS_fallocate;
    out->ftruncate = SYS_ftruncate;
#ifdef SYS_truncate
    out->truncate = SYS_truncate;
#else
    out->truncate = -1;
#endif
    out->ioctl = SYS_ioctl;
    out->copy_file_range = SYS_copy_file_range;
    out->madvise = SYS_madvise;
#ifdef SYS_io_uring_enter
    out->io_uring_enter = SYS_io_uring_enter;
#else
    out->io_uring_enter = 426;  // the same number on every architecture (asm-generic)
#endif
}

/// True when buf[0..n) is a syscall line ("NR … SP PC") of a thread with user context:
/// a kernel thread's or an io_uring worker's line ends in instruction pointer 0x0.
static int is_user_syscall_line(const char *buf, ssize_t n) {
    if (n < 2 || buf[0] < '0' || buf[0] > '9') return 0;
    ssize_t end = buf[n - 1] == '\n' ? n - 1 : n, start = end;
    while (start > 0 && buf[start - 1] != ' ') start--;
    return !(end - start == 3 && buf[start] == '0' && buf[start + 1] == 'x' && buf[start + 2] == '0');
}

static ssize_t read_retrying(int fd, char *buf, size_t len) {
    ssize_t n;
    do { n = read(fd, buf, len); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t chsm_thread_syscalls(int pid, char *buf, size_t len, int max_threads) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    // Fast path, most processes: one thread (the task directory's link count is 2 + the
    // number of threads) that is the leader and in a syscall. Anything else (a leader that
    // exited, "running", no user context) takes the full walk.
    struct stat st;
    if (len > 1 && stat(path, &st) == 0 && st.st_nlink == 3) {
        char leader[64];
        snprintf(leader, sizeof leader, "/proc/%d/task/%d/syscall", pid, pid);
        int fd;
        do { fd = open(leader, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        if (fd >= 0) {
            ssize_t n = read_retrying(fd, buf, len - 1);
            close(fd);
            if (n > 0 && is_user_syscall_line(buf, n)) {
                if (buf[n - 1] != '\n') buf[n++] = '\n';
                return n;
            }
        }
    }
    int dfd;
    do { dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC); } while (dfd < 0 && errno == EINTR);
    if (dfd < 0) return -errno;
    DIR *dir = fdopendir(dfd);
    if (!dir) { int e = errno; close(dfd); return -e; }
    size_t used = 0;
    int threads = 0;
    ssize_t result = 0;
    struct dirent *ent;
    while ((ent = readdir(dir)) != NULL) {
        if (ent->d_name[0] < '0' || ent->d_name[0] > '9') continue;
        if (++threads > max_threads || len - used < 200) { result = -E2BIG; break; }
        char name[300];
        snprintf(name, sizeof name, "%s/syscall", ent->d_name);
        int fd;
        do { fd = openat(dfd, name, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        ssize_t n = -1;
        if (fd >= 0) {
            n = read_retrying(fd, buf + used, len - used - 1);
            close(fd);
        }
        if (n <= 0) { buf[used] = '?'; n = 1; }
        used += (size_t)n;
        if (buf[used - 1] != '\n') buf[used++] = '\n';
    }
    closedir(dir);
    return result < 0 ? result : (ssize_t)used;
}

ssize_t chsm_process_comm(int pid, char *buf, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n;
    do { n = read(fd, buf, len); } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    return n < 0 ? -e : n;
}

int chsm_syscall_access_kind(long nr) {
    switch (nr) {
    case SYS_read: case SYS_write: return CHSM_ACCESS_AT_POSITION;
    case SYS_readv: case SYS_writev: return CHSM_ACCESS_VECTOR_AT_POSITION;
    case SYS_pread64: case SYS_pwrite64: return CHSM_ACCESS_AT_OFFSET;
    case SYS_preadv: case SYS_pwritev: return CHSM_ACCESS_VECTOR_AT_OFFSET;
    case SYS_preadv2: case SYS_pwritev2: return CHSM_ACCESS_VECTOR_AT_OFFSET_OR_POSITION;
    case SYS_mmap: return CHSM_ACCESS_MMAP;
#ifdef SYS_open
    case SYS_open:
#endif
#ifdef SYS_creat
    case SYS_creat:
#endif
#ifdef SYS_openat2
    case SYS_openat2:
#endif
    case SYS_openat: case SYS_execve: case SYS_execveat: case SYS_open_by_handle_at:
        return CHSM_ACCESS_OPEN;
    default: return CHSM_ACCESS_OTHER;
    }
}

ssize_t chsm_waiting_threads(int pid, char *buf, size_t len, int max_threads) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    int dfd;
    do { dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC); } while (dfd < 0 && errno == EINTR);
    if (dfd < 0) return -errno;
    DIR *dir = fdopendir(dfd);
    if (!dir) { int e = errno; close(dfd); return -e; }
    size_t used = 0;
    int threads = 0;
    ssize_t result = 0;
    struct dirent *ent;
    while ((ent = readdir(dir)) != NULL) {
        if (ent->d_name[0] < '0' || ent->d_name[0] > '9') continue;
        if (++threads > max_threads || len - used < 300) { result = -E2BIG; break; }
        int n = snprintf(buf + used, len - used, "%s ", ent->d_name);
        used += (size_t)n;
        char name[300];
        // wchan first: "0" or a name, never with a blank.
        snprintf(name, sizeof name, "%s/wchan", ent->d_name);
        int fd;
        do { fd = openat(dfd, name, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        ssize_t w = -1;
        if (fd >= 0) {
            w = read_retrying(fd, buf + used, 64 < len - used - 1 ? 64 : len - used - 1);
            close(fd);
        }
        if (w <= 0) { buf[used] = '?'; w = 1; }
        for (ssize_t i = 0; i < w; i++) if (buf[used + i] == ' ' || buf[used + i] == '\n') buf[used + i] = '_';
        used += (size_t)w;
        buf[used++] = ' ';
        snprintf(name, sizeof name, "%s/syscall", ent->d_name);
        do { fd = openat(dfd, name, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        ssize_t s = -1;
        if (fd >= 0) {
            s = read_retrying(fd, buf + used, len - used - 1);
            close(fd);
        }
        if (s <= 0) { buf[used] = '?'; s = 1; }
        used += (size_t)s;
        if (buf[used - 1] != '\n') buf[used++] = '\n';
    }
    closedir(dir);
    return result < 0 ? result : (ssize_t)used;
}

int chsm_process_fd_open(int pid, int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
    int r;
    // O_PATH: no open-permission event, no access; the link leads to the file itself.
    do { r = open(path, O_PATH | O_CLOEXEC); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int chsm_process_fd_position(int pid, int fd, int64_t *pos) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", pid, fd);
    int f;
    do { f = open(path, O_RDONLY | O_CLOEXEC); } while (f < 0 && errno == EINTR);
    if (f < 0) return -errno;
    ssize_t n = read_retrying(f, text, sizeof text - 1);
    int e = errno;
    close(f);
    if (n < 0) return -e;
    text[n] = 0;
    // The first line: "pos:\t<decimal>".
    if (strncmp(text, "pos:", 4) != 0) return -EINVAL;
    char *p = text + 4, *end;
    while (*p == ' ' || *p == '\t') p++;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno != 0 || v < 0 || (*end != '\n' && *end != 0)) return -EINVAL;
    *pos = v;
    return 0;
}
