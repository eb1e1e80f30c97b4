// The CPU loops of the oscillation dampening loss, compiled once per instruction set (csrc/cpu/
// oscillation_dampening.cpp and its _avx2 variant). Layout: qkernels/oscillation_dampening_kernels.h; per-element
// math: qkernels/oscillation_dampening_math.h; the e and ds sums follow the reduction layer (qkernels/reduce.h: the
// block layout; cpu/reduce.h: the Sum lanes).
//
// Each work item writes dw of its block(s) and forms their partials in a fixed order (run mode: the 8 double
// SumLanes, element k of each kSub sub-block to lane k % 8; row mode: one double accumulator per column, rows in
// order), as the sibling family's backward: thread count and instruction set never change a bit.
#include <algorithm>
#include <vector>

#include "qkernels/oscillation_dampening_kernels.h"
#include "reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block of the run loop

// n elements from offset e of one quantizer; their e and ds are added into the lanes.
template <typename T>
void dampen_run(const DampeningParams& p, int64_t e, int64_t n, float s, float z, SumLanes& e_lanes,
                SumLanes& ds_lanes) {
  // Local restrict pointers: through p, every store to dw could alias p's float fields and reload them.
  const T* __restrict__ w = static_cast<const T*>(p.w) + e;
  const bool* __restrict__ frozen = p.frozen + e;
  const int8_t* __restrict__ frozen_x_int = p.frozen_x_int + e;
  float* __restrict__ dw = p.dw + e;
  const float inv = 1.0f / s, qmin = p.quant_min, qmax = p.quant_max;
  alignas(32) float be[kSub], bds[kSub];
  SumLanes le = e_lanes, lds = ds_lanes;  // locals stay in registers
  for (int64_t b = 0; b < n; b += kSub) {
    const int64_t m = std::min(kSub, n - b);
    for (int64_t k = 0; k < m; ++k) {
      be[k] = oscillation_dampening_element(to_float(w[b + k]), frozen[b + k], frozen_x_int[b + k], s, inv, z, qmin,
                                            qmax, dw[b + k], bds[k]);
    }
    for (int64_t k = m; k < (m + kLanes - 1) / kLanes * kLanes; ++k) be[k] = bds[k] = 0.0f;  // pad the last lanes
    for (int64_t k = 0; k < m; k += kLanes) {
      le.add8(be + k);
      lds.add8(bds + k);
    }
  }
  e_lanes = le;
  ds_lanes = lds;
}

// Row mode (I == 1): item (b, p) covers rows [p * rows, p * rows + rows) of all C quantizers.
template <typename T>
void row_items(const DampeningParams& p, int64_t begin, int64_t end) {
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  // Restrict locals, as in dampen_run: a store to dw could otherwise alias p's float fields.
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const bool* __restrict__ frozen = p.frozen;
  const int8_t* __restrict__ frozen_x_int = p.frozen_x_int;
  float* __restrict__ dw = p.dw;
  const float qmin = p.quant_min, qmax = p.quant_max;
  std::vector<float> inv(d.C);
  std::vector<double> acc_e(d.C), acc_ds(d.C);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / k.P, part = item % k.P;
    const float* s = p.scale + b * d.C;
    const float* z = p.zero_point + b * d.C;
    for (int64_t c = 0; c < d.C; ++c) inv[c] = 1.0f / s[c];
    std::fill(acc_e.begin(), acc_e.end(), 0.0);
    std::fill(acc_ds.begin(), acc_ds.end(), 0.0);
    const int64_t o1 = std::min(d.O, (part + 1) * k.rows);
    for (int64_t o = part * k.rows; o < o1; ++o) {
      const int64_t e = (b * d.O + o) * d.C;
      for (int64_t c = 0; c < d.C; ++c) {
        float ds;
        acc_e[c] += oscillation_dampening_element(to_float(w[e + c]), frozen[e + c], frozen_x_int[e + c], s[c],
                                                  inv[c], z[c], qmin, qmax, dw[e + c], ds);
        acc_ds[c] += ds;
      }
    }
    for (int64_t c = 0; c < d.C; ++c) {
      p.e_partial[(b * k.P + part) * d.C + c] = static_cast<float>(acc_e[c]);
      p.ds_partial[(b * k.P + part) * d.C + c] = static_cast<float>(acc_ds[c]);
    }
  }
}

// Run mode: item (b, c, p) is the block p of quantizer b * C + c.
template <typename T>
void run_items(const DampeningParams& p, int64_t begin, int64_t end) {
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  for (int64_t item = begin; item < end; ++item) {
    // Items are ordered (b, c, part) so that neighbouring items touch neighbouring memory when I is large.
    const int64_t part = item % k.P, bc = item / k.P;
    const int64_t b = bc / d.C, c = bc % d.C;
    const int64_t ob = part / k.n_ib, ib = part % k.n_ib;
    const int64_t i0 = ib * k.chunk, n = std::min(d.I, i0 + k.chunk) - i0;
    SumLanes e_lanes, ds_lanes;
    const int64_t o1 = std::min(d.O, (ob + 1) * k.rows);
    for (int64_t o = ob * k.rows; o < o1; ++o) {
      dampen_run<T>(p, ((b * d.O + o) * d.C + c) * d.I + i0, n, p.scale[bc], p.zero_point[bc], e_lanes, ds_lanes);
    }
    p.e_partial[(b * k.P + part) * d.C + c] = e_lanes.fold();
    p.ds_partial[(b * k.P + part) * d.C + c] = ds_lanes.fold();
  }
}

template <typename T>
struct ForwardFn {
  static void call(const DampeningParams& p, int64_t b, int64_t e, std::nullptr_t) {
    p.blocks.row_mode ? row_items<T>(p, b, e) : run_items<T>(p, b, e);
  }
};

}  // namespace

void oscillation_dampening_forward(const DampeningParams& p, int64_t begin, int64_t end) {
  by_dtype<ForwardFn>(p, begin, end, nullptr);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
