// Reaching files without paths: hsmd's private mount clone, file handles, O_PATH references.
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

int chsm_open_inode_ref(const char *path) {
    int fd;
    do { fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}
