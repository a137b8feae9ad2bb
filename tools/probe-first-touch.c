// Measures what a first write to fresh memory costs on this machine: mmap N GiB of
// anonymous memory, write it once (page faults: the kernel allocates and zeroes each
// page, and a virtual machine's host may have to back it first), write it again (no
// faults), unmap; R rounds. Optionally waits S seconds before each round, so that
// memory freed by the previous round may have been handed back to the host (virtio
// balloon free page reporting does so about two seconds after a free).
//   cc -O2 -o /tmp/probe-first-touch tools/probe-first-touch.c
//   /tmp/probe-first-touch GIB ROUNDS [WAIT_SECONDS]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s GIB ROUNDS [WAIT_SECONDS]\n", argv[0]);
        return 2;
    }
    size_t gib = (size_t)atoi(argv[1]), n = gib << 30;
    int rounds = atoi(argv[2]);
    int wait = argc > 3 ? atoi(argv[3]) : 0;
    for (int r = 0; r < rounds; r++) {
        if (r > 0 && wait > 0) sleep(wait);
        char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        double t = now();
        memset(p, 1, n);
        double first = now() - t;
        t = now();
        memset(p, 2, n);
        double second = now() - t;
        printf("round %d: first write %.2f s/GiB, second %.3f s/GiB\n", r, first / gib, second / gib);
        munmap(p, n);
    }
    return 0;
}
