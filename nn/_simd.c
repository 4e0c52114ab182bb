/* Optional AVX-512 readout of the fused engine (nn/_simd.py loads it; nn/fused_columns.py calls it).
 *
 * cim_column_codes: the codes of one column's noisy readings, inverse-CDF draws through the column's table
 * (nn._simd.column_tables). Its first 8 x ``rows`` (64 or 128) uint16 are cut entries (nn.fused_noise)
 * transposed, ``lanes``: lane j < 7 of row r the cut floor(2^15 P(code < base + j)) of partial-sum index r,
 * lane 7 ``base``; rows 0-31 are held in registers: 32 readings at a time, each lane is looked up for all of
 * them by one permute (vpermw over 32 entries; where one of the 32 reads rows 32-63, a two-register vpermi2w
 * with them loaded from memory, and rows 64-127 by two more), so no reading gathers from memory. (Most partial
 * sums of a 128-row array are small: in the benchmark's VGG-8, 1e-5-3e-4 of readings are 32 or more; holding
 * 64 rows in 16 registers spilled some to the stack, and loading only half a table a call halves its traffic.)
 * Reading i: r = clamp(s[i] - s_lo, 0, n_wide - 1) (int16 partial sums, s_lo and n_wide - 1 within int16: the
 * engine's psums are computed in int16 only where a layer's range fits), u = bits 16 * lane + 1 .. 16 * lane + 15
 * of words[i]; code = base + #{1 <= j <= 5 : u >= cut_j} through lane
 * row min(r, rows - 1), as nn.fused_columns._column_codes computes it. A reading that window cannot decide (u <
 * cut_0, u >= cut_6), or whose r reaches ``limit`` (rows the lanes do not hold), is looked up in the ``n_wide``
 * wide rows that follow (16 each: cuts 0-12 of a window from five codes below the noise-free one, then its
 * base), one reading at a time: with a chip's offsets thresholds bunch, and ~0.1 % of readings crossed three
 * of them, each then an exact walk of ~200 ns. Readings still undecided (u equal to a cut, or beyond the wide
 * window) are flagged for that walk. A decided reading's code is the exact draw's, whatever the window: the
 * same codes bit for bit (tested).
 *
 * cim_column_add: a column's weighted readings added into its accumulators, in numba's order and rounding.
 *
 * Built by ngspice_setup.sh: cc -O3 -ffp-contract=off -shared -fPIC -o nn/libcimsimd.so nn/_simd.c (any CPU; the
 * AVX-512 code runs only where cim_simd_level() says the CPU has it). The AVX-512 functions also carry
 * optimize("fp-contract=off"): a multiply and an add fused into one FMA would change the sums' last bits.
 */
#include <stdint.h>

#define CIM_SIMD_ABI 6
#define WIDE 16      /* nn.fused_noise.WIDE: uint16 per wide row */
#define WIDE_CUTS 13 /* its cuts (a window of 12 codes), then base */

int64_t cim_simd_abi(void) { return CIM_SIMD_ABI; }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), optimize("fp-contract=off")))

int64_t cim_simd_level(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

static inline AVX512 __mmask8 first(int64_t left)
{
    return left >= 8 ? (__mmask8)0xFF : (left <= 0 ? (__mmask8)0 : (__mmask8)((1u << left) - 1u));
}

/* 32 readings' 16-bit (r, u) from 32 int16 partial sums and 4 x 8 random words (``valid``: the readings < n). */
static inline AVX512 void load32(const int16_t *s, const uint64_t *words, __mmask32 valid, __m512i lo, __m512i top,
                                 __m128i sh, __m512i *r, __m512i *u)
{
    __m128i uu[4];
    for (int q = 0; q < 4; q++)
        uu[q] = _mm512_cvtepi64_epi16(_mm512_srl_epi64(_mm512_maskz_loadu_epi64((__mmask8)(valid >> (8 * q)),
                                                                                words + 8 * q), sh));
    __m512i sv = _mm512_maskz_loadu_epi16(valid, s);
    *r = _mm512_min_epi16(_mm512_max_epi16(_mm512_subs_epi16(sv, lo), _mm512_setzero_si512()), top);
    *u = _mm512_and_si512(_mm512_inserti64x2(_mm512_inserti64x2(_mm512_inserti64x2(_mm512_castsi128_si512(uu[0]),
                                                                                   uu[1], 1), uu[2], 2), uu[3], 3),
                          _mm512_set1_epi16(0x7FFF));
}

/* The code of reading (r, u) from its wide row, or -1 where the row cannot decide it either. */
static inline int64_t wide_code(const uint16_t *row, uint16_t u)
{
    if (u < row[0] || u >= row[WIDE_CUTS - 1])
        return -1;
    int64_t code = row[WIDE_CUTS];
    for (int j = 0; j < WIDE_CUTS; j++) {
        if (u == row[j])
            return -1;
        code += (j >= 1 && j <= WIDE_CUTS - 2 && u >= row[j]);
    }
    return code;
}

/* Lane j of the cut entries for 32 readings' row indices ``rl``: rows 0-31 from the registers ``a`` by one
 * permute; where some reading needs rows 32-63 (``mid``), by a two-register permute with them loaded from memory;
 * rows 64-127 (a 128-row table, only where some reading needs them: ``hi``) by two more permutes from memory. */
static inline AVX512 __m512i lane_of(const __m512i *a, const uint16_t *table, int64_t rows, int j, __m512i rl,
                                     int mid, __mmask32 hi)
{
    if (!mid)
        return _mm512_permutexvar_epi16(rl, a[j]);
    const uint16_t *p = table + rows * j;
    __m512i v = _mm512_permutex2var_epi16(a[j], rl, _mm512_loadu_si512((const void *)(p + 32)));
    if (hi) {
        __m512i w = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)(p + 64)), rl,
                                              _mm512_loadu_si512((const void *)(p + 96)));
        v = _mm512_mask_blend_epi16(hi, v, w);
    }
    return v;
}

AVX512 int64_t cim_column_codes(const int16_t *s, const uint64_t *words, int64_t lane, const uint16_t *table,
                                int64_t s_lo, int64_t rows, int64_t n_wide, int64_t limit, int64_t n, uint16_t *code,
                                uint8_t *slow)
{
    __m512i a[8];
    for (int j = 0; j < 8; j++)
        a[j] = _mm512_loadu_si512((const void *)(table + rows * j));
    const uint16_t *wide = table + 8 * rows;
    const __m512i lo = _mm512_set1_epi16((short)s_lo), top = _mm512_set1_epi16((short)(n_wide - 1));
    const __m512i one = _mm512_set1_epi16(1);
    const __m512i last = _mm512_set1_epi16((short)(rows - 1)), limit16 = _mm512_set1_epi16((short)limit);
    const __m512i thirty_two = _mm512_set1_epi16(32), sixty_four = _mm512_set1_epi16(64);
    const __m128i sh = _mm_cvtsi64_si128(16 * lane + 1);
    uint64_t any = 0;
    for (int64_t i0 = 0; i0 < n; i0 += 32) {
        int64_t left = n - i0;
        __mmask32 valid = left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1u);
        __m512i r, u;
        load32(s + i0, words + i0, valid, lo, top, sh, &r, &u);
        __m512i rl = _mm512_min_epu16(r, last);
        int mid = _mm512_cmpge_epu16_mask(rl, thirty_two) != 0;
        __mmask32 hi = rows > 64 ? _mm512_cmpge_epu16_mask(rl, sixty_four) : 0;
        __m512i c = lane_of(a, table, rows, 7, rl, mid, hi);
        __m512i cut = lane_of(a, table, rows, 0, rl, mid, hi);
        __mmask32 bad = _mm512_cmplt_epu16_mask(u, cut) | _mm512_cmpeq_epi16_mask(u, cut)
                        | _mm512_cmpge_epu16_mask(r, limit16);
        for (int j = 1; j < 6; j++) {
            cut = lane_of(a, table, rows, j, rl, mid, hi);
            c = _mm512_mask_add_epi16(c, _mm512_cmpge_epu16_mask(u, cut), c, one);
            bad |= _mm512_cmpeq_epi16_mask(u, cut);
        }
        cut = lane_of(a, table, rows, 6, rl, mid, hi);
        bad |= _mm512_cmpge_epu16_mask(u, cut);
        bad &= valid;
        _mm512_mask_storeu_epi16(code + i0, valid, c);
        if (bad) {  /* the wide rows decide what they can */
            uint16_t rr[32], uu[32];
            _mm512_storeu_si512((void *)rr, r);
            _mm512_storeu_si512((void *)uu, u);
            for (__mmask32 m = bad; m; m &= m - 1) {
                int q = __builtin_ctz(m);
                int64_t k = wide_code(wide + WIDE * rr[q], uu[q]);
                if (k >= 0) {
                    code[i0 + q] = (uint16_t)k;
                    bad &= ~((__mmask32)1 << q);
                }
            }
        }
        any |= bad;
        _mm256_mask_storeu_epi8(slow + i0, valid, _mm256_movm_epi8(bad));
    }
    return any != 0;
}

/* acc[mi] += (bw[p] * lev[code[p * nb + mi]]) * w for p = 0 .. planes - 1 in this order, mi < nb: a column's
 * weighted readings added into its accumulators (plane-major readings; multiply, multiply, add, each rounded,
 * as numba's loop does them: no FMA). Levels up to 32 are looked up in registers, more gathered. */
AVX512 void cim_column_add(const uint16_t *code, int64_t nb, int64_t planes, const double *bw, const double *lev,
                           int64_t n_lev, double w, double *acc)
{
    __m512d l[4];
    for (int q = 0; q < 4; q++)
        l[q] = _mm512_maskz_loadu_pd(first(n_lev - 8 * q), lev + 8 * q);
    const __m512d wv = _mm512_set1_pd(w);
    const __m512i sixteen = _mm512_set1_epi64(16);
    for (int64_t m0 = 0; m0 < nb; m0 += 8) {
        __mmask8 m = first(nb - m0);
        __m512d a = _mm512_maskz_loadu_pd(m, acc + m0);
        for (int64_t p = 0; p < planes; p++) {
            __m512i idx = _mm512_cvtepu16_epi64(_mm_maskz_loadu_epi16(m, code + p * nb + m0));
            __m512d v;
            if (n_lev <= 32) {
                __mmask8 high = _mm512_cmpge_epi64_mask(idx, sixteen);
                v = _mm512_mask_blend_pd(high, _mm512_permutex2var_pd(l[0], idx, l[1]),
                                         _mm512_permutex2var_pd(l[2], idx, l[3]));
            } else {
                v = _mm512_mask_i64gather_pd(_mm512_setzero_pd(), m, idx, lev, 8);
            }
            a = _mm512_add_pd(a, _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(bw[p]), v), wv));
        }
        _mm512_mask_storeu_pd(acc + m0, m, a);
    }
}

#else

int64_t cim_simd_level(void) { return 0; }

#endif
