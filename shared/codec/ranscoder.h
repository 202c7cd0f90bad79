/* The edge's rANS coder (ranscoder.c): CompressAI's encode_with_indexes bitstream, written and read in C. */
#ifndef SPLITINFER_RANSCODER_H
#define SPLITINFER_RANSCODER_H

#include <stdint.h>

/* error codes (negative returns); shared/codec/rans.py maps them to messages */
#define SI_RANS_EARGS -1   /* a count or size is negative, or a buffer too small for the final state */
#define SI_RANS_EINDEX -2  /* a table index outside [0, n_tables) */
#define SI_RANS_ETABLE -3  /* a table whose length is outside [2, width], or an entry of zero frequency */
#define SI_RANS_ESYMBOL -4 /* a symbol outside int32 (CompressAI's coder codes int32) */
#define SI_RANS_ETRUNC -5  /* the payload ends before its symbols do (or is not whole 32-bit words) */
#define SI_RANS_EESCAPE -6 /* an escape's raw value longer than any int32 symbol gives */
#define SI_RANS_ETRAIL -7  /* words left after the last symbol */
#define SI_RANS_ESTATE -8  /* the final state is not the encoder's initial one */

/* Encode n symbols, symbol i with table indexes[i] (cdf row t: cdf[t * width .. t * width + lengths[t]), its first
 * symbol offsets[t]) into out (cap bytes). Returns the payload's size in bytes; if that is more than cap, nothing
 * usable was written: call again with a buffer of that size. Negative: an error code. */
int64_t si_rans_encode(const int64_t *symbols, const int64_t *indexes, int64_t n, const int32_t *cdf, int64_t width,
                       const int32_t *lengths, const int32_t *offsets, int64_t n_tables, uint8_t *out, int64_t cap);

/* Decode n symbols from data (len bytes) into out. Returns 0, or a negative error code (out partly written). */
int64_t si_rans_decode(const uint8_t *data, int64_t len, const int64_t *indexes, int64_t n, const int32_t *cdf,
                       int64_t width, const int32_t *lengths, const int32_t *offsets, int64_t n_tables,
                       int32_t *out);

#endif
