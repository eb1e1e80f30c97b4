// Launch-level interface of the oscillation dampening kernels: POD params and raw-pointer entry points, implemented
// for the CPU (csrc/cpu/oscillation_dampening.cpp) and CUDA (csrc/cuda/oscillation_dampening.cu). Torch-free.
//
// Layout (as qkernels/oscillation_fake_quant_kernels.h): w, frozen, frozen_x_int and dw are contiguous and walked in
// storage order as [B, O, C, I]; element e = ((b * O + o) * C + c) * I + i belongs to quantizer b * C + c, whose
// scale and zero point (float32, the zero point integral) are scale[b * C + c] and zero_point[b * C + c]. The sums
// of e and ds are formed per block of the reduction layer's layout (qkernels/reduce.h) into float32 partials
// [B, P, C], which the caller finishes in float64.
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/oscillation_dampening_math.h"
#include "qkernels/reduce.h"

namespace qkernels {

struct DampeningParams {
  DType dtype;  // of w
  ReduceDims dims;
  ReduceBlocks blocks;
  const void* w;
  const bool* frozen;
  const int8_t* frozen_x_int;
  float* dw;  // float32, the weight's gradient before the division by K
  const float* scale;
  const float* zero_point;
  float quant_min, quant_max;
  float* e_partial;   // [B, P, C]
  float* ds_partial;  // [B, P, C]
};

namespace cpu {
// Work items [begin, end) of the forward (reduce_items(p.dims, p.blocks) of them: item (b, c, p) = (b * C + c) * P
// + p in run mode, (b, p) = b * P + p in row mode), each writing dw of its block(s) and their partials.
void oscillation_dampening_forward(const DampeningParams& p, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
int oscillation_dampening_forward(const DampeningParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
