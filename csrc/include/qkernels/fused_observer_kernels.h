// Launch-level interface of the fused observer kernels (spec: qkernels/reference/fused_observer.py).
// Torch-free. x is walked in storage order as [outer, channels, inner] (per tensor: channels = 1).
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/fused_observer_math.h"

namespace qkernels {

// A one-element flag tensor, read where it lives (the CUDA kernels read it on the device: no host sync).
// Integer types by width (their bits are compared with zero, so signedness and bool need no type of their own).
enum class FlagType : int { Int8, Int16, Int32, Int64, Float16, BFloat16, Float32, Float64 };
struct Flag {
  const void* ptr;
  FlagType type;
};

// Nonzero after truncation toward zero, as torch's CPU op reads a flag (.item().toInt()): an integer flag
// is on when nonzero, a float one when |v| >= 1 or NaN, decided on the bit pattern (sign cleared, a pattern
// at or above that of 1.0 is |v| >= 1, inf or NaN), so fp16/bf16 need no conversion.
QK_HOST_DEVICE bool flag_is_on(const Flag& f) {
  switch (f.type) {
    case FlagType::Int8:
      return *static_cast<const uint8_t*>(f.ptr) != 0;
    case FlagType::Int16:
      return *static_cast<const uint16_t*>(f.ptr) != 0;
    case FlagType::Int32:
      return *static_cast<const uint32_t*>(f.ptr) != 0;
    case FlagType::Int64:
      return *static_cast<const uint64_t*>(f.ptr) != 0;
    case FlagType::Float16:
      return (*static_cast<const uint16_t*>(f.ptr) & 0x7fffu) >= 0x3c00u;
    case FlagType::BFloat16:
      return (*static_cast<const uint16_t*>(f.ptr) & 0x7fffu) >= 0x3f80u;
    case FlagType::Float32:
      return (*static_cast<const uint32_t*>(f.ptr) & 0x7fffffffu) >= 0x3f800000u;
    case FlagType::Float64:
      return (*static_cast<const uint64_t*>(f.ptr) & 0x7fffffffffffffffull) >= 0x3ff0000000000000ull;
  }
  return false;
}

struct ObserverParams {
  DType dtype;
  int64_t outer, channels, inner;
  const void* x;
  Flag observer_on, fake_quant_on;
  float* running_min;  // [channels], updated in place
  float* running_max;
  float* scale;             // [channels]
  int32_t* zero_point_i32;  // [channels]: one of the two is set
  int64_t* zero_point_i64;
  float averaging_const;
  int64_t quant_min, quant_max;
  bool symmetric;
  QParamsMode mode;
  float eps;                     // Observer mode
  int32_t symmetric_zero_point;  // Observer mode
  // Flavour::Cpu: the moving average in two roundings, FBGEMM's 6.1e-5 scale floor (Fused mode);
  // Flavour::Cuda: the moving average in one FMA, no floor (aten's CUDA kernels).
  Flavour flavour;
};

// Whether the qparams are recomputed this step: Fused mode whenever fake quantization is on (torch's fused
// op), Observer mode whenever the observer is.
QK_HOST_DEVICE bool observer_recomputes(const ObserverParams& p, bool observe) {
  return p.mode == QParamsMode::Fused ? flag_is_on(p.fake_quant_on) : observe;
}

// The rest of one step for channel c, given its current min/max: with observe, the moving averages; with
// recompute, the qparams of the running stats into scale and zero_point.
QK_HOST_DEVICE void observer_finish_channel(const ObserverParams& p, int64_t c, float cur_min, float cur_max,
                                            bool observe, bool recompute) {
  const bool contracted = p.flavour == Flavour::Cuda;
  if (observe) {
    p.running_min[c] = moving_average(p.running_min[c], cur_min, p.averaging_const, contracted);
    p.running_max[c] = moving_average(p.running_max[c], cur_max, p.averaging_const, contracted);
  }
  if (!recompute) return;
  const QParams q = p.mode == QParamsMode::Fused
                        ? choose_qparams_fused(p.running_min[c], p.running_max[c], p.quant_min, p.quant_max,
                                               p.symmetric, p.flavour == Flavour::Cpu)
                        : choose_qparams_observer(p.running_min[c], p.running_max[c], p.quant_min, p.quant_max,
                                                  p.symmetric, p.eps, p.symmetric_zero_point);
  p.scale[c] = q.scale;
  if (p.zero_point_i32) p.zero_point_i32[c] = q.zero_point;
  if (p.zero_point_i64) p.zero_point_i64[c] = q.zero_point;
}

namespace cpu {
// The reduction layer's dims of the min/max pass: x as [1, outer, channels, inner] (qkernels/reduce.h).
inline ReduceDims observer_dims(const ObserverParams& p) { return ReduceDims{1, p.outer, p.channels, p.inner}; }
// Writes the NaN-propagating (min, max) partial of every block of work items [begin, end) of the layout
// `blocks` of observer_dims(p) into partials [P, channels] (reduce_items(...) items; each block is formed by
// one item in a fixed order, so the partials do not depend on how the items are split across threads).
void fused_observer_minmax(const ObserverParams& p, const ReduceBlocks& blocks, int64_t begin, int64_t end,
                           MinMax* partials);
}  // namespace cpu

namespace cuda {
// The whole step on the device, flags read there: a min/max pass over x into `partials` (2 * channels *
// fused_observer_parts(p) floats of scratch), skipped by every CTA while the observer is off, then one
// CTA per channel folds its partials and calls observer_finish_channel. Returns a cudaError_t value.
int64_t fused_observer_parts(const ObserverParams& p);
int fused_observer_update(const ObserverParams& p, float* partials, void* stream);
}  // namespace cuda

}  // namespace qkernels
