// Thin C wrappers over the syscalls hsmd needs. Each returns -errno on failure so the
// Swift layer can build an error that names the operation and the path.
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

int chsm_fanotify_init(unsigned int flags, unsigned int event_f_flags) {
    int fd = fanotify_init(flags, event_f_flags);
    return fd < 0 ? -errno : fd;
}

int chsm_fanotify_mark(int group, unsigned int flags, uint64_t mask, int dirfd, const char *path) {
    return fanotify_mark(group, flags, mask, dirfd, path) < 0 ? -errno : 0;
}

int chsm_private_mount(const char *path) {
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0) return -errno;
    int fd;
    do { fd = openat(tree, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    int err = errno;
    close(tree);
    return fd < 0 ? -err : fd;
}

int chsm_parse_events(const void *buf, ssize_t len, chsm_event *out, int maxout) {
    int n = 0;
    const struct fanotify_event_metadata *md = buf;
    while (FAN_EVENT_OK(md, len) && n < maxout) {
        // A metadata block that is not ours to parse ends the batch (the event log's
        // successor parses a buffer a dead process left: it must not trust it).
        if (md->vers != FANOTIFY_METADATA_VERSION || md->metadata_len < sizeof *md || md->metadata_len > md->event_len) break;
        chsm_event *e = &out[n++];
        memset(e, 0, sizeof *e);
        e->mask = md->mask;
        e->fd = md->fd;
        e->pid = md->pid;
        e->slot = -1;
        // Info records follow the fixed metadata up to event_len.
        const char *p = (const char *)md + md->metadata_len;
        const char *end = (const char *)md + md->event_len;
        while (p + sizeof(struct fanotify_event_info_header) <= end) {
            const struct fanotify_event_info_header *h = (const void *)p;
            if (h->len < sizeof *h || p + h->len > end) break;
            if (h->info_type == FAN_EVENT_INFO_TYPE_RANGE && h->len >= 24) {
                uint64_t off, cnt;
                memcpy(&off, p + 8, 8);
                memcpy(&cnt, p + 16, 8);
                e->has_range = 1;
                e->offset = off;
                e->count = cnt;
            }
            p += h->len;
        }
        md = FAN_EVENT_NEXT(md, len);
    }
    return n;
}

int chsm_fanotify_read(int group, void *buf, size_t buflen, chsm_event *out, int maxout) {
    // EINTR is returned, not retried: it is how hsmd wakes the reading thread to stop.
    ssize_t len = read(group, buf, buflen);
    if (len < 0) return -errno;
    return chsm_parse_events(buf, len, out, maxout);
}

int chsm_fanotify_respond(int group, int event_fd, uint32_t response) {
    struct fanotify_response r = { .fd = event_fd, .response = response };
    ssize_t w;
    do { w = write(group, &r, sizeof r); } while (w < 0 && errno == EINTR);
    return w < 0 ? -errno : 0;
}

static void chsm_lease_noop(int sig, siginfo_t *info, void *ctx) { (void)sig; (void)info; (void)ctx; }

int chsm_lease_signal_setup(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = chsm_lease_noop;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

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

int chsm_peer_cred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred c;
    socklen_t l = sizeof c;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0) return -errno;
    *pid = c.pid; *uid = c.uid; *gid = c.gid;
    return 0;
}

// CRC32C: SSE4.2 instruction when present, else a bytewise table.
static uint32_t crc32c_table[256];
static int crc32c_table_ready;

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    crc32c_table_ready = 1;
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len) {
    if (!crc32c_table_ready) crc32c_init_table();
    while (len--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles but accepts a new one every cycle: one
// dependency chain uses a third of it. Long buffers are checksummed as three interleaved
// chains over adjacent stripes, joined afterwards by "shifting" a CRC over the length of
// the stripes that follow it (the CRC register is linear over GF(2), so appending n zero
// bytes is a fixed 32x32 bit matrix, applied here as four 256-entry byte tables).
#define CRC_STRIPE 4096

static uint32_t crc32c_stripe_shift[4][256];   // operator: append CRC_STRIPE zero bytes
static pthread_once_t crc32c_shift_once = PTHREAD_ONCE_INIT;

// Matrix over GF(2) as 32 column images; product with a vector.
static uint32_t gf2_apply(const uint32_t m[32], uint32_t v) {
    uint32_t r = 0;
    for (int i = 0; v; i++, v >>= 1) if (v & 1) r ^= m[i];
    return r;
}

static void gf2_square(uint32_t out[32], const uint32_t m[32]) {
    for (int i = 0; i < 32; i++) out[i] = gf2_apply(m, m[i]);
}

static void crc32c_make_shift_tables(void) {
    uint32_t op[32], sq[32];
    // One zero bit: reflected register shifts right, folding in the polynomial.
    op[0] = 0x82F63B78u;
    for (int i = 1; i < 32; i++) op[i] = 1u << (i - 1);
    // Square up to 8 * CRC_STRIPE zero bits (a power of two).
    for (unsigned bits = 1; bits < 8u * CRC_STRIPE; bits <<= 1) {
        gf2_square(sq, op);
        memcpy(op, sq, sizeof op);
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) crc32c_stripe_shift[k][b] = gf2_apply(op, b << (8 * k));
}

static inline uint32_t crc32c_shift_stripe(uint32_t c) {
    return crc32c_stripe_shift[0][c & 0xff] ^ crc32c_stripe_shift[1][(c >> 8) & 0xff]
         ^ crc32c_stripe_shift[2][(c >> 16) & 0xff] ^ crc32c_stripe_shift[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); len--; }
    if (len >= 3 * CRC_STRIPE) {
        pthread_once(&crc32c_shift_once, crc32c_make_shift_tables);
        while (len >= 3 * CRC_STRIPE) {
            // Register values of the three stripes: the first continues `c`, the other
            // two start from 0 and are joined in by linearity.
            uint64_t c1 = 0, c2 = 0;
            const unsigned char *end = p + CRC_STRIPE;
            do {
                uint64_t v0, v1, v2;
                memcpy(&v0, p, 8); memcpy(&v1, p + CRC_STRIPE, 8); memcpy(&v2, p + 2 * CRC_STRIPE, 8);
                c = __builtin_ia32_crc32di(c, v0);
                c1 = __builtin_ia32_crc32di(c1, v1);
                c2 = __builtin_ia32_crc32di(c2, v2);
                p += 8;
            } while (p < end);
            c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c1;
            c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c2;
            p += 2 * CRC_STRIPE;
            len -= 3 * CRC_STRIPE;
        }
    }
    while (len >= 8) { uint64_t v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; len -= 8; }
    while (len--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t chsm_crc32c(uint32_t crc, const void *data, size_t len) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(crc, data, len);
#endif
    return ~crc32c_soft(crc, data, len);
}

int64_t chsm_fs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) < 0) return -errno;
    return (int64_t)(unsigned long)s.f_type;
}

#include <sys/un.h>

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

ssize_t chsm_lgetxattr(const char *path, const char *name, void *buf, size_t len) {
    ssize_t r = lgetxattr(path, name, buf, len);
    return r < 0 ? -errno : r;
}

int chsm_syncfs(int fd) {
    return syncfs(fd) < 0 ? -errno : 0;
}

// ---- Change journal ------------------------------------------------------------------


static void copy_fid_handle(const struct fanotify_event_info_fid *fid, const char *end, chsm_handle *out) {
    const struct file_handle *fh = (const struct file_handle *)fid->handle;
    memset(out, 0, sizeof *out);
    if ((const char *)fh + sizeof *fh > end) return;
    uint32_t n = fh->handle_bytes;
    if (n > CHSM_HANDLE_MAX || (const char *)fh->f_handle + n > end) return;
    out->type = fh->handle_type;
    out->bytes = n;
    memcpy(out->data, fh->f_handle, n);
}

// The entry name that follows the handle in a *_DFID_NAME record, NUL-terminated.
static void copy_fid_name(const struct fanotify_event_info_fid *fid, const char *end, chsm_fid_event *e) {
    const struct file_handle *fh = (const struct file_handle *)fid->handle;
    const char *name = (const char *)fh->f_handle + fh->handle_bytes;
    size_t n = 0;
    while (name + n < end && name[n] != 0 && n < sizeof e->name - 1) n++;
    if (name + n >= end || name[n] != 0) return; // unterminated or too long: no name
    memcpy(e->name, name, n);
    e->name[n] = 0;
    e->name_len = (uint32_t)n;
}

int chsm_fanotify_read_fid(int group, void *buf, size_t buflen, chsm_fid_event *out, int maxout) {
    // EINTR is returned, not retried: it is how hsmd wakes the reading thread to stop.
    ssize_t len = read(group, buf, buflen);
    if (len < 0) return -errno;
    int n = 0;
    struct fanotify_event_metadata *md = buf;
    while (FAN_EVENT_OK(md, len) && n < maxout) {
        chsm_fid_event *e = &out[n++];
        // Every field the caller reads is set here (the array is left uninitialized);
        // dirs[i] for i >= ndirs and name past name_len are never read.
        e->mask = md->mask;
        e->pid = md->pid;
        e->ndirs = 0;
        e->name_len = 0;
        e->name[0] = 0;
        // A FID group never opens fds; FAN_NOFD is expected. Close one defensively.
        if (md->fd >= 0) close(md->fd);
        char *p = (char *)md + md->metadata_len;
        char *end = (char *)md + md->event_len;
        while (p + sizeof(struct fanotify_event_info_header) <= end) {
            struct fanotify_event_info_header *h = (void *)p;
            if (h->len < sizeof *h || p + h->len > end) break;
            switch (h->info_type) {
            case FAN_EVENT_INFO_TYPE_DFID_NAME:
            case FAN_EVENT_INFO_TYPE_DFID:
            case FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
            case FAN_EVENT_INFO_TYPE_NEW_DFID_NAME:
                if (e->ndirs < 2 && h->len >= sizeof(struct fanotify_event_info_fid) + sizeof(struct file_handle)) {
                    const struct fanotify_event_info_fid *fid = (const void *)p;
                    copy_fid_handle(fid, p + h->len, &e->dirs[e->ndirs]);
                    if (e->dirs[e->ndirs].bytes > 0) {
                        if (e->ndirs == 0 && h->info_type != FAN_EVENT_INFO_TYPE_DFID)
                            copy_fid_name(fid, p + h->len, e);
                        e->ndirs++;
                    }
                }
                break;
            default:
                break;
            }
            p += h->len;
        }
        md = FAN_EVENT_NEXT(md, len);
    }
    return n;
}

int chsm_name_to_handle(int dirfd, const char *path, int flags, chsm_handle *out) {
    if (flags == CHSM_EMPTY_PATH) flags = AT_EMPTY_PATH;
    struct {
        struct file_handle fh;
        unsigned char data[CHSM_HANDLE_MAX];
    } h;
    int mount_id;
    h.fh.handle_bytes = CHSM_HANDLE_MAX;
    if (name_to_handle_at(dirfd, path, &h.fh, &mount_id, flags) < 0) return -errno;
    memset(out, 0, sizeof *out);
    out->type = h.fh.handle_type;
    out->bytes = h.fh.handle_bytes;
    memcpy(out->data, h.fh.f_handle, h.fh.handle_bytes);
    return 0;
}

int chsm_open_by_handle(int mount_fd, const chsm_handle *in, int flags) {
    if (flags == CHSM_OPEN_PATH_DIR) flags = O_PATH | O_DIRECTORY;
    else if (flags == CHSM_OPEN_PATH_FILE) flags = O_PATH;
    struct {
        struct file_handle fh;
        unsigned char data[CHSM_HANDLE_MAX];
    } h;
    if (in->bytes > CHSM_HANDLE_MAX) return -EINVAL;
    h.fh.handle_bytes = in->bytes;
    h.fh.handle_type = in->type;
    memcpy(h.fh.f_handle, in->data, in->bytes);
    int fd;
    do { fd = open_by_handle_at(mount_fd, &h.fh, flags | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
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

int chsm_sync_file_range(int fd, int64_t offset, int64_t length, int wait) {
    unsigned int flags = SYNC_FILE_RANGE_WRITE;
    if (wait) flags |= SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WAIT_AFTER;
    return sync_file_range(fd, offset, length, flags) < 0 ? -errno : 0;
}

// ---- References to inodes that do not open them ---------------------------------------

#include <sched.h>
#include <sys/syscall.h>

int chsm_open_inode_ref(const char *path) {
    int fd;
    do { fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

ssize_t chsm_inode_ref_getxattr(int fd, const char *name, void *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = getxattr(link, name, buf, len);
    return n < 0 ? -errno : n;
}

int chsm_fanotify_mark_inode_ref(int group, unsigned int flags, uint64_t mask, int fd) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    return fanotify_mark(group, flags, mask, AT_FDCWD, link) < 0 ? -errno : 0;
}

int chsm_thread_idle_priority(void) {
    struct sched_param p = { .sched_priority = 0 };
    if (sched_setscheduler(0, SCHED_IDLE, &p) < 0) return -errno;
    // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE << 13): no glibc wrapper.
    if (syscall(SYS_ioprio_set, 1, 0, 3 << 13) < 0) return -errno;
    return 0;
}
