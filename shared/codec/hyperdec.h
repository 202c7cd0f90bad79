/* The integer hyper-decoder h_s (hyperdec.c): z symbols -> the y tables' indexes and means, exactly as
 * shared/codec/integer.py (the cloud's, torch) and integer_numpy.py (the edge's fallback, numpy) compute them. */
#ifndef SPLITINFER_HYPERDEC_H
#define SPLITINFER_HYPERDEC_H

#include <stdint.h>

/* error codes (negative returns); shared/codec/integer_numpy.py maps them to messages */
#define SI_HS_EARGS -1  /* shapes that do not chain (channels, pixel shuffle, the means split, the crop), levels < 1 */
#define SI_HS_ERANGE -2 /* a layer whose sums could reach 2**53 (where float sums stop being exact): not exported */

#define SI_HS_SHIFT 24        /* requantisation: multipliers carry 24 fractional bits (integer_numpy.SHIFT) */
#define SI_HS_OUT_FRAC 8      /* index logits and means on a grid of 2**-8 (integer_numpy.OUT_FRAC) */
#define SI_HS_EXACT_BITS 53   /* every sum and requantised value stays below 2**53 (integer_numpy.EXACT_LIMIT) */
#define SI_HS_MAX_LAYERS 64   /* more is not an h_s (integer_numpy.MAX_LAYERS) */

/* One exported IntConv2d: out = clip(floor((mult * sum(w * x) + bias + 2**23) / 2**24), lo, hi), then a pixel
 * shuffle by `up` (stride 1, zero padding k / 2). */
typedef struct {
    const int8_t *w;       /* (c_out, c_in, k, k) */
    const int64_t *mult;   /* (c_out,) */
    const int64_t *bias;   /* (c_out,) */
    int64_t c_out, c_in, k;
    int64_t lo, hi;        /* the output clip in integer units (INT64_MIN / INT64_MAX: none) */
    int64_t up;            /* pixel-shuffle factor after the layer, 1: none */
} si_hs_layer;

/* z symbols (n, c, h, w), clipped to [-in_max, in_max], through the layers; the last layer's output cropped to
 * (y_h, y_w) and split (means: its first half of channels are index logits t, the second half means m):
 * idx = clip(floor((t + 128) / 256), 0, levels - 1) as (n, c_t, y_h, y_w) int64, means = m / 256 as float32
 * (means_out may be NULL when means == 0). work: a buffer of work_size bytes it may use (no allocation here).
 * Returns 0; or, when work is NULL or smaller than it needs, that size in bytes (nothing computed: call again with
 * a buffer that large); or a negative error code (outputs then undefined). */
int64_t si_int_hyper(const si_hs_layer *layers, int64_t n_layers, const int64_t *z, int64_t n, int64_t c, int64_t h,
                     int64_t w, int64_t in_max, int64_t levels, int64_t means, int64_t y_h, int64_t y_w, int64_t *idx,
                     float *means_out, void *work, int64_t work_size);

#endif
