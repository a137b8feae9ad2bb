// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for AWS Signature V4 and the payload hash
// of every request body the s3 store sends. Plain headers only (docs/ARCHITECTURE.md, "Layers").
#ifndef CHSM_SHA256_H
#define CHSM_SHA256_H

#include <stdint.h>
#include <stddef.h>

/// Which compression function a context uses. Both give the same digests; the portable one
/// exists for CPUs without the SHA extensions and so that tests can compare the two.
enum {
    CHSM_SHA256_PORTABLE = 0,   // plain C, any CPU
    CHSM_SHA256_SHANI = 1,      // x86-64 SHA extensions (sha256rnds2/msg1/msg2)
};

typedef struct {
    uint32_t state[8];
    uint64_t length;      // bytes hashed so far
    uint8_t block[64];
    size_t used;          // bytes in `block`
    uint32_t impl;        // CHSM_SHA256_*, chosen by init
} chsm_sha256_ctx;

/// Starts a hash with the fastest compression function this CPU has.
void chsm_sha256_init(chsm_sha256_ctx *ctx);
/// Starts a hash with the given CHSM_SHA256_* function. Returns 0, or -1 (and leaves `ctx`
/// unusable) when this CPU lacks it.
int chsm_sha256_init_impl(chsm_sha256_ctx *ctx, uint32_t impl);
/// The CHSM_SHA256_* function chsm_sha256_init picks on this CPU.
uint32_t chsm_sha256_best_impl(void);
void chsm_sha256_update(chsm_sha256_ctx *ctx, const void *data, size_t len);
void chsm_sha256_final(chsm_sha256_ctx *ctx, uint8_t out[32]);
void chsm_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]);

#endif
