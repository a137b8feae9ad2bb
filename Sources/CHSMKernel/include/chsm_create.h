#pragma once
#include <stdint.h>

// Making files and directories relative to a directory fd, for hsmctl import: a file is
// made unnamed (O_TMPFILE), given its size, metadata and marker, and only then linked
// under its name, so no one ever sees it half made. Each returns -errno on failure.

/// openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC). fd or -errno.
int chsm_open_dir_at(int dirfd, const char *name);
/// mkdirat(dirfd, name, mode). 0 or -errno (-EEXIST when it exists).
int chsm_mkdir_at(int dirfd, const char *name, unsigned int mode);
/// 1 when name exists in dirfd (not following a symlink), 0 when not, or -errno.
int chsm_exists_at(int dirfd, const char *name);
/// An unnamed regular file in dirfd's filesystem (O_TMPFILE | O_RDWR). fd or -errno.
int chsm_open_tmpfile(int dirfd, unsigned int mode);
/// Gives the unnamed file fd the name `name` in dirfd; never replaces (-EEXIST). 0 or -errno.
int chsm_link_tmpfile(int fd, int dirfd, const char *name);
/// fchown, fchmod and futimens (atime and mtime in ns since 1970). 0 or -errno.
int chsm_fchown(int fd, uint32_t uid, uint32_t gid);
int chsm_fchmod(int fd, unsigned int mode);
int chsm_set_times(int fd, int64_t atime_ns, int64_t mtime_ns);
