// fanotify: the group, its marks, reading and parsing events, answering permission events.
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

int chsm_fanotify_init(unsigned int flags, unsigned int event_f_flags) {
    int fd = fanotify_init(flags, event_f_flags);
    return fd < 0 ? -errno : fd;
}

int chsm_fanotify_mark(int group, unsigned int flags, uint64_t mask, int dirfd, const char *path) {
    return fanotify_mark(group, flags, mask, dirfd, path) < 0 ? -errno : 0;
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

int chsm_fanotify_mark_inode_ref(int group, unsigned int flags, uint64_t mask, int fd) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    return fanotify_mark(group, flags, mask, AT_FDCWD, link) < 0 ? -errno : 0;
}
