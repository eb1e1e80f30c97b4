// The AVX2 lanes of the CPU oscillation fake-quant loops: 8 elements per step, each lane the scalar math of
// qkernels/oscillation_fake_quant_math.h operation for operation (the same float32 roundings, separate mul and add,
// the same compares with the same NaN outcomes, the same int8 truncation), so both builds give the same bits.
// Included only by oscillation_fake_quant_impl.h in the AVX2 build (QK_OSCILLATION_AVX2; GCC defines no __AVX2__
// under `#pragma GCC target`). Per-ISA include, as element_io.h.
#pragma once

#include <immintrin.h>

#include "element_io.h"  // QK_CPU_ISA

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

// Element loads widened to float exactly (F16C widens every binary16, subnormals included); stores narrowed with
// the scalar from_float, whose NaN canonicalisation the conversion instructions do not share.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const BFloat16* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
inline __m256 load8(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
template <typename T>
inline void store8(T* p, __m256 v) {
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  for (int j = 0; j < 8; ++j) p[j] = from_float<T>(b[j]);
}

// 8 int8 (or bool) bytes to / from int32 lanes. The store keeps each lane's low byte, as static_cast<int8_t> of
// an int32 does: one byte shuffle per 128-bit half and one dword permute (fewer instructions than masked packs).
inline __m256i load8_i8(const void* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(p)));
}
inline void store8_i8(void* p, __m256i v) {
  const __m256i bytes = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                -1, -1, -1, -1));
  const __m256i packed = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
  _mm_storel_epi64(static_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

inline __m256 as_ps(__m256i v) { return _mm256_castsi256_ps(v); }
inline __m256i as_si(__m256 v) { return _mm256_castps_si256(v); }
inline __m256i flag8(bool b) { return _mm256_set1_epi32(b ? -1 : 0); }

// round_half_even (fake_quant_math.h): the 2^23 trick with the same zero signs.
inline __m256 rne8(__m256 v) {
  const __m256 sign = _mm256_set1_ps(-0.0f), two23 = _mm256_set1_ps(8388608.0f);
  const __m256 m = _mm256_or_ps(_mm256_and_ps(v, sign), two23);
  const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, m), m);
  return _mm256_blendv_ps(v, r, _mm256_cmp_ps(_mm256_andnot_ps(sign, v), two23, _CMP_LT_OQ));
}

// oscillation_int8 as int32 lanes: NaN -> 0, else truncated.
inline __m256i int8_of(__m256 v) { return _mm256_cvttps_epi32(_mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q))); }

// The call's flags as lane masks and broadcast constants.
struct Flags8 {
  __m256i started_prev, started_ema, tracking, freezing, use_ema, ema_x_update;
  __m256 threshold, m, cm;
  explicit Flags8(const OscillationFlags& f)
      : started_prev(flag8(f.started_prev)),
        started_ema(flag8(f.started_ema)),
        tracking(flag8(f.tracking)),
        freezing(flag8(f.freezing)),
        use_ema(flag8(f.use_ema_x_int)),
        ema_x_update(flag8(f.freezing && f.use_ema_x_int)),
        threshold(_mm256_set1_ps(f.threshold)),
        m(_mm256_set1_ps(f.m)),
        cm(_mm256_set1_ps(f.cm)) {}
};

// The forward step (oscillation_step, oscillation_output) of elements [0, n / 8 * 8) of a run from offset e;
// kRow: element k has quantizer q0 + k, else all have q0. Returns the oscillations counted: per lane in int32
// (subtracting the all-ones osc masks, off the critical path of a movemask and popcount per step), added into the
// int64 count every kCountSteps steps, before a lane could overflow.
template <typename T, bool kGrad, bool kRow>
int64_t step_run8(const OscillationForwardParams& p, const OscillationFlags& flags, int64_t e, int64_t n,
                  int64_t q0) {
  const T* w = static_cast<const T*>(p.w) + e;
  T* out = static_cast<T*>(p.out) + e;
  int8_t* x_int = p.x_int + (kGrad ? e : 0);
  bool* mask = p.mask + (kGrad ? e : 0);
  int8_t* prev_x_int = p.prev_x_int + e;
  int8_t* prev_switch_dir = p.prev_switch_dir + e;
  float* ema_oscillation = p.ema_oscillation + e;
  bool* frozen = p.frozen + e;
  int8_t* frozen_x_int = p.frozen_x_int + e;
  float* ema_x_int = p.ema_x_int + e;
  const float* scale = p.scale + q0;
  const float* zero_point = p.zero_point + q0;
  const Flags8 f(flags);
  const __m256 qmin = _mm256_set1_ps(p.quant_min), qmax = _mm256_set1_ps(p.quant_max);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  const __m256i izero = _mm256_setzero_si256(), ione = _mm256_set1_epi32(1), minus1 = _mm256_set1_epi32(-1);
  const __m256 s1 = _mm256_set1_ps(scale[0]), z1 = _mm256_set1_ps(zero_point[0]);
  const __m256 inv1 = _mm256_set1_ps(1.0f / scale[0]);
  constexpr int64_t kCountSteps = int64_t(1) << 30;
  const int64_t n8 = n / 8 * 8;
  int64_t count = 0;
  __m256i lane_count = izero;
  for (int64_t k = 0; k < n8; k += 8) {
    const __m256 s = kRow ? _mm256_loadu_ps(scale + k) : s1, z = kRow ? _mm256_loadu_ps(zero_point + k) : z1;
    const __m256 inv = kRow ? _mm256_div_ps(one, s) : inv1;
    // oscillation_clamped: q < qmin ? qmin : (q > qmax ? qmax : q), NaN kept (min/max return their second operand).
    const __m256 q = _mm256_add_ps(rne8(_mm256_mul_ps(load8(w + k), inv)), z);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(q, qmin, _CMP_GE_OQ), _mm256_cmp_ps(q, qmax, _CMP_LE_OQ));
    const __m256 clamped = _mm256_max_ps(qmin, _mm256_min_ps(qmax, q));
    const __m256i not_frozen = _mm256_cmpeq_epi32(load8_i8(frozen + k), izero);
    const __m256i fxi = load8_i8(frozen_x_int + k);
    const __m256 x = _mm256_blendv_ps(_mm256_cvtepi32_ps(fxi), clamped, as_ps(not_frozen));

    const __m256i pxi = load8_i8(prev_x_int + k);
    const __m256 prev = _mm256_blendv_ps(x, _mm256_cvtepi32_ps(pxi), as_ps(f.started_prev));
    const __m256 d = _mm256_sub_ps(prev, x);
    const __m256i dir = _mm256_sub_epi32(as_si(_mm256_cmp_ps(d, zero, _CMP_LT_OQ)),
                                         as_si(_mm256_cmp_ps(d, zero, _CMP_GT_OQ)));  // -1 - 0 or 0 - (-1)
    const __m256i psd = load8_i8(prev_switch_dir + k);
    const __m256i osc = _mm256_and_si256(f.tracking, _mm256_cmpeq_epi32(_mm256_mullo_epi32(psd, dir), minus1));
    const __m256 ema_old = _mm256_loadu_ps(ema_oscillation + k);
    const __m256 ema = _mm256_add_ps(_mm256_mul_ps(f.m, _mm256_and_ps(as_ps(osc), one)),
                                     _mm256_mul_ps(f.cm, ema_old));  // two roundings, as the spec
    const __m256 ex_old = _mm256_loadu_ps(ema_x_int + k);
    const __m256 ex = _mm256_blendv_ps(x, ex_old, as_ps(f.started_ema));
    const __m256i sel = _mm256_and_si256(f.freezing, as_si(_mm256_cmp_ps(ema, f.threshold, _CMP_GT_OQ)));
    const __m256i xi = int8_of(x);
    const __m256i dir_update = _mm256_and_si256(f.tracking, as_si(_mm256_cmp_ps(d, zero, _CMP_NEQ_UQ)));
    const __m256i value = _mm256_blendv_epi8(xi, int8_of(rne8(ex)), f.use_ema);
    const __m256 ema_x = _mm256_add_ps(_mm256_mul_ps(f.m, x), _mm256_mul_ps(f.cm, ex));  // two roundings

    store8(out + k, _mm256_mul_ps(_mm256_sub_ps(x, z), s));
    if (kGrad) {
      store8_i8(x_int + k, xi);
      store8_i8(mask + k, _mm256_and_si256(_mm256_and_si256(not_frozen, as_si(inside)), ione));
    }
    store8_i8(prev_x_int + k, _mm256_blendv_epi8(pxi, xi, f.tracking));
    store8_i8(prev_switch_dir + k, _mm256_blendv_epi8(psd, dir, dir_update));
    _mm256_storeu_ps(ema_oscillation + k, _mm256_blendv_ps(ema_old, ema, as_ps(f.tracking)));
    store8_i8(frozen + k, _mm256_and_si256(_mm256_or_si256(_mm256_andnot_si256(not_frozen, minus1), sel), ione));
    store8_i8(frozen_x_int + k, _mm256_blendv_epi8(fxi, value, sel));
    _mm256_storeu_ps(ema_x_int + k, _mm256_blendv_ps(ex_old, ema_x, as_ps(f.ema_x_update)));
    lane_count = _mm256_sub_epi32(lane_count, osc);
    if ((k / 8 + 1) % kCountSteps == 0 || k + 8 == n8) {
      alignas(32) int32_t c[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(c), lane_count);
      for (int j = 0; j < 8; ++j) count += c[j];
      lane_count = izero;
    }
  }
  return count;
}

// oscillation_grad of 8 elements: returns the dw lanes, writes the ds lanes.
inline __m256 grad8(__m256 dy, __m256 w, __m256 x_int, __m256 mask, __m256 s, __m256 inv, __m256 z, __m256 gf,
                    __m256& ds) {
  const __m256 level = _mm256_sub_ps(x_int, z);
  const __m256 inside =
      _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dy, _mm256_sub_ps(_mm256_mul_ps(level, s), w)), inv), gf);
  const __m256 outside = _mm256_mul_ps(_mm256_mul_ps(dy, level), gf);
  ds = _mm256_blendv_ps(outside, inside, mask);
  return _mm256_and_ps(dy, mask);  // dy or +0
}
inline __m256 x_int8(const int8_t* p) { return _mm256_cvtepi32_ps(load8_i8(p)); }
inline __m256 mask8(const bool* p) {
  return as_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(load8_i8(p), _mm256_setzero_si256()), _mm256_set1_epi32(-1)));
}

// The backward of elements [0, n / 8 * 8) of one quantizer's run (dw written, ds to bs); returns n / 8 * 8.
template <typename T>
int64_t grad_run8(const T* dy, const T* w, const int8_t* xi, const bool* mask, T* dw, int64_t n, float s, float inv,
                  float z, float gf, float* bs) {
  const __m256 s8 = _mm256_set1_ps(s), inv8 = _mm256_set1_ps(inv), z8 = _mm256_set1_ps(z), gf8 = _mm256_set1_ps(gf);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 ds;
    store8(dw + k, grad8(load8(dy + k), load8(w + k), x_int8(xi + k), mask8(mask + k), s8, inv8, z8, gf8, ds));
    _mm256_storeu_ps(bs + k, ds);
  }
  return k;
}

// The backward of columns [0, C / 8 * 8) of one row (I == 1): column c has s[c], inv[c], z[c]; its ds is added to
// acc[c] in double (kPartials). Returns C / 8 * 8.
template <typename T, bool kPartials>
int64_t grad_row8(const T* dy, const T* w, const int8_t* xi, const bool* mask, T* dw, int64_t C, const float* s,
                  const float* inv, const float* z, float gf, double* acc) {
  const __m256 gf8 = _mm256_set1_ps(gf);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 ds;
    store8(dw + c, grad8(load8(dy + c), load8(w + c), x_int8(xi + c), mask8(mask + c), _mm256_loadu_ps(s + c),
                         _mm256_loadu_ps(inv + c), _mm256_loadu_ps(z + c), gf8, ds));
    if (kPartials) {
      _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), _mm256_cvtps_pd(_mm256_castps256_ps128(ds))));
      _mm256_storeu_pd(acc + c + 4,
                       _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(ds, 1))));
    }
  }
  return c;
}

}  // namespace
}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
