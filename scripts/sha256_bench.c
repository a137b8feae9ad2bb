// Micro benchmark of the SHA-256 compression functions in Sources/CHSMKernel/sha256.c:
// MB/s of each implementation this CPU has over a 64 MiB buffer (one update, as the s3
// store hashes a whole part), median of 5. Built with the same clang as the package:
//   clang -O2 -ISources/CHSMKernel/include scripts/sha256_bench.c Sources/CHSMKernel/sha256.c -o /tmp/sha256_bench -lpthread
//   /tmp/sha256_bench [MiB]
#include "chsm_sha256.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    size_t n = mib << 20;
    unsigned char *buf = malloc(n);
    if (!buf || n == 0) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    const char *names[] = {"portable", "sha-ni"};
    unsigned char first[32] = {0};
    for (uint32_t impl = CHSM_SHA256_PORTABLE; impl <= CHSM_SHA256_SHANI; impl++) {
        chsm_sha256_ctx ctx;
        if (chsm_sha256_init_impl(&ctx, impl) != 0) { printf("%-8s not on this CPU\n", names[impl]); continue; }
        double mbs[5];
        unsigned char out[32];
        for (int r = 0; r < 5; r++) {
            chsm_sha256_init_impl(&ctx, impl);
            double t0 = now();
            chsm_sha256_update(&ctx, buf, n);
            chsm_sha256_final(&ctx, out);
            mbs[r] = n / (now() - t0) / 1e6;
        }
        if (impl == CHSM_SHA256_PORTABLE) memcpy(first, out, 32);
        else if (memcmp(first, out, 32) != 0) { printf("digests differ\n"); return 1; }
        qsort(mbs, 5, sizeof mbs[0], by_value);
        printf("%-8s %7.0f MB/s median of 5 (min %.0f, max %.0f) over %zu MiB\n", names[impl], mbs[2], mbs[0], mbs[4], mib);
    }
    free(buf);
    return 0;
}
