// Launch-level interface of the fused observer kernels (spec: qkernels/reference/fused_observer.py).
// Torch-free. x is walked in storage order as [outer, channels, inner] (per tensor: channels = 1).
#pragma once

#include <cstdint>

#include "qkernels/fake_quant_kernels.h"
#include "qkernels/fused_observer_math.h"

namespace qkernels {

enum class QParamsMode : int { Fused = 0, Observer = 1 };

struct ObserverParams {
  DType dtype;
  int64_t outer, channels, inner;
  const void* x;
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
  bool small_scale_floor;        // Fused mode: FBGEMM's CPU floor
};

namespace cpu {
// Folds the NaN-propagating min/max of rows [row_begin, row_end) into lo/hi [channels] (the caller splits
// the rows across threads and combines the per-thread arrays; min and max do not depend on the order).
void fused_observer_minmax(const ObserverParams& p, int64_t row_begin, int64_t row_end, float* lo, float* hi);
// The rest of one step, per channel: with observe, the moving averages of the current min/max; with
// recompute, the qparams of the running stats into scale and zero_point.
void fused_observer_finish(const ObserverParams& p, const float* cur_min, const float* cur_max, bool observe,
                           bool recompute);
}  // namespace cpu

}  // namespace qkernels
