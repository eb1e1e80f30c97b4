// Per-element math of Kim et al.'s low-bit gradient quantization, shared by the CPU and CUDA kernels.
// Host-and-device, torch-free. The spec is qkernels/reference/grad_quant.py: every float32 operation below is one
// rounding of the spec, in its order (the build contracts nothing into FMA; g / s and c / L are IEEE divisions).
#pragma once

#include <cmath>
#include <cstdint>

#include "qkernels/fake_quant_math.h"  // round_half_even
#include "qkernels/host_device.h"
#include "qkernels/philox.h"

namespace qkernels {

// One group's constants from its max m = max|g| (NaN for a non-finite group) and the clip ratio γ, with
// L = 2^(b-1) - 1: the clip value c = γ·m, the step s = c / L, the scale written out (0 for an all-zero group,
// else s) and whether the group quantizes (m finite and m > 0; otherwise every code is 0).
struct GradQuantGroup {
  float levels, c, s, scale;
  bool usable;
};

QK_HOST_DEVICE GradQuantGroup grad_quant_group(float m, float gamma, int bits) {
  const float levels = static_cast<float>((1 << (bits - 1)) - 1);
  const float c = gamma * m;
  const float s = c / levels;
  return GradQuantGroup{levels, c, s, m == 0.0f ? 0.0f : s, m > 0.0f && m < INFINITY};
}

// clamp(g / s, -L, L), NaN kept (torch.clamp): a NaN only arises where γ·m underflows to s = 0.
QK_HOST_DEVICE float grad_quant_scaled(float g, const GradQuantGroup& q) {
  const float v = g / q.s;
  return v < -q.levels ? -q.levels : (v > q.levels ? q.levels : v);
}

// Round half to even with the sign of a zero kept, as torch.round (-0.3 gives -0.0; the host path of
// round_half_even gives +0.0 there). NaN passes through.
QK_HOST_DEVICE float grad_quant_rne(float v) { return copysignf(round_half_even(v), v); }

// r: the element's uniform 24-bit integer, the top 24 bits of Philox word 0 of its flat index (philox.h).
QK_HOST_DEVICE uint32_t grad_quant_uniform24(int64_t seed, int64_t offset, int64_t index) {
  return philox_element(seed, offset, index).w0 >> 8;
}

// The code k of element g: nearest rne(v), v = clamp(g / s, -L, L); 0 in a group that does not quantize.
QK_HOST_DEVICE float grad_quant_code_nearest(float g, const GradQuantGroup& q) {
  const float k = grad_quant_rne(grad_quant_scaled(g, q));
  return q.usable ? k : 0.0f;
}

// Stochastic: floor(v) + (r < (v - floor(v)) * 2^24), so P(up) = ceil(frac * 2^24) / 2^24 (float(r) is exact).
QK_HOST_DEVICE float grad_quant_code_stochastic(float g, const GradQuantGroup& q, uint32_t r) {
  const float v = grad_quant_scaled(g, q);
  const float low = floorf(v);
  const float k = low + (static_cast<float>(r) < (v - low) * 16777216.0f ? 1.0f : 0.0f);
  return q.usable ? k : 0.0f;
}

// Whether g counts as clipped: |g| > c, strict (false for a NaN g or a non-finite group's NaN c).
QK_HOST_DEVICE bool grad_quant_clipped(float g, const GradQuantGroup& q) { return fabsf(g) > q.c; }

// ĝ = k * scale in float32 (NaN for a non-finite group: 0 * NaN); the caller narrows to g's dtype.
QK_HOST_DEVICE float grad_quant_dequantize(float k, const GradQuantGroup& q) { return k * q.scale; }

// The int4 nibble of code k (two's complement, k & 0xF); a NaN code (s = 0 above) packs as 0.
QK_HOST_DEVICE uint32_t grad_quant_nibble(float k) {
  return k == k ? static_cast<uint32_t>(static_cast<int32_t>(k)) & 0xFu : 0u;
}

}  // namespace qkernels
