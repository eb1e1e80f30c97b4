// Launch-level interface of the oscillation fake-quant kernels: POD params and raw-pointer entry points,
// implemented for the CPU (csrc/cpu/oscillation_fake_quant.cpp) and CUDA (csrc/cuda/oscillation_fake_quant.cu).
// Torch-free.
//
// Layout: w, out, x_int, mask, the six state arrays and dy / dw are contiguous and walked in storage order as
// [B, O, C, I] (B == 1 from the public op, any B here): element e = ((b * O + o) * C + c) * I + i belongs to
// quantizer b * C + c, whose scale and zero point (float32, the zero point integral) are scale[b * C + c] and
// zero_point[b * C + c].
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/oscillation_fake_quant_math.h"
#include "qkernels/reduce.h"

namespace qkernels {

struct OscillationForwardParams {
  DType dtype;
  ReduceDims dims;
  const void* w;
  void* out;
  int8_t* x_int;  // nullptr: not wanted (no gradient), together with mask
  bool* mask;
  const float* scale;
  const float* zero_point;
  float quant_min, quant_max;
  // The state, one element per weight, updated in place.
  int8_t* prev_x_int;
  int8_t* prev_switch_dir;
  float* ema_oscillation;
  bool* frozen;
  int8_t* frozen_x_int;
  float* ema_x_int;
  // Flags on the device, read by the kernels: started uint8 [2], threshold float32 [1], tracking uint8 [1] (0/1).
  const uint8_t* started;
  const float* threshold;
  const uint8_t* tracking;
  float m, cm;  // float32(momentum), float32(1 - momentum)
  bool use_ema_x_int;
};

// The flags of a call, from its device tensors.
QK_HOST_DEVICE OscillationFlags oscillation_flags(const OscillationForwardParams& p) {
  OscillationFlags f{};
  f.started_prev = p.started[0] != 0;
  f.started_ema = p.started[1] != 0;
  f.tracking = *p.tracking != 0;
  f.threshold = *p.threshold;
  f.freezing = f.tracking && f.threshold > 0.0f;
  f.use_ema_x_int = p.use_ema_x_int;
  f.m = p.m;
  f.cm = p.cm;
  return f;
}

struct OscillationBackwardParams {
  DType dtype;
  ReduceDims dims;
  ReduceBlocks blocks;  // the layout of the dscale sum (qkernels/reduce.h)
  const void* dy;
  const void* w;
  const int8_t* x_int;
  const bool* mask;
  void* dw;
  const float* scale;
  const float* zero_point;
  float grad_factor;
  float* ds_partial;  // [B, P, C], or nullptr: no dscale (dw only)
};

namespace cpu {
// Storage offsets [begin, end) of the forward step; returns the number of oscillations among them (0 when not
// tracking).
int64_t oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t begin, int64_t end);
// Work items [begin, end) of the backward (reduce_items(p.dims, p.blocks) of them: item (b, c, p) =
// (b * C + c) * P + p in run mode, (b, p) = b * P + p in row mode).
void oscillation_fake_quant_backward(const OscillationBackwardParams& p, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
// CTAs of the forward launch for n elements: the length of its int64 count partials (one per CTA, summed by the
// caller).
inline int64_t oscillation_forward_ctas(int64_t n) {
  const int64_t ctas = (n + 255) / 256;
  return ctas < 4096 ? (ctas > 0 ? ctas : 1) : 4096;
}
int oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t* count_partial, void* stream);
int oscillation_fake_quant_backward(const OscillationBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
