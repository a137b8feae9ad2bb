// Settings of hsmd's own process: the lease and wake-up signals, malloc, idle priority.
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
#include <sched.h>

static void chsm_lease_noop(int sig, siginfo_t *info, void *ctx) { (void)sig; (void)info; (void)ctx; }

int chsm_lease_signal_setup(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = chsm_lease_noop;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

int chsm_wakeup_signal_setup(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = chsm_lease_noop;
    sa.sa_flags = SA_SIGINFO;   // no SA_RESTART: the blocked read returns EINTR
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

void chsm_tune_malloc(void) {
    // A fixed mmap threshold turns off glibc's dynamic one, which after the first freed
    // 1 MiB recall buffer would serve later ones from per-thread arenas that keep freed
    // memory (measured: 227 MiB peak RSS); two arenas are plenty for hsmd's few threads.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_ARENA_MAX, 2);
}

void chsm_trim_malloc(void) {
    malloc_trim(0);
}

int chsm_thread_idle_priority(void) {
    struct sched_param p = { .sched_priority = 0 };
    if (sched_setscheduler(0, SCHED_IDLE, &p) < 0) return -errno;
    // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE << 13): no glibc wrapper.
    if (syscall(SYS_ioprio_set, 1, 0, 3 << 13) < 0) return -errno;
    return 0;
}
