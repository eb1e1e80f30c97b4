// Per-element math of Nagel et al.'s oscillation dampening loss, shared by the CPU and CUDA kernels. Host-and-device,
// torch-free. The spec is qkernels/reference/oscillation_dampening.py: every float32 operation below is one rounding
// of the spec, in its order (the build contracts nothing into FMA). The integer x is the fused fake-quant forward's
// (qkernels/oscillation_fake_quant_math.h), frozen substitution included.
#pragma once

#include <cstdint>

#include "qkernels/oscillation_fake_quant_math.h"  // oscillation_clamped
#include "qkernels/reduce.h"                       // nan_min, nan_max

namespace qkernels {

// One element: returns e = d * d and writes dw (the weight's gradient inside the clip range, else 0) and ds (the
// scale's gradient through an active clip bound, else 0), both before the division by K:
//   x = frozen ? frozen_x_int : clamp(rne(w * inv) + z),  d = float32(x - z) * s - min(max(w, lo), hi),  g = -2 d
// with lo = float32(qmin - z) * s and hi = float32(qmax - z) * s. min/max propagate NaN as torch.minimum/maximum.
// Selects rather than branches, so that the CPU loops vectorize.
QK_HOST_DEVICE float oscillation_dampening_element(float w, bool frozen, int8_t frozen_x_int, float s, float inv,
                                                   float z, float qmin, float qmax, float& dw, float& ds) {
  bool inside;  // (of the fake-quant mask: not used by the loss)
  const float clamped = oscillation_clamped(w, inv, z, qmin, qmax, inside);
  const float x = frozen ? static_cast<float>(frozen_x_int) : clamped;
  const float low = qmin - z, high = qmax - z;
  const float lo = low * s, hi = high * s;
  const float d = (x - z) * s - nan_min(nan_max(w, lo), hi);
  const float g = -2.0f * d;
  const bool below = w < lo, above = w > hi;
  dw = (w >= lo) & (w <= hi) ? g : 0.0f;
  ds = below ? g * low : (above ? g * high : 0.0f);
  return d * d;
}

}  // namespace qkernels
