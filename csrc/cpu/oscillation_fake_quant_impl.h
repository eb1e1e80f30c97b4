// The CPU loops of oscillation fake quantization, compiled once per instruction set (csrc/cpu/
// oscillation_fake_quant.cpp and its _avx2 variant). Layout: qkernels/oscillation_fake_quant_kernels.h; per-element
// math: qkernels/oscillation_fake_quant_math.h; the dscale sum follows the reduction layer (qkernels/reduce.h: the
// block layout; cpu/reduce.h: the Sum lanes).
//
// The forward step is per element (the state of an element depends on that element alone), so any split of the
// range gives the same bits; its count is an integer sum. The backward's partials are the blocks of the layout, each
// formed by one work item in a fixed order (run mode: the 8 double SumLanes, element k of each kSub sub-block to
// lane k % 8; row mode: one double accumulator per column, rows in order): thread count and instruction set never
// change a bit. The AVX2 build (QK_OSCILLATION_AVX2) runs 8 elements per step (oscillation_fake_quant_avx2.h),
// each lane the scalar math, and the scalar loops on the tails.
#include <algorithm>
#include <vector>

#include "qkernels/oscillation_fake_quant_kernels.h"
#include "reduce.h"
#ifdef QK_OSCILLATION_AVX2
#include "oscillation_fake_quant_avx2.h"
#endif

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block of the backward loops

// ------------------------------------------------------------------------------------------------------
// Forward: n elements from offset e whose quantizers are q0 + k * q_step (q_step 0: one quantizer; 1: I == 1).
// ------------------------------------------------------------------------------------------------------
template <typename T, bool kGrad, int64_t q_step>
int64_t step_run(const OscillationForwardParams& p, const OscillationFlags& f, int64_t e, int64_t n, int64_t q0) {
#ifdef QK_OSCILLATION_AVX2
  int64_t count = step_run8<T, kGrad, q_step == 1>(p, f, e, n, q0);
  const int64_t k0 = n / 8 * 8;
#else
  int64_t count = 0;
  const int64_t k0 = 0;
#endif
  // Local restrict pointers: int8/bool stores may alias anything, so through p every store would reload p's fields.
  const T* __restrict__ w = static_cast<const T*>(p.w) + e;
  T* __restrict__ out = static_cast<T*>(p.out) + e;
  int8_t* __restrict__ x_int = p.x_int + (kGrad ? e : 0);
  bool* __restrict__ mask = p.mask + (kGrad ? e : 0);
  int8_t* __restrict__ prev_x_int = p.prev_x_int + e;
  int8_t* __restrict__ prev_switch_dir = p.prev_switch_dir + e;
  float* __restrict__ ema_oscillation = p.ema_oscillation + e;
  bool* __restrict__ frozen = p.frozen + e;
  int8_t* __restrict__ frozen_x_int = p.frozen_x_int + e;
  float* __restrict__ ema_x_int = p.ema_x_int + e;
  const float* __restrict__ scale = p.scale + q0;
  const float* __restrict__ zero_point = p.zero_point + q0;
  const float qmin = p.quant_min, qmax = p.quant_max;
  for (int64_t k = k0; k < n; ++k) {
    const float s = scale[k * q_step], z = zero_point[k * q_step];
    OscillationElement st{prev_x_int[k], prev_switch_dir[k], frozen_x_int[k],
                          frozen[k],     ema_oscillation[k], ema_x_int[k]};
    bool m, osc;
    const float x = oscillation_step(to_float(w[k]), 1.0f / s, z, qmin, qmax, f, st, m, osc);
    out[k] = from_float<T>(oscillation_output(x, s, z));
    if (kGrad) {
      x_int[k] = oscillation_int8(x);
      mask[k] = m;
    }
    prev_x_int[k] = st.prev_x_int;
    prev_switch_dir[k] = st.prev_switch_dir;
    ema_oscillation[k] = st.ema_oscillation;
    frozen[k] = st.frozen;
    frozen_x_int[k] = st.frozen_x_int;
    ema_x_int[k] = st.ema_x_int;
    count += osc;
  }
  return count;
}

template <typename T>
int64_t forward_walk(const OscillationForwardParams& p, int64_t begin, int64_t end) {
  const OscillationFlags f = oscillation_flags(p);
  const int64_t O = p.dims.O, C = p.dims.C, I = p.dims.I;
  int64_t count = 0;
  for (int64_t e = begin; e < end;) {
    const int64_t row = e / (C * I), within = e - row * C * I, c = within / I;
    const int64_t q = (row / O) * C + c;
    if (I == 1 && C > 1) {  // a row of quantizers
      const int64_t len = std::min(end - e, C - c);
      count += p.x_int ? step_run<T, true, 1>(p, f, e, len, q) : step_run<T, false, 1>(p, f, e, len, q);
      e += len;
      continue;
    }
    const int64_t len = std::min(end - e, I - (within - c * I));
    count += p.x_int ? step_run<T, true, 0>(p, f, e, len, q) : step_run<T, false, 0>(p, f, e, len, q);
    e += len;
  }
  return count;
}

// ------------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------------
// n elements from offset e of one quantizer; ds is added into the lanes (kPartials).
template <typename T, bool kPartials>
void grad_run(const OscillationBackwardParams& p, int64_t e, int64_t n, float s, float z, SumLanes& lanes) {
  const T* dy = static_cast<const T*>(p.dy) + e;
  const T* w = static_cast<const T*>(p.w) + e;
  const int8_t* xi = p.x_int + e;
  const bool* mask = p.mask + e;
  T* dw = static_cast<T*>(p.dw) + e;
  const float inv = 1.0f / s, gf = p.grad_factor;
  alignas(32) float bs[kSub];
  SumLanes ls = lanes;  // a local stays in registers
  for (int64_t b = 0; b < n; b += kSub) {
    const int64_t m = std::min(kSub, n - b);
#ifdef QK_OSCILLATION_AVX2
    const int64_t k0 = grad_run8(dy + b, w + b, xi + b, mask + b, dw + b, m, s, inv, z, gf, bs);
#else
    const int64_t k0 = 0;
#endif
    for (int64_t k = k0; k < m; ++k) {
      dw[b + k] = from_float<T>(oscillation_grad(to_float(dy[b + k]), to_float(w[b + k]),
                                                 static_cast<float>(xi[b + k]), mask[b + k], s, inv, z, gf, bs[k]));
    }
    if (!kPartials) continue;
    for (int64_t k = m; k < (m + kLanes - 1) / kLanes * kLanes; ++k) bs[k] = 0.0f;  // pad the last lanes
    for (int64_t k = 0; k < m; k += kLanes) ls.add8(bs + k);
  }
  lanes = ls;
}

template <typename T, bool kPartials>
void backward_items(const OscillationBackwardParams& p, int64_t begin, int64_t end) {
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  if (k.row_mode) {  // I == 1: element c of a row belongs to quantizer b * C + c
    const T* dy = static_cast<const T*>(p.dy);
    const T* w = static_cast<const T*>(p.w);
    T* dw = static_cast<T*>(p.dw);
    std::vector<float> inv(d.C);
    std::vector<double> acc(d.C);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / k.P, part = item % k.P;
      const float* s = p.scale + b * d.C;
      const float* z = p.zero_point + b * d.C;
      for (int64_t c = 0; c < d.C; ++c) inv[c] = 1.0f / s[c];
      std::fill(acc.begin(), acc.end(), 0.0);
      const int64_t o1 = std::min(d.O, (part + 1) * k.rows);
      for (int64_t o = part * k.rows; o < o1; ++o) {
        const int64_t e = (b * d.O + o) * d.C;
#ifdef QK_OSCILLATION_AVX2
        const int64_t c0 = grad_row8<T, kPartials>(dy + e, w + e, p.x_int + e, p.mask + e, dw + e, d.C, s,
                                                   inv.data(), z, p.grad_factor, acc.data());
#else
        const int64_t c0 = 0;
#endif
        for (int64_t c = c0; c < d.C; ++c) {
          float ds;
          dw[e + c] = from_float<T>(oscillation_grad(to_float(dy[e + c]), to_float(w[e + c]),
                                                     static_cast<float>(p.x_int[e + c]), p.mask[e + c], s[c], inv[c],
                                                     z[c], p.grad_factor, ds));
          if (kPartials) acc[c] += ds;
        }
      }
      if (kPartials) {
        for (int64_t c = 0; c < d.C; ++c) p.ds_partial[(b * k.P + part) * d.C + c] = static_cast<float>(acc[c]);
      }
    }
    return;
  }
  for (int64_t item = begin; item < end; ++item) {
    // Items are ordered (b, c, part) so that neighbouring items touch neighbouring memory when I is large.
    const int64_t part = item % k.P, bc = item / k.P;
    const int64_t b = bc / d.C, c = bc % d.C;
    const int64_t ob = part / k.n_ib, ib = part % k.n_ib;
    const int64_t i0 = ib * k.chunk, n = std::min(d.I, i0 + k.chunk) - i0;
    SumLanes lanes;
    const int64_t o1 = std::min(d.O, (ob + 1) * k.rows);
    for (int64_t o = ob * k.rows; o < o1; ++o) {
      grad_run<T, kPartials>(p, ((b * d.O + o) * d.C + c) * d.I + i0, n, p.scale[bc], p.zero_point[bc], lanes);
    }
    if (kPartials) p.ds_partial[(b * k.P + part) * d.C + c] = lanes.fold();
  }
}

template <typename T>
struct ForwardFn {
  static void call(const OscillationForwardParams& p, int64_t b, int64_t e, int64_t* count) {
    *count = forward_walk<T>(p, b, e);
  }
};
template <typename T>
struct BackwardFn {
  static void call(const OscillationBackwardParams& p, int64_t b, int64_t e, std::nullptr_t) {
    p.ds_partial ? backward_items<T, true>(p, b, e) : backward_items<T, false>(p, b, e);
  }
};

}  // namespace

int64_t oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t begin, int64_t end) {
  int64_t count = 0;
  by_dtype<ForwardFn>(p, begin, end, &count);
  return count;
}
void oscillation_fake_quant_backward(const OscillationBackwardParams& p, int64_t begin, int64_t end) {
  by_dtype<BackwardFn>(p, begin, end, nullptr);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
