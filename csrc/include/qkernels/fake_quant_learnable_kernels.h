// Launch-level interface of the learnable (LSQ) fake-quant kernels: POD params and raw-pointer entry points,
// implemented for the CPU (csrc/cpu/fake_quant.cpp) and CUDA (csrc/cuda/fake_quant_learnable.cu). Torch-free.
//
// Layout: x (and out / dy / dx, which share x's dense layout) is walked in storage order, viewed as
// [B, O, C, I]: element e = ((b * O + o) * C + c) * I + i belongs to quantizer b * C + c, whose scale and
// zero point are scale[b * C + c], zero_point[b * C + c] (float32; the zero point unrounded).
//   per-tensor  : B = O = C = 1, I = numel
//   per-channel : B = 1, C = channels, I = elements laid out inside the channel axis
//   per-group   : B = numel / (G * inner), O = G, C = inner, I = 1 (or B = numel / G, O = C = 1, I = G)
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/fake_quant_learnable_math.h"

namespace qkernels {

struct LearnableDims {
  int64_t B, O, C, I;
  int64_t numel() const { return B * O * C * I; }
};

struct LearnableForwardParams {
  DType dtype;
  Flavour flavour;
  LearnableDims dims;
  const void* x;
  void* out;
  const float* scale;       // [B * C]
  const float* zero_point;  // [B * C], rounded and clamped in the kernel (forward_zero_point)
  int64_t quant_min;
  int64_t quant_max;
  bool per_tensor;  // fq_per_tensor rules; otherwise fq_per_channel_int_zp (aten's per-channel forward)
};

// How the backward pass splits the reduction into partial sums, so that every sum is formed in one fixed
// order whatever the thread count (deterministic). Partials are [B, P, C] float32 per qparam gradient.
//   run mode (I > 1 or C == 1): work item (b, c, p), p = ob * n_ib + ib, covers rows o in
//     [ob * rows, ob * rows + rows) and i in [ib * chunk, ib * chunk + chunk) of quantizer b * C + c
//   row mode (I == 1 and C > 1): work item (b, p) covers rows o in [p * rows, p * rows + rows), all c
struct LearnableBlocks {
  bool row_mode;
  int64_t rows;   // O-rows per work item
  int64_t chunk;  // run mode: elements of I per work item
  int64_t n_ib;   // run mode: chunks along I
  int64_t P;      // partial sums per quantizer
};

// target: elements per work item. Row mode takes at least 64 rows, which bounds the partials by numel / 64.
inline LearnableBlocks make_learnable_blocks(const LearnableDims& d, int64_t target) {
  LearnableBlocks k{};
  const auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  k.row_mode = d.I == 1 && d.C > 1;
  if (k.row_mode) {
    k.rows = cdiv(target, d.C) > 64 ? cdiv(target, d.C) : 64;
    k.chunk = 1;
    k.n_ib = 1;
    k.P = cdiv(d.O, k.rows);
  } else {
    k.chunk = d.I < target ? d.I : target;
    k.n_ib = cdiv(d.I, k.chunk);
    k.rows = target / k.chunk > 1 ? target / k.chunk : 1;
    k.P = cdiv(d.O, k.rows) * k.n_ib;
  }
  return k;
}

struct LearnableBackwardParams {
  DType dtype;
  Flavour flavour;
  LearnableDims dims;
  LearnableBlocks blocks;
  const void* x;
  const void* dy;
  void* dx;
  const float* scale;       // [B * C]
  const float* zero_point;  // [B * C], unrounded (backward_zero_point applies rule)
  int64_t quant_min;
  int64_t quant_max;
  float grad_factor;
  ZpRule rule;
  bool use_fma;
  float* ds_partial;  // [B, P, C], or nullptr: the qparams need no gradient (dx only)
  float* dz_partial;  // [B, P, C], or nullptr together with ds_partial
};

namespace cpu {
// Storage offsets [begin, end) of the forward pass.
void fake_quant_learnable_forward(const LearnableForwardParams& p, int64_t begin, int64_t end);
// Work items [begin, end) of the backward pass (B * C * P items in run mode, B * P in row mode; with no
// partials, the same items write dx only).
void fake_quant_learnable_backward(const LearnableBackwardParams& p, int64_t begin, int64_t end);
inline int64_t learnable_backward_items(const LearnableBackwardParams& p) {
  return p.dims.B * p.blocks.P * (p.blocks.row_mode ? 1 : p.dims.C);
}
}  // namespace cpu

namespace cuda {
int fake_quant_learnable_forward(const LearnableForwardParams& p, void* stream);
int fake_quant_learnable_backward(const LearnableBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
