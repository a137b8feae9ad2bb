// The event log: every permission event hsmd reads, recorded where a successor process
// can find it (docs/ARCHITECTURE.md, "Restart without harm").
//
// It lives in a memfd that systemd's fd store keeps across restarts. The fanotify read
// buffer itself is inside it, so an event is on record the moment read() returns; right
// after, each permission event gets a slot with what a successor needs to finish it: the
// event's fd number (the kernel answers responses by that number, even from another
// process holding the same group), the pid, the range, and the file's handle
// (name_to_handle_at on the event fd), device and inode. A slot is freed after the answer is written and
// before the fd is closed, so a pending slot's fd number is never reused meanwhile.
#ifndef CHSM_EVENTLOG_H
#define CHSM_EVENTLOG_H

#include "chsm.h"

#define CHSM_EVLOG_MAGIC 0x474f4c5645534d48ULL   // "HSMEVLOG"
#define CHSM_EVLOG_VERSION 1u

/// One recorded event. `state` is written last (release) when recorded and set back to
/// 0 when answered, so a reader after a crash sees a slot either whole or free.
typedef struct {
    uint32_t state;        // 0 free, 1 pending
    int32_t fd;            // the event fd number in the process that read it
    int32_t pid;
    int32_t has_range;
    uint64_t mask;
    uint64_t offset;
    uint64_t count;
    uint64_t batch;        // the read that delivered it
    int32_t has_handle;
    int32_t pad;
    uint64_t dev;          // device (major << 32 | minor, as chsm_stat) and inode (0 when
                           // fstat failed): mount ids
    uint64_t ino;          // are per mount namespace, these are not
    chsm_handle handle;
} chsm_evlog_slot;

/// Creates a new log in a memfd: `slots` slots and a read buffer of `raw_bytes`.
/// Returns the memfd or -errno.
int chsm_evlog_create(uint32_t slots, uint32_t raw_bytes);
/// Maps a log (new or adopted) after checking its header and size. Returns the mapping or
/// NULL with *err = errno (EINVAL: not a log of this version).
void *chsm_evlog_map(int fd, int *err);
uint32_t chsm_evlog_slot_count(const void *log);
uint32_t chsm_evlog_raw_bytes(const void *log);

/// Reads one batch from `group` into the log's own buffer (zeroing what the previous
/// batch left first), parses it and records a slot for every permission event with an
/// fd. `out[i].slot` is its slot, -1 when the log is full or the event needs none.
/// Returns the number of events, 0 at EOF, or -errno (EINTR included: not retried).
int chsm_evlog_read(void *log, int group, chsm_event *out, int maxout);
/// The handle recorded in a pending slot (taken when its event was read). 0, or -ENOENT
/// when the slot is free or holds no handle, -EINVAL for a slot out of range. Only for the
/// thread that owns the slot's event until it is answered (the slot is reused after).
int chsm_evlog_handle(const void *log, int32_t slot, chsm_handle *out);
/// Frees a slot: its event has been answered.
void chsm_evlog_done(void *log, int32_t slot);

/// For a successor: copies every pending slot (and its index) out. Returns the count.
int chsm_evlog_pending(const void *log, chsm_evlog_slot *out, int32_t *index, int max);
/// For a successor: 1 when every permission event of the last batch got a slot (the
/// others of the buffer were answered), 0 when the writer died before that or the log was
/// full (an event of the buffer without a slot may be unanswered).
int chsm_evlog_last_batch_recorded(const void *log);
/// For a successor: records an event of the last batch that never got a slot, once the
/// successor has identified its file (`event`'s state is ignored). The slot, or -1 when the
/// log is full.
int32_t chsm_evlog_add(void *log, const chsm_evlog_slot *event);
/// Test-only: the process kills itself with SIGKILL after a read that delivered a
/// permission event, before recording it, whenever `path` exists (NULL: never).
void chsm_evlog_test_die_after_read(const char *path);
/// For a successor: the events of the last batch still in the read buffer (parsed
/// defensively: the writer may have died at any point).
int chsm_evlog_last_batch(const void *log, chsm_event *out, int maxout);

#endif
