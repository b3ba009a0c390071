/* tf_sha256: FIPS 180-4 SHA-256 (the telemetry's head-sha256 and deploy checks), no heap. */
#ifndef TF_SHA256_H
#define TF_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t block[64];
    size_t used;
} tf_sha256;

void tf_sha256_init(tf_sha256 *s);
void tf_sha256_update(tf_sha256 *s, const void *data, size_t n);
void tf_sha256_final(tf_sha256 *s, uint8_t out[32]);
/* Lowercase hex digest of data into out (65 bytes with the NUL). */
void tf_sha256_hex(const void *data, size_t n, char out[65]);

#endif
