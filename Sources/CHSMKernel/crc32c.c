// CRC32C (the checksum of every block and chunk): SSE4.2 over three interleaved streams, or a table.
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

// CRC32C: SSE4.2 instruction when present, else a bytewise table.
static uint32_t crc32c_table[256];
static int crc32c_table_ready;

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    crc32c_table_ready = 1;
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len) {
    if (!crc32c_table_ready) crc32c_init_table();
    while (len--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles but accepts a new one every cycle: one
// dependency chain uses a third of it. Long buffers are checksummed as three interleaved
// chains over adjacent stripes, joined afterwards by "shifting" a CRC over the length of
// the stripes that follow it (the CRC register is linear over GF(2), so appending n zero
// bytes is a fixed 32x32 bit matrix, applied here as four 256-entry byte tables).
#define CRC_STRIPE 4096

static uint32_t crc32c_stripe_shift[4][256];   // operator: append CRC_STRIPE zero bytes
static pthread_once_t crc32c_shift_once = PTHREAD_ONCE_INIT;

// Matrix over GF(2) as 32 column images; product with a vector.
static uint32_t gf2_apply(const uint32_t m[32], uint32_t v) {
    uint32_t r = 0;
    for (int i = 0; v; i++, v >>= 1) if (v & 1) r ^= m[i];
    return r;
}

static void gf2_square(uint32_t out[32], const uint32_t m[32]) {
    for (int i = 0; i < 32; i++) out[i] = gf2_apply(m, m[i]);
}

static void crc32c_make_shift_tables(void) {
    uint32_t op[32], sq[32];
    // One zero bit: reflected register shifts right, folding in the polynomial.
    op[0] = 0x82F63B78u;
    for (int i = 1; i < 32; i++) op[i] = 1u << (i - 1);
    // Square up to 8 * CRC_STRIPE zero bits (a power of two).
    for (unsigned bits = 1; bits < 8u * CRC_STRIPE; bits <<= 1) {
        gf2_square(sq, op);
        memcpy(op, sq, sizeof op);
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) crc32c_stripe_shift[k][b] = gf2_apply(op, b << (8 * k));
}

static inline uint32_t crc32c_shift_stripe(uint32_t c) {
    return crc32c_stripe_shift[0][c & 0xff] ^ crc32c_stripe_shift[1][(c >> 8) & 0xff]
         ^ crc32c_stripe_shift[2][(c >> 16) & 0xff] ^ crc32c_stripe_shift[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); len--; }
    if (len >= 3 * CRC_STRIPE) {
        pthread_once(&crc32c_shift_once, crc32c_make_shift_tables);
        while (len >= 3 * CRC_STRIPE) {
            // Register values of the three stripes: the first continues `c`, the other
            // two start from 0 and are joined in by linearity.
            uint64_t c1 = 0, c2 = 0;
            const unsigned char *end = p + CRC_STRIPE;
            do {
                uint64_t v0, v1, v2;
                memcpy(&v0, p, 8); memcpy(&v1, p + CRC_STRIPE, 8); memcpy(&v2, p + 2 * CRC_STRIPE, 8);
                c = __builtin_ia32_crc32di(c, v0);
                c1 = __builtin_ia32_crc32di(c1, v1);
                c2 = __builtin_ia32_crc32di(c2, v2);
                p += 8;
            } while (p < end);
            c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c1;
            c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c2;
            p += 2 * CRC_STRIPE;
            len -= 3 * CRC_STRIPE;
        }
    }
    while (len >= 8) { uint64_t v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; len -= 8; }
    while (len--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t chsm_crc32c(uint32_t crc, const void *data, size_t len) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(crc, data, len);
#endif
    return ~crc32c_soft(crc, data, len);
}
