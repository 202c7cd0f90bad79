/* Checks ranscoder.c against test vectors written on another machine (scripts/rans_vectors.py, from CompressAI's
 * encoder on x86): no Python needed, so it runs under qemu for a target that has none (scripts/check_arm64_coder.sh).
 *
 *   rans_vectors VECTORS_FILE
 *
 * The file (little-endian): "SIRV", u32 version 1, u32 n_tables, u32 width, i32 cdf[n_tables * width],
 * i32 lengths[n_tables], i32 offsets[n_tables], u32 n_cases; then per case: u32 n, u32 encode (1: the symbols must
 * encode to the payload), i64 symbols[n], i64 indexes[n], u32 payload bytes, u8 payload[], i32 decode's return
 * code (0: it must give the symbols). Prints one line per failure and a summary; exit 0 when all pass.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../shared/codec/ranscoder.h"

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
    if (memcmp(magic, "SIRV", 4) || u32() != 1) {
        fprintf(stderr, "not a version 1 vectors file\n");
        return 2;
    }
    const uint32_t n_tables = u32(), width = u32();
    int32_t *cdf = alloc(sizeof(int32_t) * n_tables * width), *lengths = alloc(4 * n_tables),
            *offsets = alloc(4 * n_tables);
    read_or_die(cdf, 4, (size_t)n_tables * width);
    read_or_die(lengths, 4, n_tables);
    read_or_die(offsets, 4, n_tables);
    const uint32_t n_cases = u32();
    uint32_t failed = 0, encodes = 0, refusals = 0;
    for (uint32_t c = 0; c < n_cases; c++) {
        const uint32_t n = u32(), encode = u32();
        int64_t *sym = alloc(8 * (size_t)n), *idx = alloc(8 * (size_t)n);
        read_or_die(sym, 8, n);
        read_or_die(idx, 8, n);
        const uint32_t len = u32();
        uint8_t *payload = alloc(len);
        read_or_die(payload, 1, len);
        int32_t want_rc;
        read_or_die(&want_rc, 4, 1);
        if (encode) {
            encodes++;
            const int64_t cap = 8 + 4 * (int64_t)n + 256;
            uint8_t *out = alloc((size_t)cap);
            int64_t got = si_rans_encode(sym, idx, n, cdf, width, lengths, offsets, n_tables, out, cap);
            if (got > cap) { /* it said the size it needs */
                free(out);
                out = alloc((size_t)got);
                got = si_rans_encode(sym, idx, n, cdf, width, lengths, offsets, n_tables, out, got);
            }
            if (got != (int64_t)len || memcmp(out, payload, len)) {
                printf("case %u: encoded %lld bytes, not the %u expected (or other bytes)\n", c, (long long)got, len);
                failed++;
            }
            free(out);
        }
        int32_t *dec = alloc(4 * (size_t)n);
        const int64_t rc = si_rans_decode(payload, len, idx, n, cdf, width, lengths, offsets, n_tables, dec);
        refusals += rc != 0;
        if (rc != want_rc) {
            printf("case %u: decode returned %lld, expected %d\n", c, (long long)rc, want_rc);
            failed++;
        } else if (rc == 0) {
            for (uint32_t i = 0; i < n; i++)
                if (dec[i] != sym[i]) {
                    printf("case %u: symbol %u decoded as %d, expected %lld\n", c, i, dec[i], (long long)sym[i]);
                    failed++;
                    break;
                }
        }
        free(sym), free(idx), free(payload), free(dec);
    }
    printf("%u cases (%u encoded and compared byte for byte, %u refusals checked): %u failed\n", n_cases, encodes,
           refusals, failed);
    fclose(f);
    return failed ? 1 : 0;
}
