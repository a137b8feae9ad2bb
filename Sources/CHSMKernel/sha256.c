// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104). The compression function is the only hot
// part (the s3 store hashes every byte it uploads for x-amz-content-sha256): it runs on the
// x86-64 SHA extensions when the CPU has them, else in portable C.
#include "chsm_sha256.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void compress_portable(uint32_t s[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}


static void blocks_portable(uint32_t s[8], const uint8_t *p, size_t n) {
    for (; n > 0; n--, p += 64) compress_portable(s, p);
}

#if defined(__x86_64__)
// The SHA extensions keep the eight working variables in two registers, {A,B,E,F} and
// {C,D,G,H} (A and C in the top lane). sha256rnds2 does two rounds from the low two lanes of
// its message operand (W+K already added) and returns the new {A,B,E,F}; the old {A,B,E,F}
// is then the new {C,D,G,H}, so the two registers swap roles every call. sha256msg1 and
// sha256msg2 do the two halves of the message schedule four words at a time:
//   msg1(W[t-16..t-13], W[t-12]) = W[t-16+i] + s0(W[t-15+i])
//   msg2(that + W[t-7..t-4], W[t-4..t-1]) = W[t..t+3], adding s1 of W[t-2], W[t-1] and of
//   the two words it has just made.

// Two pairs of rounds on the group `m` of four message words, with constants K[i..i+3].
#define SHANI_ROUNDS4(m, i) do {                                                  \
        __m128i wk = _mm_add_epi32((m), _mm_loadu_si128((const __m128i *)&K[i])); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);                             \
        wk = _mm_shuffle_epi32(wk, 0x0E);   /* lanes 2,3 down to 0,1 */           \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);                             \
    } while (0)

// The next four message words from the four groups before them (m0 oldest): m0 becomes them.
#define SHANI_SCHEDULE(m0, m1, m2, m3) do {                                       \
        __m128i t = _mm_sha256msg1_epu32((m0), (m1));                             \
        t = _mm_add_epi32(t, _mm_alignr_epi8((m3), (m2), 4));   /* W[t-7..t-4] */ \
        (m0) = _mm_sha256msg2_epu32(t, (m3));                                     \
    } while (0)

__attribute__((target("sha,sse4.1")))
static void blocks_shani(uint32_t s[8], const uint8_t *p, size_t n) {
    // Message words are big-endian: reverse the bytes of each 32-bit lane.
    const __m128i bswap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    // state[] is A..H in lanes 0..7; reverse each half, then pair the halves up.
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[0]), 0x1B);
    __m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[4]), 0x1B);
    __m128i abef = _mm_unpackhi_epi64(hgfe, dcba);   // lanes 0..3: F E B A
    __m128i cdgh = _mm_unpacklo_epi64(hgfe, dcba);   // lanes 0..3: H G D C
    for (; n > 0; n--, p += 64) {
        const __m128i abef0 = abef, cdgh0 = cdgh;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), bswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);
        SHANI_ROUNDS4(m0, 0);
        SHANI_ROUNDS4(m1, 4);
        SHANI_ROUNDS4(m2, 8);
        SHANI_ROUNDS4(m3, 12);
        for (int i = 16; i < 64; i += 16) {
            SHANI_SCHEDULE(m0, m1, m2, m3); SHANI_ROUNDS4(m0, i);
            SHANI_SCHEDULE(m1, m2, m3, m0); SHANI_ROUNDS4(m1, i + 4);
            SHANI_SCHEDULE(m2, m3, m0, m1); SHANI_ROUNDS4(m2, i + 8);
            SHANI_SCHEDULE(m3, m0, m1, m2); SHANI_ROUNDS4(m3, i + 12);
        }
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
    }
    // Back to A..H: pairs of lanes in order, then swap within each pair.
    __m128i badc = _mm_unpackhi_epi64(abef, cdgh);   // lanes 0..3: B A D C
    __m128i fehg = _mm_unpacklo_epi64(abef, cdgh);   // lanes 0..3: F E H G
    _mm_storeu_si128((__m128i *)&s[0], _mm_shuffle_epi32(badc, 0xB1));
    _mm_storeu_si128((__m128i *)&s[4], _mm_shuffle_epi32(fehg, 0xB1));
}

// SHA (leaf 7 EBX bit 29) plus SSSE3 and SSE4.1 (leaf 1 ECX bits 9 and 19) for the shuffles.
// cpuid rather than __builtin_cpu_supports("sha"): that one needs a runtime whose feature
// table knows the SHA bit.
static int cpu_has_shani(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 29)) != 0;
}
#endif

static uint32_t best_impl = CHSM_SHA256_PORTABLE;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void choose_best(void) {
#if defined(__x86_64__)
    if (cpu_has_shani()) best_impl = CHSM_SHA256_SHANI;
#endif
}

uint32_t chsm_sha256_best_impl(void) {
    pthread_once(&best_once, choose_best);
    return best_impl;
}

static void blocks(const chsm_sha256_ctx *ctx, uint32_t s[8], const uint8_t *p, size_t n) {
#if defined(__x86_64__)
    if (ctx->impl == CHSM_SHA256_SHANI) { blocks_shani(s, p, n); return; }
#endif
    (void)ctx;
    blocks_portable(s, p, n);
}

int chsm_sha256_init_impl(chsm_sha256_ctx *ctx, uint32_t impl) {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    if (impl != CHSM_SHA256_PORTABLE && impl != chsm_sha256_best_impl()) return -1;
    memcpy(ctx->state, init, sizeof init);
    ctx->length = 0;
    ctx->used = 0;
    ctx->impl = impl;
    return 0;
}

void chsm_sha256_init(chsm_sha256_ctx *ctx) { chsm_sha256_init_impl(ctx, chsm_sha256_best_impl()); }

void chsm_sha256_update(chsm_sha256_ctx *ctx, const void *data, size_t len) {
    const uint8_t *p = data;
    ctx->length += len;
    if (ctx->used > 0) {
        size_t take = 64 - ctx->used < len ? 64 - ctx->used : len;
        memcpy(ctx->block + ctx->used, p, take);
        ctx->used += take; p += take; len -= take;
        if (ctx->used < 64) return;
        blocks(ctx, ctx->state, ctx->block, 1);
        ctx->used = 0;
    }
    if (len >= 64) {
        size_t n = len / 64;
        blocks(ctx, ctx->state, p, n);
        p += 64 * n; len -= 64 * n;
    }
    if (len > 0) { memcpy(ctx->block, p, len); ctx->used = len; }
}

void chsm_sha256_final(chsm_sha256_ctx *ctx, uint8_t out[32]) {
    uint64_t bits = ctx->length * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = ctx->used < 56 ? 56 - ctx->used : 120 - ctx->used;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t saved = ctx->length;
    chsm_sha256_update(ctx, pad, padlen + 8);
    ctx->length = saved;
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(ctx->state[i] >> 24); out[4 * i + 1] = (uint8_t)(ctx->state[i] >> 16);
        out[4 * i + 2] = (uint8_t)(ctx->state[i] >> 8); out[4 * i + 3] = (uint8_t)ctx->state[i];
    }
}

void chsm_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]) {
    uint8_t k[64] = {0}, ipad[64], opad[64], inner[32];
    chsm_sha256_ctx ctx;
    if (key_len > 64) {
        chsm_sha256_init(&ctx); chsm_sha256_update(&ctx, key, key_len); chsm_sha256_final(&ctx, k);
    } else if (key_len > 0) {
        memcpy(k, key, key_len);
    }
    for (int i = 0; i < 64; i++) { ipad[i] = k[i] ^ 0x36; opad[i] = k[i] ^ 0x5c; }
    chsm_sha256_init(&ctx); chsm_sha256_update(&ctx, ipad, 64); chsm_sha256_update(&ctx, data, len);
    chsm_sha256_final(&ctx, inner);
    chsm_sha256_init(&ctx); chsm_sha256_update(&ctx, opad, 64); chsm_sha256_update(&ctx, inner, 32);
    chsm_sha256_final(&ctx, out);
    memset(k, 0, sizeof k); memset(ipad, 0, sizeof ipad); memset(opad, 0, sizeof opad);
}

