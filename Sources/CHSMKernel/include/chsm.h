// Kernel interface for hsmd: the fanotify pre-content API (Linux 6.14+), leases, hole
// punching and xattrs. The system headers here predate the kernel, so the constants hsmd
// needs are defined below. _GNU_SOURCE stays in the .c files: defining it in a public header
// clashes with SwiftGlibc's fd_set (docs/ARCHITECTURE.md, "Layers").
#ifndef CHSM_H
#define CHSM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <linux/fanotify.h>

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_CLASS_PRE_CONTENT
#define FAN_CLASS_PRE_CONTENT 0x00000008
#endif
#ifndef FAN_MARK_EVICTABLE
#define FAN_MARK_EVICTABLE 0x00000200
#endif
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif
#ifndef FAN_REPORT_FD_ERROR
#define FAN_REPORT_FD_ERROR 0x00002000
#endif
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
#endif
#ifndef FAN_ERRNO_BITS
#define FAN_ERRNO_BITS 8
#define FAN_ERRNO_SHIFT (32 - FAN_ERRNO_BITS)
#endif
#define CHSM_DENY_ERRNO(e) (FAN_DENY | ((((uint32_t)(e)) & 0xff) << FAN_ERRNO_SHIFT))

/// statx of an open fd (AT_EMPTY_PATH). Times in ns since the epoch.
typedef struct {
    uint64_t dev, ino, size, blocks;
    uint32_t mode, uid, gid, nlink;
    int64_t atime_ns, mtime_ns, ctime_ns;
} chsm_stat;

/// One event from a fanotify group, with the info records hsmd uses already parsed.
typedef struct {
    uint64_t mask;
    int32_t fd;            // event fd, or -errno when FAN_REPORT_FD_ERROR reported a failure
    int32_t pid;
    int32_t has_range;     // 1 when a FAN_EVENT_INFO_TYPE_RANGE record was present
    int32_t slot;          // its slot in the event log (chsm_eventlog.h), or -1
    uint64_t offset;
    uint64_t count;
    int32_t has_stat;      // 1 when the event log took `st` (statx of the event fd) while
    int32_t pad;           // recording the event: the event loop needs no statx of its own
    chsm_stat st;
} chsm_event;

/// fanotify_init. Returns the group fd or -errno.
int chsm_fanotify_init(unsigned int flags, unsigned int event_f_flags);
/// fanotify_mark. Returns 0 or -errno.
int chsm_fanotify_mark(int group, unsigned int flags, uint64_t mask, int dirfd, const char *path);
/// A private clone of the mount `path` is on (open_tree(OPEN_TREE_CLONE): a detached
/// mount no other process can reach by path, same superblock, same read-write state), as a
/// directory fd on its root (open_by_handle_at needs a real fd, not O_PATH). The mount
/// lives while the fd is open. Returns the fd or -errno.
int chsm_private_mount(const char *path);
/// Reads one batch of events (blocking read) and parses it into `out`.
/// Returns the number of events, 0 on EOF, or -errno. `*overflow` is set on FAN_Q_OVERFLOW.
int chsm_fanotify_read(int group, void *buf, size_t buflen, chsm_event *out, int maxout);
/// Answers a permission event. Returns 0 or -errno.
int chsm_fanotify_respond(int group, int event_fd, uint32_t response);

/// Installs a no-op handler for `signo` and sets it as the lease-break signal of `fd`
/// (F_SETSIG). hsmd polls F_GETLEASE between punch chunks; the handler only keeps the
/// default action (terminate) from firing. Returns 0 or -errno.
int chsm_lease_signal_setup(int signo);
int chsm_set_lease(int fd, int type, int signo);   // F_SETSIG + F_SETLEASE, 0 or -errno
int chsm_get_lease(int fd);                       // F_RDLCK/F_WRLCK/F_UNLCK or -errno

int chsm_punch_hole(int fd, int64_t offset, int64_t length);      // 0 or -errno
int64_t chsm_seek_data(int fd, int64_t offset);                    // offset, or -errno (-ENXIO past data)
int64_t chsm_seek_hole(int fd, int64_t offset);
int64_t chsm_copy_file_range(int fd_in, int64_t off_in, int fd_out, int64_t off_out, size_t len);

int chsm_fstat(int fd, chsm_stat *out);
int chsm_stat_path(const char *path, int nofollow, chsm_stat *out);
/// Restores the mtime (atime untouched). 0 or -errno.
int chsm_set_mtime(int fd, int64_t mtime_ns);

/// xattrs on an fd; return length / 0 or -errno.
ssize_t chsm_fgetxattr(int fd, const char *name, void *buf, size_t len);
int chsm_fsetxattr(int fd, const char *name, const void *buf, size_t len);
int chsm_fremovexattr(int fd, const char *name);
ssize_t chsm_flistxattr(int fd, char *buf, size_t len);

/// Opens `path` relative to nothing (absolute or cwd), returning fd or -errno.
int chsm_open(const char *path, int flags, unsigned int mode);
/// Path of an open fd via /proc/self/fd, for log lines. Returns length or -errno.
ssize_t chsm_fd_path(int fd, char *buf, size_t len);

/// Peer credentials of a connected Unix socket. 0 or -errno.
int chsm_peer_cred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// CRC32C (Castagnoli), hardware accelerated where the CPU has SSE4.2.
uint32_t chsm_crc32c(uint32_t crc, const void *data, size_t len);

/// Filesystem magic of the filesystem holding path (statfs f_type), or -errno.
int64_t chsm_fs_type(const char *path);

/// syncfs; 0 or -errno.
int chsm_syncfs(int fd);


/// Unix stream sockets for the control channel. Return fd or -errno.
int chsm_unix_listen(const char *path, unsigned int mode);
int chsm_unix_connect(const char *path);
/// Sends `state` to $NOTIFY_SOCKET (sd_notify protocol). 0 when sent or no socket is
/// set, -errno on failure.
int chsm_sd_notify(const char *state);
/// accept4(SOCK_CLOEXEC); fd or -errno.
int chsm_accept(int listener);
/// lgetxattr by path; length or -errno.
ssize_t chsm_lgetxattr(const char *path, const char *name, void *buf, size_t len);

// ---- Change journal: a notification group reporting directory file handles ----------
// (FAN_REPORT_DFID_NAME). Constants newer than some system headers.
#ifndef FAN_RENAME
#define FAN_RENAME 0x10000000
#endif
#ifndef FAN_REPORT_DIR_FID
#define FAN_REPORT_DIR_FID 0x00000400
#endif
#ifndef FAN_REPORT_NAME
#define FAN_REPORT_NAME 0x00000800
#endif
#ifndef FAN_REPORT_DFID_NAME
#define FAN_REPORT_DFID_NAME (FAN_REPORT_DIR_FID | FAN_REPORT_NAME)
#endif
#ifndef FAN_EVENT_INFO_TYPE_FID
#define FAN_EVENT_INFO_TYPE_FID 1
#endif
#ifndef FAN_EVENT_INFO_TYPE_DFID_NAME
#define FAN_EVENT_INFO_TYPE_DFID_NAME 2
#endif
#ifndef FAN_EVENT_INFO_TYPE_DFID
#define FAN_EVENT_INFO_TYPE_DFID 3
#endif
#ifndef FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
#define FAN_EVENT_INFO_TYPE_OLD_DFID_NAME 10
#endif
#ifndef FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
#define FAN_EVENT_INFO_TYPE_NEW_DFID_NAME 12
#endif

/// Flag stand-ins for O_PATH|O_DIRECTORY and AT_EMPTY_PATH, which need _GNU_SOURCE
/// (kept out of this header): the C functions below translate them.
#define CHSM_OPEN_PATH_DIR (-1)
/// O_PATH alone (a file, not opened: no fanotify open event), for chsm_open_by_handle.
#define CHSM_OPEN_PATH_FILE (-2)
#define CHSM_EMPTY_PATH (-1)

/// Largest file handle hsmd keeps (MAX_HANDLE_SZ in the kernel is 128).
#define CHSM_HANDLE_MAX 128

/// A file handle as name_to_handle_at and fanotify report it.
typedef struct {
    int32_t type;
    uint32_t bytes;
    uint8_t data[CHSM_HANDLE_MAX];
} chsm_handle;

/// One event of a FID-reporting group: the directories it names (the parent of the
/// affected entry, or a directory itself; a FAN_RENAME event would carry both parents)
/// and the entry's name in the first of them. No fd is ever opened.
typedef struct {
    uint64_t mask;
    int32_t pid;
    int32_t ndirs;         // 0, 1 or 2
    chsm_handle dirs[2];
    uint32_t name_len;     // bytes of `name` (FAN_REPORT_NAME of dirs[0]); 0 when none came
    char name[256];        // NUL-terminated; NAME_MAX is 255
} chsm_fid_event;

/// Reads one batch (blocking unless the group is non-blocking) and parses it.
/// Returns the number of events, or -errno.
int chsm_fanotify_read_fid(int group, void *buf, size_t buflen, chsm_fid_event *out, int maxout);
/// name_to_handle_at(dirfd, path, flags). 0 or -errno.
int chsm_name_to_handle(int dirfd, const char *path, int flags, chsm_handle *out);
/// open_by_handle_at(mount_fd, handle, flags | O_CLOEXEC). fd or -errno (ESTALE: gone).
int chsm_open_by_handle(int mount_fd, const chsm_handle *h, int flags);
/// openat(dirfd, path, flags | O_CLOEXEC); CHSM_OPEN_PATH_DIR here also means O_NOFOLLOW.
/// fd or -errno.
int chsm_openat(int dirfd, const char *path, int flags);
/// statfs f_fsid of the filesystem holding path, as one integer. 0 or -errno.
int chsm_fsid(const char *path, uint64_t *out);

/// Installs a no-op handler for `signo` without SA_RESTART, so sending it to a thread
/// interrupts that thread's blocking read with EINTR. 0 or -errno.
int chsm_wakeup_signal_setup(int signo);

/// Keeps hsmd's resident memory bounded: large buffers go back to the kernel when freed.
void chsm_tune_malloc(void);
/// malloc_trim(0): gives the free pages inside every arena back to the kernel.
void chsm_trim_malloc(void);

/// sync_file_range: start writeback of the range, and with `wait` also wait for it.
int chsm_sync_file_range(int fd, int64_t offset, int64_t length, int wait);


// ---- References to inodes that do not open them ---------------------------------------

/// open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC): names one inode without opening the file
/// (no fanotify open event, no lease break, no atime). fd or -errno.
int chsm_open_inode_ref(const char *path);
/// getxattr of the inode an O_PATH fd names (through /proc/self/fd). Bytes, or -errno
/// (-ENODATA: no such attribute).
ssize_t chsm_inode_ref_getxattr(int fd, const char *name, void *buf, size_t len);
/// fanotify_mark of the inode an O_PATH fd names (through /proc/self/fd, which resolves to
/// exactly that inode whatever happened to its name since). 0 or -errno.
int chsm_fanotify_mark_inode_ref(int group, unsigned int flags, uint64_t mask, int fd);
/// Puts the calling thread at idle CPU (SCHED_IDLE) and idle I/O priority. 0 or -errno.
int chsm_thread_idle_priority(void);

#endif /* CHSM_H */
