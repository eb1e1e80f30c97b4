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
#include "qkernels/reduce.h"

namespace qkernels {

using LearnableDims = ReduceDims;

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

struct LearnableBackwardParams {
  DType dtype;
  Flavour flavour;
  LearnableDims dims;
  ReduceBlocks blocks;  // the block layout of the qparam sums (qkernels/reduce.h)
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
// Work items [begin, end) of the backward pass (reduce_items(p.dims, p.blocks) of them, item (b, c, p) =
// (b * C + c) * P + p in run mode, (b, p) = b * P + p in row mode; with no partials, the same items write dx only).
void fake_quant_learnable_backward(const LearnableBackwardParams& p, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
int fake_quant_learnable_forward(const LearnableForwardParams& p, void* stream);
int fake_quant_learnable_backward(const LearnableBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
