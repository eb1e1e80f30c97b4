// Per-element math of weight fake quantization with oscillation tracking and freezing (Nagel et al. 2022), shared
// by the CPU and CUDA kernels. Host-and-device, torch-free. The spec is qkernels/reference/oscillation_fake_quant.py:
// every float32 operation below is one rounding of the spec, in its order (the build contracts nothing into FMA:
// -ffp-contract=off, nvcc --fmad=false), so the state evolves bit for bit as the official tracker's.
#pragma once

#include <cstdint>

#include "qkernels/fake_quant_math.h"  // round_half_even

namespace qkernels {

// The call's flags and EMA constants, as the kernels read them (once per thread) from the device tensors.
struct OscillationFlags {
  bool started_prev;  // started[0]: an earlier tracked call set prev_x_int
  bool started_ema;   // started[1]: the integer EMA has started
  bool tracking;      // update the state
  bool freezing;      // tracking && threshold > 0
  bool use_ema_x_int;
  float threshold;
  float m, cm;  // float32(momentum), float32(1 - momentum) (formed in float64)
};

// One element's state (the six per-weight tensors).
struct OscillationElement {
  int8_t prev_x_int, prev_switch_dir, frozen_x_int;
  bool frozen;
  float ema_oscillation, ema_x_int;
};

// float -> int8 as torch's .to(torch.int8) gives for the values that occur here: integers within int8 exactly,
// NaN as 0.
QK_HOST_DEVICE int8_t oscillation_int8(float v) { return static_cast<int8_t>(v == v ? v : 0.0f); }

// The integer of one element before substitution: q = rne(w * inv) + z (NaN stays NaN), its clamp to the grid, and
// whether q lies inside it.
QK_HOST_DEVICE float oscillation_clamped(float w, float inv, float z, float qmin, float qmax, bool& inside) {
  const float q = round_half_even(w * inv) + z;
  inside = (q >= qmin) & (q <= qmax);
  return q < qmin ? qmin : (q > qmax ? qmax : q);
}

// One element of the forward step: returns the integer x after frozen substitution (float32), writes the gradient
// mask and whether the element oscillated in this call (counted only when tracking), and updates st in place as
// the spec's state update (the frozen state that decides x and mask is the one of before the call). Selects and
// bitwise bool operations rather than branches, so that the CPU loops vectorize.
QK_HOST_DEVICE float oscillation_step(float w, float inv, float z, float qmin, float qmax, const OscillationFlags& f,
                                      OscillationElement& st, bool& mask, bool& osc) {
  bool inside;
  const float clamped = oscillation_clamped(w, inv, z, qmin, qmax, inside);
  const float x = st.frozen ? static_cast<float>(st.frozen_x_int) : clamped;
  mask = !st.frozen & inside;

  const float prev = f.started_prev ? static_cast<float>(st.prev_x_int) : x;
  const float d = prev - x;
  const int8_t dir = d > 0.0f ? 1 : (d < 0.0f ? -1 : 0);  // torch.sign, NaN -> 0 as int8
  osc = f.tracking & (st.prev_switch_dir * dir == -1);
  const float ema = f.m * (osc ? 1.0f : 0.0f) + f.cm * st.ema_oscillation;  // two roundings, as the spec
  const float e = f.started_ema ? st.ema_x_int : x;
  const bool sel = f.freezing & (ema > f.threshold);
  st.prev_x_int = f.tracking ? oscillation_int8(x) : st.prev_x_int;
  st.prev_switch_dir = f.tracking & (d != 0.0f) ? dir : st.prev_switch_dir;  // NaN != 0 too, as in the spec
  st.ema_oscillation = f.tracking ? ema : st.ema_oscillation;
  st.frozen_x_int = sel ? oscillation_int8(f.use_ema_x_int ? round_half_even(e) : x) : st.frozen_x_int;
  st.frozen = st.frozen | sel;
  const float ema_x = f.m * x + f.cm * e;  // two roundings, as the spec
  st.ema_x_int = f.freezing & f.use_ema_x_int ? ema_x : st.ema_x_int;
  return x;
}

// The forward output of integer x: float32(x - z) * s (narrowed to the weight's dtype by the caller).
QK_HOST_DEVICE float oscillation_output(float x, float s, float z) { return (x - z) * s; }

// One element of the backward: returns dw (dy where mask, else 0) and writes ds (times gf):
//   mask:  ds = ((dy * d) * inv) * gf, d = float32(x_int - z) * s - w      (LSQ inside the range)
//   else:  ds = (dy * float32(x_int - z)) * gf                              (clipped or frozen)
QK_HOST_DEVICE float oscillation_grad(float dy, float w, float x_int, bool mask, float s, float inv, float z,
                                      float gf, float& ds) {
  const float level = x_int - z;
  const float inside = ((dy * (level * s - w)) * inv) * gf;
  const float outside = (dy * level) * gf;
  ds = mask ? inside : outside;
  return mask ? dy : 0.0f;
}

}  // namespace qkernels
