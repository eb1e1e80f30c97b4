// Per-element math of learnable (LSQ) fake quantization, shared by the CPU and CUDA kernels.
//
// Host-and-device, torch-free. The spec is qkernels/reference/fake_quant_learnable.py; the forward pass reuses
// fq_per_tensor / fq_per_channel_int_zp of fake_quant_math.h with the zero point from forward_zero_point.
// Zero points here are floats holding integers within [quant_min, quant_max], |bounds| <= 2^22, so every
// integer difference below is exact in float.
#pragma once

#include "qkernels/fake_quant_math.h"

namespace qkernels {

// clamp(rne(zp), qmin, qmax), as aten's learnable forward rounds the zero point. A NaN zero point (an error
// where values are checked, as in torch) gives qmin.
QK_HOST_DEVICE float forward_zero_point(float zp, float qmin, float qmax) {
  return clamp_nan_low(round_half_even(zp) + 0.0f, qmin, qmax);
}

QK_HOST_DEVICE float backward_zero_point(float zp, float qmin, float qmax, ZpRule rule) {
  if (rule == ZpRule::TorchPerTensor) return std::trunc(clamp_nan_low(zp + 0.5f, qmin, qmax));
  return forward_zero_point(zp, qmin, qmax);
}

// Gradient contributions of one element. Returns dx (= dy * mask, IEEE: -0.0 and NaN propagate) and writes
// ds and dz (before the reduction over the quantizer's elements):
//   inside (qmin <= q <= qmax): ds = ((dy * d) * inv) * gf with d = float(q - zb) * s - x, dz = 0
//   below / above:              ds = (dy * float(qmin - zb | qmax - zb)) * gf, dz = ((dy * -1) * s) * gf
// The level q (torch rules):
//   Cpu : q = int64(rne(x * inv + zb)), x86 conversion (NaN, inf, |v| >= 2^63 -> INT64_MIN: below)
//   Cuda: q = int64_saturating(rne(x * inv)) + zb, wrapping
// use_fma: x * inv + zb (Cpu level) and d are each one FMA (aten's AVX2/AVX512 CPU builds; CUDA's d).
template <Flavour F>
QK_HOST_DEVICE float learnable_grad(float x, float dy, float s, float inv, float zb, float qmin, float qmax,
                                    float gf, ZpRule rule, bool use_fma, float& ds, float& dz) {
  constexpr float kTwo63 = 9.223372036854775808e18f;
  bool below, above;
  float level;
  if (rule == ZpRule::Consistent) {
    level = round_half_even(x * inv) + zb;
    below = !(level >= qmin);  // NaN counts as below: its forward output sits at qmin
    above = level > qmax;
  } else if (F == Flavour::Cpu) {
    level = round_half_even(use_fma ? fmaf(x, inv, zb) : x * inv + zb);
    const bool special = !(std::fabs(level) < kTwo63);
    below = special | (level < qmin);
    above = !special & (level > qmax);
  } else {
    const float r = round_half_even(x * inv);
    if (std::fabs(r) < 8388608.0f) {  // r + zb is exact, no int64 arithmetic needed
      level = r + zb;
      below = level < qmin;
      above = level > qmax;
    } else {  // NaN, inf and huge r: saturating conversion, then the wrapping int64 add aten performs
      const int64_t q = wrapping_add(to_int64_cuda(r), static_cast<int64_t>(zb));
      below = q < static_cast<int64_t>(qmin);
      above = q > static_cast<int64_t>(qmax);
      level = static_cast<float>(q);  // exact whenever q is inside the bounds
    }
  }
  const bool inside = !(below | above);
  const float diff = (inside ? level : zb) - zb;
  const float d = use_fma ? fmaf(diff, s, -x) : diff * s - x;
  const float ds_inside = ((dy * d) * inv) * gf;
  const float ds_outside = (dy * ((below ? qmin : qmax) - zb)) * gf;
  ds = inside ? ds_inside : ds_outside;
  dz = inside ? 0.0f : ((dy * -1.0f) * s) * gf;
  return dy * (inside ? 1.0f : 0.0f);
}

}  // namespace qkernels
