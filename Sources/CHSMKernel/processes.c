// What a process blocked on a pre-access event is doing: its threads' syscall lines.
#define _GNU_SOURCE
#include "chsm_processes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
