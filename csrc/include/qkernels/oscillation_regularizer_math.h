// Per-element math of Wenshøj et al.'s oscillation-inducing regularizer, shared by the CPU and CUDA kernels.
// Host-and-device, torch-free. The spec is qkernels/reference/oscillation_regularizer.py: every float32 operation
// below is one rounding of the spec, in its order (the build contracts nothing into FMA).
#pragma once

#include <cstdint>

#include "qkernels/fake_quant_math.h"  // round_half_even

namespace qkernels {

// The per-tensor constants of one pass: s = m / L and the tensor's max m (float32).
struct RegularizerTensor {
  float m, s;
};

QK_HOST_DEVICE RegularizerTensor regularizer_tensor(float m, int bits) {
  const float levels = static_cast<float>((1 << (bits - 1)) - 1);
  return RegularizerTensor{m, m / levels};
}

// q = s == 0 ? 0 : rne(w / s) * s (no clamp: |w / s| <= L; a NaN or infinite s gives NaN). A select, not a branch.
QK_HOST_DEVICE float regularizer_q(float w, const RegularizerTensor& t) {
  const float q = round_half_even(w / t.s) * t.s;
  return t.s == 0.0f ? 0.0f : q;
}

// The sums' terms of one element: e = q * q - w * w (returned) and t = q * (q - w); tie: |w| == m.
QK_HOST_DEVICE float regularizer_terms(float w, const RegularizerTensor& t, float& term, bool& tie) {
  const float q = regularizer_q(w, t);
  term = q * (q - w);
  tie = (w < 0.0f ? -w : w) == t.m;
  return q * q - w * w;
}

// The backward's per-tensor constants: coef = scale_grad && m > 0 ? float32(S2 / (float64(m) * c)) : 0 and
// factor = float32(float64(go) * 2 / N). Host and device; double arithmetic, once per tensor.
struct RegularizerBackward {
  float coef, factor;
};

QK_HOST_DEVICE RegularizerBackward regularizer_backward_constants(float m, double s2, int64_t ties, float go,
                                                                   int64_t numel, bool scale_grad) {
  const float coef = (scale_grad && m > 0.0f) ? static_cast<float>(s2 / (static_cast<double>(m) *
                                                                         static_cast<double>(ties)))
                                              : 0.0f;
  return RegularizerBackward{coef, static_cast<float>(static_cast<double>(go) * 2.0 / static_cast<double>(numel))};
}

// dw = ((q - w) + (|w| == m ? (w > 0 ? coef : -coef) : 0)) * factor, in float32 (the caller narrows to w's dtype).
QK_HOST_DEVICE float regularizer_grad(float w, const RegularizerTensor& t, const RegularizerBackward& b) {
  const float q = regularizer_q(w, t);
  const bool tie = (w < 0.0f ? -w : w) == t.m;
  const float scale_term = tie ? (w > 0.0f ? b.coef : -b.coef) : 0.0f;
  return ((q - w) + scale_term) * b.factor;
}

}  // namespace qkernels
