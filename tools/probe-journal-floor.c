// Kernel-fact probe (see docs/BENCHMARKS.md, "Change journal"): the cheapest journal a
// listener can run, to tell the kernel's share of the journal's cost from hsmd's.
// Run as root on a filesystem made for it; it marks only MOUNTPOINT, and stops on SIGTERM.
//
// usage: probe-journal-floor MOUNTPOINT
// One FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME group with a filesystem mark for the events
// hsmd's journal takes; each directory an event names is put under the same ignore mark
// hsmd uses, from the reading thread, the first time it is seen. No database, no
// ancestors, no paths: what is left is what the kernel costs.
#define _GNU_SOURCE
#include <sys/fanotify.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x400
#endif
#ifndef FAN_MARK_EVICTABLE
#define FAN_MARK_EVICTABLE 0x200
#endif

#define EVENTS (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_ONDIR)
#define IGNORED (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD)
#define SLOTS (1 << 20)

static volatile sig_atomic_t stopping;
static void on_term(int s) { (void)s; stopping = 1; }

// Seen directories: an open-addressing set of handle hashes (a collision only skips a mark).
static uint64_t seen[SLOTS];
static int insert(uint64_t h) {
    if (h == 0) h = 1;
    for (uint64_t i = h & (SLOTS - 1);; i = (i + 1) & (SLOTS - 1)) {
        if (seen[i] == h) return 0;
        if (seen[i] == 0) { seen[i] = h; return 1; }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]); return 2; }
    signal(SIGTERM, on_term);
    int g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, O_RDONLY);
    int mountFD = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (g < 0 || mountFD < 0) { perror("fanotify_init/open"); return 1; }
    if (fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, EVENTS, AT_FDCWD, argv[1])) { perror("fanotify_mark"); return 1; }
    printf("ready\n");
    fflush(stdout);
    static char buf[65536] __attribute__((aligned(8)));
    unsigned long events = 0, marks = 0;
    struct pollfd p = {g, POLLIN, 0};
    while (!stopping) {
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t len;
        while ((len = read(g, buf, sizeof buf)) > 0) {
            for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
                events++;
                if (m->event_len <= m->metadata_len) continue;
                struct fanotify_event_info_fid *fid = (void *)((char *)m + m->metadata_len);
                struct file_handle *fh = (void *)fid->handle;
                uint64_t h = 1469598103934665603ULL;
                for (unsigned i = 0; i < fh->handle_bytes; i++) h = (h ^ fh->f_handle[i]) * 1099511628211ULL;
                if (!insert(h)) continue;
                int d = open_by_handle_at(mountFD, fh, O_PATH | O_DIRECTORY);
                if (d < 0) continue;
                if (fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE, IGNORED, d, ".") == 0) marks++;
                close(d);
            }
        }
    }
    fprintf(stderr, "probe-journal-floor: %lu events, %lu ignore marks\n", events, marks);
    return 0;
}
