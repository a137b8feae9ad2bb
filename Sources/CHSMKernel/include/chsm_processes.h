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

#endif
