/* The integer hyper-decoder h_s in C: the same integer arithmetic as IntHyperSynthesis.exact (integer.py, the
 * cloud's) and int_hyper_synthesis (integer_numpy.py, the edge's fallback), so the three give identical table
 * indexes and means (tests/test_hyperdec.py, every rung of every embedded bundle, and random layers).
 *
 * Exactness does not depend on the summation: every sum is an integer whose magnitude is bounded before anything
 * is computed (|acc| <= sum|w| * max|x|, and |mult * acc + bias + 2**23| < 2**53: the same bound as the float
 * sums of the other two paths, checked here per output channel, SI_HS_ERANGE otherwise). Where the bound is below
 * 2**31 and the inputs fit 16 bits (every exported layer: 8-bit weights, activations in [0, 255], z clipped to
 * +-127) the sums run as int16 products in int32 accumulators, which compilers vectorise (pmaddwd on x86, smlal on
 * arm64); otherwise in int64, directly. The requantisation is int64 with a floor shift written without shifting a
 * negative number (implementation-defined in C99).
 *
 * Plain C99 and no Python: shared/codec/rans_compiled.py loads it with ctypes from the same library as the rANS
 * coder. Build with -O3 (setup.py does): the sums need the vectoriser. On x86_64 with glibc the sums also get an
 * AVX2 clone, picked at load time (the baseline build stays SSE2).
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hyperdec.h"

#define LIMIT ((uint64_t)1 << SI_HS_EXACT_BITS)
#define ROUND ((int64_t)1 << (SI_HS_SHIFT - 1))
#define MAX_ELEMS ((int64_t)1 << 40) /* any buffer larger than this is a forged shape, not an h_s */

#if defined(__has_attribute) && defined(__x86_64__) && defined(__GLIBC__) && !defined(SI_HS_NO_CLONES)
#if __has_attribute(target_clones)
#define SI_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef SI_CLONES
#define SI_CLONES
#endif

static uint64_t mag(int64_t v) { return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; }

/* floor(v / 2**s) for |v| < 2**62 without shifting a negative number (implementation-defined in C99); every value
 * here is below 2**53 (in_range, the clip bounds) */
#define OFFSET ((int64_t)1 << 62)
static int64_t floor_shift(int64_t v, int s) { return ((v + OFFSET) >> s) - (OFFSET >> s); }

static int64_t requant(int64_t acc, const si_hs_layer *L, int64_t o) {
    int64_t v = floor_shift(acc * L->mult[o] + L->bias[o] + ROUND, SI_HS_SHIFT);
    if (v < L->lo)
        v = L->lo;
    if (v > L->hi)
        v = L->hi;
    return v;
}

/* 1 when every output channel's sums stay in the exact range for inputs |x| <= in_max; *acc_max: the largest
 * bound on |sum(w * x)| over the channels. Written with divisions so that nothing here can overflow. */
static int in_range(const si_hs_layer *L, uint64_t in_max, uint64_t *acc_max) {
    const int64_t kk = L->c_in * L->k * L->k;
    *acc_max = 0;
    for (int64_t o = 0; o < L->c_out; o++) {
        uint64_t l1 = 0, acc = 0;
        for (int64_t i = 0; i < kk; i++)
            l1 += mag(L->w[o * kk + i]);
        if (l1) {
            if (in_max > (LIMIT - 1) / l1)
                return 0;
            acc = l1 * in_max;
        }
        const uint64_t b = mag(L->bias[o]);
        if (b > LIMIT - 1 - ROUND)
            return 0;
        if (acc && mag(L->mult[o]) > (LIMIT - 1 - ROUND - b) / acc)
            return 0;
        if (acc > *acc_max)
            *acc_max = acc;
    }
    return 1;
}

/* Sums of one layer, 16-bit inputs: cols (pixels, kk) holds each pixel's neighbourhood, wt (c_out, kk) the weights
 * in the same order; acc (pixels, c_out). Blocks of two pixels x four output channels: each load feeds several
 * multiply-adds, and the vectoriser keeps the eight sums in registers. */
static inline void sums16(const int16_t *restrict cols, const int16_t *restrict wt, int64_t pixels, int64_t kk,
                          int64_t c_out, int32_t *restrict acc) {
    int64_t p = 0;
    for (; p + 2 <= pixels; p += 2) {
        const int16_t *xa = cols + p * kk, *xb = xa + kk;
        int32_t *out = acc + p * c_out;
        int64_t o = 0;
        for (; o + 4 <= c_out; o += 4) {
            const int16_t *w0 = wt + o * kk, *w1 = w0 + kk, *w2 = w1 + kk, *w3 = w2 + kk;
            int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
            for (int64_t i = 0; i < kk; i++) {
                const int32_t u = xa[i], v = xb[i];
                a0 += u * w0[i], a1 += u * w1[i], a2 += u * w2[i], a3 += u * w3[i];
                b0 += v * w0[i], b1 += v * w1[i], b2 += v * w2[i], b3 += v * w3[i];
            }
            out[o] = a0, out[o + 1] = a1, out[o + 2] = a2, out[o + 3] = a3;
            out[c_out + o] = b0, out[c_out + o + 1] = b1, out[c_out + o + 2] = b2, out[c_out + o + 3] = b3;
        }
        for (; o < c_out; o++) {
            const int16_t *w0 = wt + o * kk;
            int32_t a0 = 0, b0 = 0;
            for (int64_t i = 0; i < kk; i++)
                a0 += (int32_t)xa[i] * w0[i], b0 += (int32_t)xb[i] * w0[i];
            out[o] = a0, out[c_out + o] = b0;
        }
    }
    for (; p < pixels; p++) /* an odd last pixel */
        for (int64_t o = 0; o < c_out; o++) {
            const int16_t *xa = cols + p * kk, *w0 = wt + o * kk;
            int32_t a0 = 0;
            for (int64_t i = 0; i < kk; i++)
                a0 += (int32_t)xa[i] * w0[i];
            acc[p * c_out + o] = a0;
        }
}

/* One pixel's requantised outputs, every channel (a loop the compiler vectorises). */
static inline void requant_row(const int32_t *restrict s, const si_hs_layer *L, int64_t *restrict row) {
    const int64_t *restrict mult = L->mult, *restrict bias = L->bias, lo = L->lo, hi = L->hi;
    for (int64_t o = 0; o < L->c_out; o++) {
        int64_t v = floor_shift((int64_t)s[o] * mult[o] + bias[o] + ROUND, SI_HS_SHIFT);
        v = v < lo ? lo : v;
        row[o] = v > hi ? hi : v;
    }
}

/* work buffers, carved from the caller's one (sized for the largest layer: no allocation per call) */
typedef struct {
    int16_t *a, *cols, *wt;
    int32_t *acc;
    int64_t *dst; /* per output channel, where its (0, 0) lands after the pixel shuffle */
    int64_t *row;
} buffers;

/* The output value of channel o at (y, x) goes, after the pixel shuffle, to channel o / up**2 at
 * (y * up + i, x * up + j), (i, j) = divmod(o % up**2, up) (torch's pixel_shuffle): dst[o] + (y * w * up + x) * up. */
static void shuffle_offsets(const si_hs_layer *L, int64_t h, int64_t w, int64_t *dst) {
    const int64_t u = L->up;
    for (int64_t o = 0; o < L->c_out; o++)
        dst[o] = ((o / (u * u)) * h * u + (o % (u * u)) / u) * (w * u) + (o % (u * u)) % u;
}

/* (the clone attribute here: the sums and the requantisation inlined into it get each target's vector code) */
SI_CLONES static void layer16(const si_hs_layer *L, const int64_t *x, int64_t h, int64_t w, int64_t *out, buffers *b) {
    const int64_t c = L->c_in, k = L->k, p = k / 2, wp = w + k - 1, run = k * c, kk = k * run;
    /* the input zero-padded, channels last: a pixel's kernel row is one run of k * c values */
    memset(b->a, 0, sizeof(int16_t) * (size_t)((h + k - 1) * wp * c));
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++)
                b->a[((y + p) * wp + xx + p) * c + ci] = (int16_t)x[(ci * h + y) * w + xx];
    const int16_t *cols = b->a; /* 1x1: the input is its own neighbourhoods */
    if (k > 1) {
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++)
                for (int64_t ky = 0; ky < k; ky++)
                    memcpy(b->cols + (y * w + xx) * kk + ky * run, b->a + ((y + ky) * wp + xx) * c,
                           sizeof(int16_t) * (size_t)run);
        cols = b->cols;
    }
    for (int64_t o = 0; o < L->c_out; o++) /* (c_out, c, k, k) -> (c_out, k, k, c), the order of cols */
        for (int64_t ci = 0; ci < c; ci++)
            for (int64_t ky = 0; ky < k; ky++)
                for (int64_t kx = 0; kx < k; kx++)
                    b->wt[o * kk + ky * run + kx * c + ci] = L->w[((o * c + ci) * k + ky) * k + kx];
    sums16(cols, b->wt, h * w, kk, L->c_out, b->acc);
    shuffle_offsets(L, h, w, b->dst);
    for (int64_t y = 0; y < h; y++)
        for (int64_t xx = 0; xx < w; xx++) {
            requant_row(b->acc + (y * w + xx) * L->c_out, L, b->row);
            int64_t *at = out + (y * w * L->up + xx) * L->up;
            for (int64_t o = 0; o < L->c_out; o++)
                at[b->dst[o]] = b->row[o];
        }
}

/* any layer in range: int64 sums, directly (no exported layer needs it; it keeps forged or future ones exact) */
static void layer64(const si_hs_layer *L, const int64_t *x, int64_t h, int64_t w, int64_t *out, buffers *b) {
    const int64_t c = L->c_in, k = L->k, p = k / 2;
    shuffle_offsets(L, h, w, b->dst);
    for (int64_t o = 0; o < L->c_out; o++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++) {
                int64_t s = 0;
                for (int64_t ci = 0; ci < c; ci++)
                    for (int64_t ky = 0; ky < k; ky++) {
                        const int64_t yy = y + ky - p;
                        if (yy < 0 || yy >= h)
                            continue;
                        for (int64_t kx = 0; kx < k; kx++) {
                            const int64_t xs = xx + kx - p;
                            if (xs >= 0 && xs < w)
                                s += (int64_t)L->w[((o * c + ci) * k + ky) * k + kx] * x[(ci * h + yy) * w + xs];
                        }
                    }
                out[b->dst[o] + (y * w * L->up + xx) * L->up] = requant(s, L, o);
            }
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int64_t si_int_hyper(const si_hs_layer *layers, int64_t n_layers, const int64_t *z, int64_t n, int64_t c, int64_t h,
                     int64_t w, int64_t in_max, int64_t levels, int64_t means, int64_t y_h, int64_t y_w, int64_t *idx,
                     float *means_out, void *work, int64_t work_size) {
    if (n_layers < 1 || n_layers > SI_HS_MAX_LAYERS || n < 0 || c < 1 || h < 1 || w < 1 || h > MAX_ELEMS / w ||
        c > MAX_ELEMS / (h * w) || in_max < 0 || levels < 1 || y_h < 0 || y_w < 0)
        return SI_HS_EARGS;
    /* walk the shapes first: they must chain, and fix every buffer's size */
    int64_t cc = c, hh = h, ww = w, big = c * h * w, pad16 = 0, cols16 = 0, wt16 = 0, acc32 = 0, c_max = 0;
    for (int64_t i = 0; i < n_layers; i++) {
        const si_hs_layer *L = layers + i;
        const int64_t u = L->up;
        if (L->c_in != cc || L->c_out < 1 || L->k < 1 || L->k % 2 == 0 || L->k > 63 || u < 1 || u > 64 ||
            L->c_out % (u * u) || L->c_out > MAX_ELEMS / (hh * ww) || L->c_out > MAX_ELEMS / (cc * L->k * L->k) ||
            hh > MAX_ELEMS / u / u / ww || (L->lo != INT64_MIN && mag(L->lo) >= LIMIT) ||
            (L->hi != INT64_MAX && mag(L->hi) >= LIMIT))
            return SI_HS_EARGS;
        pad16 = max64(pad16, (hh + L->k - 1) * (ww + L->k - 1) * cc);
        wt16 = max64(wt16, L->c_out * cc * L->k * L->k);
        cols16 = max64(cols16, hh * ww * cc * L->k * L->k);
        acc32 = max64(acc32, hh * ww * L->c_out);
        c_max = max64(c_max, L->c_out);
        big = max64(big, hh * ww * L->c_out);
        cc = L->c_out / (u * u), hh *= u, ww *= u;
    }
    if ((means && cc % 2) || y_h > hh || y_w > ww)
        return SI_HS_EARGS;
    /* then the ranges, with each layer's input bound: z clipped to in_max, then each layer's clip */
    int fast[SI_HS_MAX_LAYERS];
    uint64_t bound = (uint64_t)in_max;
    for (int64_t i = 0; i < n_layers; i++) {
        const si_hs_layer *L = layers + i;
        uint64_t acc_max;
        if (!in_range(L, bound, &acc_max))
            return SI_HS_ERANGE;
        fast[i] = bound <= INT16_MAX && acc_max <= INT32_MAX;
        const uint64_t lo = mag(L->lo), hi = mag(L->hi);
        bound = lo > hi ? lo : hi;
    }
    /* the caller's work buffer, cut into 64-byte aligned pieces */
    const size_t sizes[8] = {8 * (size_t)big, 8 * (size_t)big, 2 * (size_t)pad16, 2 * (size_t)cols16,
                             2 * (size_t)wt16, 4 * (size_t)acc32, 8 * (size_t)c_max, 8 * (size_t)c_max};
    size_t need = 64;
    for (int i = 0; i < 8; i++)
        need += (sizes[i] + 63) / 64 * 64;
    if (!work || work_size < 0 || (uint64_t)work_size < need)
        return (int64_t)need;
    void *piece[8];
    uint8_t *at = (uint8_t *)work + (64 - (uintptr_t)work % 64) % 64;
    for (int i = 0; i < 8; i++)
        piece[i] = at, at += (sizes[i] + 63) / 64 * 64;
    int64_t *cur = piece[0], *nxt = piece[1];
    buffers b = {piece[2], piece[3], piece[4], piece[5], piece[6], piece[7]};
    const int64_t c_t = means ? cc / 2 : cc, plane = y_h * y_w;
    for (int64_t img = 0; img < n; img++) {
        for (int64_t j = 0; j < c * h * w; j++) {
            const int64_t v = z[img * c * h * w + j];
            cur[j] = v < -in_max ? -in_max : v > in_max ? in_max : v;
        }
        hh = h, ww = w;
        for (int64_t i = 0; i < n_layers; i++) {
            const si_hs_layer *L = layers + i;
            if (fast[i])
                layer16(L, cur, hh, ww, nxt, &b);
            else
                layer64(L, cur, hh, ww, nxt, &b);
            int64_t *t = cur;
            cur = nxt, nxt = t, hh *= L->up, ww *= L->up;
        }
        /* cropped to y; the index logits to table indexes, the means to floats */
        for (int64_t ch = 0; ch < cc; ch++)
            for (int64_t y = 0; y < y_h; y++)
                for (int64_t x = 0; x < y_w; x++) {
                    const int64_t v = cur[(ch * hh + y) * ww + x];
                    if (ch < c_t) {
                        int64_t t = floor_shift(v + (1 << (SI_HS_OUT_FRAC - 1)), SI_HS_OUT_FRAC);
                        t = t < 0 ? 0 : t > levels - 1 ? levels - 1 : t;
                        idx[(img * c_t + ch) * plane + y * y_w + x] = t;
                    } else {
                        means_out[(img * c_t + ch - c_t) * plane + y * y_w + x] = (float)v / (float)(1 << SI_HS_OUT_FRAC);
                    }
                }
    }
    return 0;
}
