/* Checks hyperdec.c against test vectors written on another machine (scripts/hyperdec_vectors.py, from the numpy
 * implementation on x86): no Python needed, so it runs under qemu for a target that has none
 * (scripts/check_arm64_coder.sh).
 *
 *   hyperdec_vectors VECTORS_FILE
 *
 * The file (little-endian): "SIHV", u32 version 1, u32 n_cases; then per case: u32 n_layers; per layer i64 c_out,
 * c_in, k, lo, hi, up, i8 w[c_out * c_in * k * k], i64 mult[c_out], i64 bias[c_out]; then i64 n, c, h, w,
 * i64 z[n * c * h * w], i64 in_max, levels, means, y_h, y_w, i64 the expected return code, and when it is 0 the
 * expected i64 indexes and (means) f32 means, each (n, c_t, y_h, y_w). Prints one line per failure and a summary;
 * exit 0 when all pass.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../shared/codec/hyperdec.h"

static FILE *f;

static void read_or_die(void *p, size_t size, size_t count) {
    if (count && fread(p, size, count, f) != count) {
        fprintf(stderr, "vectors file ends early\n");
        exit(2);
    }
}

/* the file is little-endian; so is every target we check (x86_64, aarch64) */
static uint32_t u32(void) {
    uint8_t b[4];
    read_or_die(b, 1, 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int64_t i64(void) {
    int64_t v;
    read_or_die(&v, 8, 1);
    return v;
}

static void *alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 2 || !(f = fopen(argv[1], "rb"))) {
        fprintf(stderr, "usage: %s VECTORS_FILE\n", argv[0]);
        return 2;
    }
    char magic[4];
    read_or_die(magic, 1, 4);
    if (memcmp(magic, "SIHV", 4) || u32() != 1) {
        fprintf(stderr, "not a version 1 vectors file\n");
        return 2;
    }
    const uint32_t n_cases = u32();
    uint32_t failed = 0, computed = 0;
    for (uint32_t k = 0; k < n_cases; k++) {
        const uint32_t n_layers = u32();
        if (n_layers < 1 || n_layers > SI_HS_MAX_LAYERS) {
            fprintf(stderr, "case %u: %u layers\n", k, n_layers);
            return 2;
        }
        si_hs_layer layers[SI_HS_MAX_LAYERS];
        for (uint32_t i = 0; i < n_layers; i++) {
            si_hs_layer *L = layers + i;
            L->c_out = i64(), L->c_in = i64(), L->k = i64(), L->lo = i64(), L->hi = i64(), L->up = i64();
            const size_t nw = (size_t)(L->c_out * L->c_in * L->k * L->k);
            int8_t *w = alloc(nw);
            int64_t *mult = alloc(8 * (size_t)L->c_out), *bias = alloc(8 * (size_t)L->c_out);
            read_or_die(w, 1, nw);
            read_or_die(mult, 8, (size_t)L->c_out);
            read_or_die(bias, 8, (size_t)L->c_out);
            L->w = w, L->mult = mult, L->bias = bias;
        }
        const int64_t n = i64(), c = i64(), h = i64(), w = i64();
        int64_t *z = alloc(8 * (size_t)(n * c * h * w));
        read_or_die(z, 8, (size_t)(n * c * h * w));
        const int64_t in_max = i64(), levels = i64(), means = i64(), y_h = i64(), y_w = i64(), want_rc = i64();
        const si_hs_layer *last = layers + n_layers - 1;
        const int64_t c_t = last->c_out / (last->up * last->up) / (means ? 2 : 1), size = n * c_t * y_h * y_w;
        int64_t *idx = alloc(8 * (size_t)size), *want_idx = alloc(8 * (size_t)size);
        float *m = alloc(4 * (size_t)size), *want_m = alloc(4 * (size_t)size);
        int64_t rc = si_int_hyper(layers, n_layers, z, n, c, h, w, in_max, levels, means, y_h, y_w, idx, m, NULL, 0);
        void *work = NULL;
        if (rc > 0) {
            work = alloc((size_t)rc);
            rc = si_int_hyper(layers, n_layers, z, n, c, h, w, in_max, levels, means, y_h, y_w, idx, m, work, rc);
        }
        if (rc != want_rc) {
            printf("case %u: returned %lld, expected %lld\n", k, (long long)rc, (long long)want_rc);
            failed++;
        }
        if (want_rc == 0) {
            read_or_die(want_idx, 8, (size_t)size);
            if (means)
                read_or_die(want_m, 4, (size_t)size);
            if (rc == 0) {
                computed++;
                if (memcmp(idx, want_idx, 8 * (size_t)size) || (means && memcmp(m, want_m, 4 * (size_t)size))) {
                    printf("case %u: indexes or means differ\n", k);
                    failed++;
                }
            }
        }
        for (uint32_t i = 0; i < n_layers; i++)
            free((void *)layers[i].w), free((void *)layers[i].mult), free((void *)layers[i].bias);
        free(z), free(idx), free(want_idx), free(m), free(want_m), free(work);
    }
    printf("integer h_s vectors: %u cases (%u computed, %u refused), %u failed\n", n_cases, computed,
           n_cases - computed, failed);
    return failed ? 1 : 0;
}
