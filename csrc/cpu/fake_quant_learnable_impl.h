// The CPU loops of learnable (LSQ) fake quantization, compiled once per instruction set (csrc/cpu/
// fake_quant_learnable.cpp and its _avx2 variant); the forward runs fake_quant_loops.h. Layout: qkernels/
// fake_quant_learnable_kernels.h; per-element math: qkernels/fake_quant_learnable_math.h; the qparam sums follow
// the reduction layer (qkernels/reduce.h: the block layout; cpu/reduce.h: the Sum combine).
//
// Determinism: every partial sum is one block of the layout, formed by one work item, whose elements are always
// visited in the same order. Run mode: summed into the 8 double SumLanes (element k of each kSub sub-block to
// lane k % 8), folded in lane order at the end of the item; row mode: one double accumulator per column, rows in
// order. Thread count, scheduling and instruction set never change a bit, and a partial is the float32 rounding
// of a nearly exact sum (more accurate than a float32 torch.sum).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "qkernels/fake_quant_learnable_kernels.h"
#include "fake_quant_loops.h"
#include "reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block of the backward loops

// ------------------------------------------------------------------------------------------------------
// Forward: aten's fake-quant loops with the zero point rounded and clamped first.
// ------------------------------------------------------------------------------------------------------
template <typename T, Flavour F>
void learnable_forward_walk(const LearnableForwardParams& p, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  const int64_t O = p.dims.O, C = p.dims.C, I = p.dims.I;
  // The bounds reach the loops as integers: float(int64(float)) would cost a trunc per element.
  const int64_t qmin = p.quant_min, qmax = p.quant_max;
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  int32_t zbuf[kSub];
  int64_t e = begin;
  while (e < end) {
    const int64_t row = e / (C * I);
    const int64_t within = e - row * C * I;
    const int64_t c = within / I;
    const int64_t q = (row / O) * C + c;
    int64_t len;
    if (I == 1 && !p.per_tensor) {  // consecutive elements, consecutive quantizers
      len = std::min({end - e, C - c, kSub});
      for (int64_t k = 0; k < len; ++k) zbuf[k] = static_cast<int32_t>(forward_zero_point(p.zero_point[q + k], lo, hi));
      channel_row_int<T, F, false, false>(x + e, y + e, nullptr, len, p.scale + q, zbuf, qmin, qmax);
    } else {
      len = std::min(end - e, I - (within - c * I));
      const float s = p.scale[q];
      const int64_t z = static_cast<int64_t>(forward_zero_point(p.zero_point[q], lo, hi));
      if (p.per_tensor) {
        per_tensor_loop<T, F, false, false>(x + e, y + e, nullptr, len, s, 1.0f / s, z, lo, hi);
      } else {
        channel_run_int<T, F, false, false>(x + e, y + e, nullptr, len, s, z, qmin, qmax);
      }
    }
    e += len;
  }
}

// ------------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------------
template <Flavour F, ZpRule R, bool kFma>
struct GradMath {
  float lo, hi, gf;
  QK_HOST_DEVICE float operator()(float x, float dy, float s, float inv, float zb, float& ds, float& dz) const {
    return learnable_grad<F>(x, dy, s, inv, zb, lo, hi, gf, R, kFma, ds, dz);
  }
};

// One run of n elements of a single quantizer; ds/dz are added into the lane accumulators (element k of
// every kSub sub-block goes to lane k % 8).
template <typename T, bool kPartials, typename Math>
void grad_run(const Math& math, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n,
              float s, float zb, SumLanes& lane_s, SumLanes& lane_z) {
  const float inv = 1.0f / s;
  alignas(32) float bs[kSub], bz[kSub];
  SumLanes ls = lane_s, lz = lane_z;  // locals stay in registers; the references would be re-stored every step
  for (int64_t b = 0; b < n; b += kSub) {
    const int64_t m = std::min(kSub, n - b);
    for (int64_t k = 0; k < m; ++k) {
      dx[b + k] = from_float<T>(math(to_float(x[b + k]), to_float(dy[b + k]), s, inv, zb, bs[k], bz[k]));
    }
    if (!kPartials) continue;
    for (int64_t k = m; k < (m + kLanes - 1) / kLanes * kLanes; ++k) bs[k] = bz[k] = 0.0f;  // pad the last lanes
    for (int64_t k = 0; k < m; k += kLanes) {
      ls.add8(bs + k);
      lz.add8(bz + k);
    }
  }
  lane_s = ls;
  lane_z = lz;
}

// One row of consecutive quantizers (I == 1): element k belongs to quantizer k; sums go to acc_s/acc_z[k].
template <typename T, bool kPartials, typename Math>
void grad_row(const Math& math, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n,
              const float* __restrict__ s, const float* __restrict__ inv, const float* __restrict__ zb,
              double* __restrict__ acc_s, double* __restrict__ acc_z) {
  for (int64_t k = 0; k < n; ++k) {
    float ds, dz;
    dx[k] = from_float<T>(math(to_float(x[k]), to_float(dy[k]), s[k], inv[k], zb[k], ds, dz));
    if (kPartials) {
      acc_s[k] += ds;
      acc_z[k] += dz;
    }
  }
}

template <typename T, bool kPartials, typename Math>
void learnable_backward_items(const LearnableBackwardParams& p, const Math& math, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const LearnableDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  const float lo = static_cast<float>(p.quant_min), hi = static_cast<float>(p.quant_max);
  if (k.row_mode) {
    std::vector<float> inv(d.C), zb(d.C);
    std::vector<double> acc_s(d.C), acc_z(d.C);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / k.P, part = item % k.P;
      const float* s = p.scale + b * d.C;
      for (int64_t c = 0; c < d.C; ++c) {
        inv[c] = 1.0f / s[c];
        zb[c] = backward_zero_point(p.zero_point[b * d.C + c], lo, hi, p.rule);
      }
      std::fill(acc_s.begin(), acc_s.end(), 0.0);
      std::fill(acc_z.begin(), acc_z.end(), 0.0);
      const int64_t o1 = std::min(d.O, (part + 1) * k.rows);
      for (int64_t o = part * k.rows; o < o1; ++o) {
        const int64_t e = (b * d.O + o) * d.C;
        grad_row<T, kPartials>(math, x + e, dy + e, dx + e, d.C, s, inv.data(), zb.data(), acc_s.data(),
                               acc_z.data());
      }
      if (kPartials) {
        for (int64_t c = 0; c < d.C; ++c) {
          p.ds_partial[(b * k.P + part) * d.C + c] = static_cast<float>(acc_s[c]);
          p.dz_partial[(b * k.P + part) * d.C + c] = static_cast<float>(acc_z[c]);
        }
      }
    }
    return;
  }
  for (int64_t item = begin; item < end; ++item) {
    // Items are ordered (b, c, part) so that neighbouring items touch neighbouring memory when I is large.
    const int64_t part = item % k.P, bc = item / k.P;
    const int64_t b = bc / d.C, c = bc % d.C;
    const int64_t ob = part / k.n_ib, ib = part % k.n_ib;
    const float s = p.scale[bc];
    const float zb = backward_zero_point(p.zero_point[bc], lo, hi, p.rule);
    const int64_t i0 = ib * k.chunk, n = std::min(d.I, i0 + k.chunk) - i0;
    SumLanes lane_s, lane_z;
    const int64_t o1 = std::min(d.O, (ob + 1) * k.rows);
    for (int64_t o = ob * k.rows; o < o1; ++o) {
      const int64_t e = ((b * d.O + o) * d.C + c) * d.I + i0;
      grad_run<T, kPartials>(math, x + e, dy + e, dx + e, n, s, zb, lane_s, lane_z);
    }
    if (kPartials) {
      p.ds_partial[(b * k.P + part) * d.C + c] = lane_s.fold();
      p.dz_partial[(b * k.P + part) * d.C + c] = lane_z.fold();
    }
  }
}

template <typename T>
void learnable_backward_typed(const LearnableBackwardParams& p, int64_t begin, int64_t end) {
  // Every runtime switch becomes a compile-time one, so each loop body is straight-line code.
  const auto go = [&](auto flavour, auto rule, auto fma) {
    const GradMath<decltype(flavour)::value, decltype(rule)::value, decltype(fma)::value> math{
        static_cast<float>(p.quant_min), static_cast<float>(p.quant_max), p.grad_factor};
    p.ds_partial ? learnable_backward_items<T, true>(p, math, begin, end)
                 : learnable_backward_items<T, false>(p, math, begin, end);
  };
  const auto with_rule = [&](auto flavour, auto fma) {
    switch (p.rule) {
      case ZpRule::TorchPerTensor:
        return go(flavour, std::integral_constant<ZpRule, ZpRule::TorchPerTensor>{}, fma);
      case ZpRule::Torch:
        return go(flavour, std::integral_constant<ZpRule, ZpRule::Torch>{}, fma);
      case ZpRule::Consistent:
        return go(flavour, std::integral_constant<ZpRule, ZpRule::Consistent>{}, fma);
    }
  };
  using CpuF = std::integral_constant<Flavour, Flavour::Cpu>;
  using CudaF = std::integral_constant<Flavour, Flavour::Cuda>;
  if (p.flavour == Flavour::Cpu) {
    p.use_fma ? with_rule(CpuF{}, std::true_type{}) : with_rule(CpuF{}, std::false_type{});
  } else {
    p.use_fma ? with_rule(CudaF{}, std::true_type{}) : with_rule(CudaF{}, std::false_type{});
  }
}

template <typename T>
void learnable_forward_typed(const LearnableForwardParams& p, int64_t begin, int64_t end) {
  p.flavour == Flavour::Cpu ? learnable_forward_walk<T, Flavour::Cpu>(p, begin, end)
                            : learnable_forward_walk<T, Flavour::Cuda>(p, begin, end);
}

template <typename T>
struct LearnableForwardFn {
  static void call(const LearnableForwardParams& p, int64_t b, int64_t e, std::nullptr_t) {
    learnable_forward_typed<T>(p, b, e);
  }
};
template <typename T>
struct LearnableBackwardFn {
  static void call(const LearnableBackwardParams& p, int64_t b, int64_t e, std::nullptr_t) {
    learnable_backward_typed<T>(p, b, e);
  }
};

}  // namespace

void fake_quant_learnable_forward(const LearnableForwardParams& p, int64_t begin, int64_t end) {
  by_dtype<LearnableForwardFn>(p, begin, end, nullptr);
}
void fake_quant_learnable_backward(const LearnableBackwardParams& p, int64_t begin, int64_t end) {
  by_dtype<LearnableBackwardFn>(p, begin, end, nullptr);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
