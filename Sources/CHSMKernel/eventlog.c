// The event log (chsm_eventlog.h): a memfd holding the fanotify read buffer and one slot
// per permission event read and not yet answered.
#define _GNU_SOURCE
#include "chsm.h"
#include "chsm_eventlog.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define HEADER_BYTES 4096u

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t slots;
    uint32_t raw_bytes;
    uint32_t hint;          // where the writer looks for a free slot next
    uint64_t batch;         // reads so far
    uint64_t raw_len;       // bytes of the batch in the buffer; 0 while a read is under way
    uint64_t total_bytes;
    // The last batch whose permission events all got a slot. While it is not `batch`, the
    // events of the buffer without a slot were never answered (a log of an older hsmd
    // leaves it 0, which reads the same).
    uint64_t recorded;
} header;

static size_t total_size(uint32_t slots, uint32_t raw_bytes) {
    return HEADER_BYTES + (size_t)raw_bytes + (size_t)slots * sizeof(chsm_evlog_slot);
}

static char *raw_area(const void *log) { return (char *)log + HEADER_BYTES; }

static chsm_evlog_slot *slot_area(const void *log) {
    const header *h = log;
    return (chsm_evlog_slot *)(raw_area(log) + h->raw_bytes);
}

int chsm_evlog_create(uint32_t slots, uint32_t raw_bytes) {
    if (slots == 0 || raw_bytes < 4096 || raw_bytes % 8 != 0) return -EINVAL;
    int fd = memfd_create("hsmd-event-log", MFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)total_size(slots, raw_bytes)) < 0) { int e = errno; close(fd); return -e; }
    header *h = mmap(NULL, HEADER_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) { int e = errno; close(fd); return -e; }
    h->version = CHSM_EVLOG_VERSION;
    h->slots = slots;
    h->raw_bytes = raw_bytes;
    h->total_bytes = total_size(slots, raw_bytes);
    __atomic_store_n(&h->magic, CHSM_EVLOG_MAGIC, __ATOMIC_RELEASE);
    munmap(h, HEADER_BYTES);
    return fd;
}

void *chsm_evlog_map(int fd, int *err) {
    struct stat st;
    if (fstat(fd, &st) < 0) { *err = errno; return NULL; }
    if ((size_t)st.st_size < HEADER_BYTES) { *err = EINVAL; return NULL; }
    header *h = mmap(NULL, HEADER_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) { *err = errno; return NULL; }
    int ok = h->magic == CHSM_EVLOG_MAGIC && h->version == CHSM_EVLOG_VERSION && h->slots > 0
        && h->raw_bytes >= 4096 && h->raw_bytes % 8 == 0
        && h->total_bytes == total_size(h->slots, h->raw_bytes) && (size_t)st.st_size == h->total_bytes;
    size_t size = ok ? h->total_bytes : 0;
    munmap(h, HEADER_BYTES);
    if (!ok) { *err = EINVAL; return NULL; }
    void *log = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (log == MAP_FAILED) { *err = errno; return NULL; }
    return log;
}

uint32_t chsm_evlog_slot_count(const void *log) { return ((const header *)log)->slots; }
uint32_t chsm_evlog_raw_bytes(const void *log) { return ((const header *)log)->raw_bytes; }

static int is_permission_event(uint64_t mask) {
    return (mask & (FAN_PRE_ACCESS | FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_ACCESS_PERM)) != 0;
}

/// A free slot, marked taken by the caller's final state store; -1 when the log is full.
static int32_t free_slot(header *h) {
    chsm_evlog_slot *slots = slot_area(h);
    for (uint32_t i = 0; i < h->slots; i++) {
        uint32_t k = (h->hint + i) % h->slots;
        if (__atomic_load_n(&slots[k].state, __ATOMIC_ACQUIRE) == 0) {
            h->hint = k + 1;
            return (int32_t)k;
        }
    }
    return -1;
}

static int32_t record(header *h, chsm_event *e) {
    int32_t k = free_slot(h);
    if (k < 0) return -1;
    chsm_evlog_slot *s = &slot_area(h)[k];
    s->fd = e->fd;
    s->pid = e->pid;
    s->has_range = e->has_range;
    s->mask = e->mask;
    s->offset = e->offset;
    s->count = e->count;
    s->batch = h->batch;
    s->has_handle = chsm_name_to_handle(e->fd, "", CHSM_EMPTY_PATH, &s->handle) == 0;
    // The same encoding of the device as everywhere in hsmd. The whole statx goes to
    // the caller too (e->st), which would otherwise take the same one right after.
    if (chsm_fstat(e->fd, &e->st) == 0) {
        e->has_stat = 1;
        s->dev = e->st.dev;
        s->ino = e->st.ino;
    } else {
        s->dev = 0;
        s->ino = 0;
    }
    __atomic_store_n(&s->state, 1u, __ATOMIC_RELEASE);
    return k;
}

int32_t chsm_evlog_add(void *log, const chsm_evlog_slot *event) {
    header *h = log;
    int32_t k = free_slot(h);
    if (k < 0) return -1;
    chsm_evlog_slot *s = &slot_area(h)[k];
    *s = *event;
    s->state = 0;
    s->batch = h->batch;
    __atomic_store_n(&s->state, 1u, __ATOMIC_RELEASE);
    return k;
}

// Test-only (HSMD_TEST_DIE_AFTER_READ_FILE): the process kills itself right after a read
// that delivered a permission event, before any of the batch is recorded, while this file
// exists: the one moment a successor finds events that nothing identifies.
static const char *die_after_read_file;

void chsm_evlog_test_die_after_read(const char *path) { die_after_read_file = path; }

int chsm_evlog_read(void *log, int group, chsm_event *out, int maxout) {
    header *h = log;
    char *raw = raw_area(log);
    // What the last batch left must not be taken for events by a successor.
    size_t used = __atomic_load_n(&h->raw_len, __ATOMIC_ACQUIRE);
    if (used > h->raw_bytes) used = h->raw_bytes;
    memset(raw, 0, used);
    __atomic_store_n(&h->raw_len, 0, __ATOMIC_RELEASE);
    h->batch++;
    // EINTR is returned, not retried: it is how hsmd wakes the reading thread to stop.
    ssize_t len = read(group, raw, h->raw_bytes);
    if (len < 0) return -errno;
    __atomic_store_n(&h->raw_len, (uint64_t)len, __ATOMIC_RELEASE);
    int n = chsm_parse_events(raw, len, out, maxout);
    if (die_after_read_file) {
        for (int i = 0; i < n; i++) {
            if (out[i].fd >= 0 && is_permission_event(out[i].mask) && access(die_after_read_file, F_OK) == 0) raise(SIGKILL);
        }
    }
    int all = 1;
    for (int i = 0; i < n; i++) {
        if (out[i].fd >= 0 && is_permission_event(out[i].mask)) {
            out[i].slot = record(h, &out[i]);
            if (out[i].slot < 0) all = 0;
        }
    }
    if (all) __atomic_store_n(&h->recorded, h->batch, __ATOMIC_RELEASE);
    return n;
}

int chsm_evlog_handle(const void *log, int32_t slot, chsm_handle *out) {
    const header *h = log;
    if (slot < 0 || (uint32_t)slot >= h->slots) return -EINVAL;
    const chsm_evlog_slot *s = &slot_area(log)[slot];
    if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != 1 || !s->has_handle) return -ENOENT;
    *out = s->handle;
    return 0;
}

void chsm_evlog_done(void *log, int32_t slot) {
    header *h = log;
    if (slot < 0 || (uint32_t)slot >= h->slots) return;
    __atomic_store_n(&slot_area(log)[slot].state, 0u, __ATOMIC_RELEASE);
}

int chsm_evlog_pending(const void *log, chsm_evlog_slot *out, int32_t *index, int max) {
    const header *h = log;
    chsm_evlog_slot *slots = slot_area(log);
    int n = 0;
    for (uint32_t i = 0; i < h->slots && n < max; i++) {
        if (__atomic_load_n(&slots[i].state, __ATOMIC_ACQUIRE) != 1) continue;
        out[n] = slots[i];
        index[n] = (int32_t)i;
        n++;
    }
    return n;
}

int chsm_evlog_last_batch_recorded(const void *log) {
    const header *h = log;
    return __atomic_load_n(&h->recorded, __ATOMIC_ACQUIRE) == h->batch;
}

int chsm_evlog_last_batch(const void *log, chsm_event *out, int maxout) {
    const header *h = log;
    uint64_t len = __atomic_load_n(&h->raw_len, __ATOMIC_ACQUIRE);
    // 0: the writer died between read() and recording its length; the buffer was zeroed
    // before that read, so parsing stops at the first zero event_len.
    if (len == 0 || len > h->raw_bytes) len = h->raw_bytes;
    return chsm_parse_events(raw_area(log), (ssize_t)len, out, maxout);
}
