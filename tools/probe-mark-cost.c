// Kernel-fact probe (see docs/KERNEL-FACTS.md), run through tools/probe-mark-cost.py as
// root on a filesystem made for it. What do the change journal's fanotify marks cost the
// programs changing files, when (as on the journal's fast path) no event is delivered?
//
// usage: probe-mark-cost MOUNTPOINT SETUP FILES
//   SETUP none         no fanotify group at all
//         two-groups   the journal's earlier layout: a FID+DFID_NAME+TARGET_FID group for
//                      entry/data events and a DFID_NAME group for attrib, each with a
//                      filesystem mark and an ignore mark on every directory
//         one-group    one DFID_NAME group for all of them, one ignore mark per directory
//         ignore-only  one group, ignore marks on the directories, no filesystem mark
// Prints the seconds of each phase: create (open O_CREAT, write 2 KiB, fchmod, fchown,
// futimens, close), read (open, read 2 KiB, close: events the journal does not take),
// rename into the next directory, chmod, unlink.
#define _GNU_SOURCE
#include <sys/fanotify.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x400
#endif
#ifndef FAN_MARK_EVICTABLE
#define FAN_MARK_EVICTABLE 0x200
#endif
#ifndef FAN_REPORT_TARGET_FID
#define FAN_REPORT_TARGET_FID 0x1000
#endif

#define ENTRY_DATA (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ONDIR)
#define IGNORED (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD)

static int groups[2], ngroups;
static volatile int stopping;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// Reads (and drops) whatever arrives, so no queue overflows.
static void *drain(void *unused) {
    static char buf[65536];
    while (!stopping) {
        for (int i = 0; i < ngroups; i++) while (read(groups[i], buf, sizeof buf) > 0) {}
        usleep(1000);
    }
    return unused;
}

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s MOUNTPOINT none|two-groups|one-group|ignore-only FILES\n", argv[0]); return 2; }
    const char *mnt = argv[1], *setup = argv[2];
    int files = atoi(argv[3]), dirs = files / 100;
    unsigned masks[2];
    int filesystemMark = 1;
    if (!strcmp(setup, "two-groups")) {
        groups[0] = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID, O_RDONLY);
        groups[1] = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, O_RDONLY);
        masks[0] = ENTRY_DATA; masks[1] = FAN_ATTRIB | FAN_ONDIR; ngroups = 2;
    } else if (!strcmp(setup, "one-group") || !strcmp(setup, "ignore-only")) {
        groups[0] = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, O_RDONLY);
        masks[0] = ENTRY_DATA | FAN_ATTRIB; ngroups = 1;
        filesystemMark = strcmp(setup, "ignore-only") != 0;
    } else if (strcmp(setup, "none")) {
        fprintf(stderr, "unknown setup %s\n", setup); return 2;
    }
    for (int i = 0; i < ngroups; i++) {
        if (groups[i] < 0) die("fanotify_init");
        if (filesystemMark && fanotify_mark(groups[i], FAN_MARK_ADD | FAN_MARK_FILESYSTEM, masks[i], AT_FDCWD, mnt)) die("fanotify_mark(FILESYSTEM)");
    }
    char p[512], q[512], root[512];
    snprintf(root, sizeof root, "%s/probe", mnt);
    if (mkdir(root, 0755)) die(root);
    unsigned ignore = FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE;
    for (int d = -1; d < dirs; d++) {
        if (d >= 0) { snprintf(p, sizeof p, "%s/d%d", root, d); if (mkdir(p, 0755)) die(p); }
        for (int i = 0; i < ngroups; i++)
            if (fanotify_mark(groups[i], ignore, IGNORED, AT_FDCWD, d < 0 ? root : p)) die("fanotify_mark(IGNORE)");
    }
    pthread_t reader;
    pthread_create(&reader, 0, drain, 0);
    char data[2048];
    memset(data, 'x', sizeof data);
    struct timespec times[2] = {{0, 0}, {0, 0}};
    double t0 = now();
    for (int f = 0; f < files; f++) {
        snprintf(p, sizeof p, "%s/d%d/f%d", root, f / 100, f);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, data, sizeof data) != sizeof data) die(p);
        if (fchmod(fd, 0644) || fchown(fd, 0, 0) || futimens(fd, times) || close(fd)) die(p);
    }
    double t1 = now();
    for (int f = 0; f < files; f++) {
        snprintf(p, sizeof p, "%s/d%d/f%d", root, f / 100, f);
        int fd = open(p, O_RDONLY);
        if (fd < 0 || read(fd, data, sizeof data) != sizeof data || close(fd)) die(p);
    }
    double tr = now();
    for (int f = 0; f < files; f++) {
        snprintf(p, sizeof p, "%s/d%d/f%d", root, f / 100, f);
        snprintf(q, sizeof q, "%s/d%d/m%d", root, (f / 100 + 1) % dirs, f);
        if (rename(p, q)) die(p);
    }
    double t2 = now();
    for (int f = 0; f < files; f++) {
        snprintf(q, sizeof q, "%s/d%d/m%d", root, (f / 100 + 1) % dirs, f);
        if (chmod(q, 0640)) die(q);
    }
    double t3 = now();
    for (int f = 0; f < files; f++) {
        snprintf(q, sizeof q, "%s/d%d/m%d", root, (f / 100 + 1) % dirs, f);
        if (unlink(q)) die(q);
    }
    double t4 = now();
    stopping = 1;
    pthread_join(reader, 0);
    for (int d = 0; d < dirs; d++) { snprintf(p, sizeof p, "%s/d%d", root, d); rmdir(p); }
    rmdir(root);
    printf("%s create %.4f read %.4f rename %.4f chmod %.4f unlink %.4f total %.4f\n", setup, t1 - t0, tr - t1, t2 - tr, t3 - t2, t4 - t3, t4 - t0);
    return 0;
}
