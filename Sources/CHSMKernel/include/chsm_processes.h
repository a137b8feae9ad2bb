// What a process blocked on a pre-access event is doing (/proc/PID/task/TID/syscall):
// a read and a shifting fallocate raise the same event (docs/KERNEL-FACTS.md).
#ifndef CHSM_PROCESSES_H
#define CHSM_PROCESSES_H

#include <stdint.h>
#include <sys/types.h>

/// This architecture's numbers of the syscalls whose pre-access events hsmd tells apart.
struct chsm_syscall_numbers {
    int32_t fallocate;
    int32_t ftruncate;
    int32_t truncate;
    int32_t ioctl;
    int32_t io_uring_enter;
    int32_t copy_file_range;
    int32_t madvise;
};
void chsm_syscall_numbers(struct chsm_syscall_numbers *out);

/// The /proc/PID/task/TID/syscall line of every thread of `pid`, one per line ("?" for a
/// thread whose line cannot be read), into buf (not NUL terminated). Bytes written, or
/// -errno (-E2BIG: more than `max_threads` threads or more than `len` bytes).
ssize_t chsm_thread_syscalls(int pid, char *buf, size_t len, int max_threads);

/// /proc/PID/comm (the kernel's name for the process, at most 15 bytes and a newline)
/// into buf, in one open, one read and one close. Bytes read, or -errno.
ssize_t chsm_process_comm(int pid, char *buf, size_t len);

/// How a syscall names the file range it accesses, for matching a thread stopped on a
/// pre-access event to that event (docs/ARCHITECTURE.md, "Restart without harm").
enum {
    CHSM_ACCESS_OTHER = 0,
    CHSM_ACCESS_AT_POSITION = 1,               // read, write: fd arg 0, count arg 2, fd position
    CHSM_ACCESS_VECTOR_AT_POSITION = 2,        // readv, writev: fd arg 0, fd position, count unknown
    CHSM_ACCESS_AT_OFFSET = 3,                 // pread64, pwrite64: fd arg 0, count arg 2, offset arg 3
    CHSM_ACCESS_VECTOR_AT_OFFSET = 4,          // preadv, pwritev: fd arg 0, offset arg 3
    CHSM_ACCESS_VECTOR_AT_OFFSET_OR_POSITION = 5, // preadv2, pwritev2: offset arg 3, -1 = fd position
    CHSM_ACCESS_MMAP = 6,                      // mmap: length arg 1, fd arg 4, offset arg 5
    CHSM_ACCESS_OPEN = 7,                      // open, openat, openat2, creat, execve(at): an open
};
int chsm_syscall_access_kind(long nr);

/// One line per thread of `pid`: "TID WCHAN SYSCALL-LINE" (WCHAN is "0" when the thread
/// does not sleep, "?" when /proc/PID/task/TID/wchan cannot be read; SYSCALL-LINE as in
/// chsm_thread_syscalls). Bytes written, or -errno (-E2BIG as there).
ssize_t chsm_waiting_threads(int pid, char *buf, size_t len, int max_threads);

/// An O_PATH fd for the file `pid` has open as `fd` (/proc/PID/fd/FD): it raises no
/// fanotify event. The fd, or -errno.
int chsm_process_fd_open(int pid, int fd);
/// The file position of `pid`'s `fd` (/proc/PID/fdinfo/FD). 0, or -errno.
int chsm_process_fd_position(int pid, int fd, int64_t *pos);

#endif
