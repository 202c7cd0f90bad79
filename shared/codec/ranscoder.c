/* The edge's rANS coder in C: the bitstream CompressAI's RansEncoder.encode_with_indexes writes (rANS with a
 * 64-bit state, 32-bit words, 16-bit probabilities, escapes coded as 4-bit bypass chunks; docs/bitstream.md),
 * written and read here without CompressAI, for boards it has no wheel for (linux/arm64).
 *
 * A plain C library with no Python in it: shared/codec/rans.py loads it with ctypes, so the same file builds as
 * the package's extension (setup.py), with a bare `cc -shared` in an image, or with a cross compiler for aarch64
 * (scripts/check_arm64_coder.sh runs tests/c/rans_vectors.c against it under qemu). Every read is bounded: a
 * forged or truncated payload, a bad table index or table returns a negative error code, never reads past a buffer.
 */

#include <stddef.h>
#include <stdint.h>

#include "ranscoder.h"

#define PRECISION 16
#define BYPASS_BITS 4
#define MAX_BYPASS ((1u << BYPASS_BITS) - 1u)
#define STATE_LOW (1ull << 31)                                  /* the state lives in [2^31, 2^63) */
#define RENORM_SHIFT (63 - PRECISION)                           /* x >= 2^47 * freq: push a word first */
#define BYPASS_LIMIT ((STATE_LOW >> PRECISION) << 32 << (PRECISION - BYPASS_BITS)) /* 2^59 */
#define MAX_CHUNKS 16                                           /* a 64-bit raw value */

/* ---------------------------------------------------------------------------------------------- encoder */
typedef struct {
    uint8_t *out;     /* words go to out + 8 (the final state takes the first 8 bytes) */
    int64_t cap;      /* words that fit there */
    int64_t n;        /* words pushed (counted past cap too, so the caller learns the size it needs) */
} sink;

static inline void push(sink *s, uint32_t w) {
    if (s->n < s->cap) {
        uint8_t *p = s->out + 8 + 4 * s->n;
        p[0] = (uint8_t)w, p[1] = (uint8_t)(w >> 8), p[2] = (uint8_t)(w >> 16), p[3] = (uint8_t)(w >> 24);
    }
    s->n++;
}

static inline void put(uint64_t *x, sink *s, uint32_t start, uint32_t freq) {
    if ((*x >> RENORM_SHIFT) >= freq) {
        push(s, (uint32_t)*x);
        *x >>= 32;
    }
    *x = ((*x / freq) << PRECISION) + (*x % freq) + start;
}

static inline void put_bits(uint64_t *x, sink *s, uint32_t bits) {
    if (*x >= BYPASS_LIMIT) {
        push(s, (uint32_t)*x);
        *x >>= 32;
    }
    *x = (*x << BYPASS_BITS) | bits;
}

/* An escape's raw value, last coded first: its chunks most significant first, then the chunk count (runs of 15,
 * then the remainder) reversed, so that the decoder reads the count, then the chunks least significant first. */
static inline void put_raw(uint64_t *x, sink *s, uint64_t raw) {
    int n = 0;
    while (n < MAX_CHUNKS && (raw >> (BYPASS_BITS * n)))
        n++;
    for (int j = n - 1; j >= 0; j--)
        put_bits(x, s, (uint32_t)(raw >> (BYPASS_BITS * j)) & MAX_BYPASS);
    put_bits(x, s, (uint32_t)n % MAX_BYPASS);
    for (int j = 0; j < n / (int)MAX_BYPASS; j++)
        put_bits(x, s, MAX_BYPASS);
}

static inline int table_ok(const int32_t *lengths, int64_t width, int64_t t) {
    return lengths[t] >= 2 && lengths[t] <= width;
}

int64_t si_rans_encode(const int64_t *symbols, const int64_t *indexes, int64_t n, const int32_t *cdf, int64_t width,
                       const int32_t *lengths, const int32_t *offsets, int64_t n_tables, uint8_t *out, int64_t cap) {
    if (n < 0 || width < 2 || n_tables < 1 || cap < 8)
        return SI_RANS_EARGS;
    sink s = {out, (cap - 8) / 4, 0};
    uint64_t x = STATE_LOW;
    for (int64_t i = n - 1; i >= 0; i--) { /* rANS codes backwards so that the decoder reads forwards */
        const int64_t t = indexes[i];
        if (t < 0 || t >= n_tables)
            return SI_RANS_EINDEX;
        if (!table_ok(lengths, width, t))
            return SI_RANS_ETABLE;
        const int64_t sym = symbols[i];
        if (sym < INT32_MIN || sym > INT32_MAX)
            return SI_RANS_ESYMBOL;
        const int32_t *c = cdf + t * width;
        const int64_t max_value = lengths[t] - 2, v = sym - offsets[t];
        int64_t value = v;
        if (v < 0 || v >= max_value) { /* out of the table: the escape entry, then the raw value */
            put_raw(&x, &s, v < 0 ? (uint64_t)(-2 * v - 1) : (uint64_t)(2 * (v - max_value)));
            value = max_value;
        }
        const int64_t start = c[value], freq = c[value + 1] - start;
        if (freq <= 0 || start < 0 || start >= (1 << PRECISION))
            return SI_RANS_ETABLE;
        put(&x, &s, (uint32_t)start, (uint32_t)freq);
    }
    const int64_t total = 8 + 4 * s.n;
    if (total > cap)
        return total; /* the size needed: call again with a buffer that large */
    /* the words were pushed in coding order; the stream holds them in reading order, after the final state */
    for (int64_t a = 8, b = total - 4; a < b; a += 4, b -= 4)
        for (int k = 0; k < 4; k++) {
            uint8_t tmp = out[a + k];
            out[a + k] = out[b + k], out[b + k] = tmp;
        }
    for (int k = 0; k < 8; k++)
        out[k] = (uint8_t)(x >> (8 * k));
    return total;
}

/* ---------------------------------------------------------------------------------------------- decoder */
typedef struct {
    const uint8_t *data;
    int64_t len, pos;
} source;

static inline int pull(source *r, uint64_t *x) { /* x = (x << 32) | next word; 0 past the end */
    if (r->pos + 4 > r->len)
        return 0;
    const uint8_t *p = r->data + r->pos;
    *x = (*x << 32) | ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    r->pos += 4;
    return 1;
}

static inline int get_bits(uint64_t *x, source *r, uint32_t *bits) {
    *bits = (uint32_t)*x & MAX_BYPASS;
    *x >>= BYPASS_BITS;
    return *x >= STATE_LOW || pull(r, x);
}

int64_t si_rans_decode(const uint8_t *data, int64_t len, const int64_t *indexes, int64_t n, const int32_t *cdf,
                       int64_t width, const int32_t *lengths, const int32_t *offsets, int64_t n_tables,
                       int32_t *out) {
    if (n < 0 || width < 2 || n_tables < 1 || len < 0)
        return SI_RANS_EARGS;
    if (len < 8 || len % 4)
        return SI_RANS_ETRUNC;
    source r = {data, len, 0};
    uint64_t x = 0;
    pull(&r, &x);
    pull(&r, &x);
    x = (x >> 32) | (x << 32); /* the state's low word comes first */
    for (int64_t i = 0; i < n; i++) {
        const int64_t t = indexes[i];
        if (t < 0 || t >= n_tables)
            return SI_RANS_EINDEX;
        if (!table_ok(lengths, width, t))
            return SI_RANS_ETABLE;
        const int32_t *c = cdf + t * width;
        const uint32_t cum = (uint32_t)x & ((1u << PRECISION) - 1);
        /* the last s in [0, len - 2] with c[s] <= cum: CompressAI's linear search, as a binary one (tables rise) */
        int64_t lo = 0, hi = lengths[t] - 1;
        while (hi - lo > 1) {
            const int64_t mid = (lo + hi) / 2;
            if ((int64_t)c[mid] <= (int64_t)cum)
                lo = mid;
            else
                hi = mid;
        }
        const uint64_t start = (uint32_t)c[lo], freq = (uint32_t)(c[lo + 1] - c[lo]);
        x = freq * (x >> PRECISION) + (x & ((1u << PRECISION) - 1)) - start;
        if (x < STATE_LOW && !pull(&r, &x))
            return SI_RANS_ETRUNC;
        const int64_t max_value = lengths[t] - 2;
        int64_t value = lo;
        if (value == max_value) { /* an escape: the chunk count, then the chunks */
            uint32_t bits;
            int chunks = 0;
            do {
                if (!get_bits(&x, &r, &bits))
                    return SI_RANS_ETRUNC;
                chunks += (int)bits;
                if (chunks > MAX_CHUNKS)
                    return SI_RANS_EESCAPE;
            } while (bits == MAX_BYPASS);
            uint64_t raw = 0;
            for (int j = 0; j < chunks; j++) {
                if (!get_bits(&x, &r, &bits))
                    return SI_RANS_ETRUNC;
                raw |= (uint64_t)bits << (BYPASS_BITS * j);
            }
            if (raw >> 34) /* no int32 symbol codes a raw value this large */
                return SI_RANS_EESCAPE;
            value = (raw & 1) ? -(int64_t)(raw >> 1) - 1 : (int64_t)(raw >> 1) + max_value;
        }
        const int64_t sym = value + offsets[t];
        if (sym < INT32_MIN || sym > INT32_MAX)
            return SI_RANS_EESCAPE;
        out[i] = (int32_t)sym;
    }
    /* a stream decodes back to the encoder's initial state with every word read: anything else was forged */
    if (r.pos != r.len)
        return SI_RANS_ETRAIL;
    if (x != STATE_LOW)
        return SI_RANS_ESTATE;
    return 0;
}
