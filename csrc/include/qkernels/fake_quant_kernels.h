// Launch-level interface of the fake-quant kernels: POD parameter structs and raw-pointer entry points,
// implemented once for the CPU (csrc/cpu/fake_quant.cpp) and once for CUDA (csrc/cuda/fake_quant.cu).
// Torch-free: the torch glue in csrc/ops/ fills these structs from tensors.
#pragma once

#include <cstdint>

#include "qkernels/fake_quant_math.h"

namespace qkernels {

// Elements are addressed in storage order: x, out and mask share one dense layout. The mask is one byte
// (0/1) per element, or with mask_packed one bit per element: bit k of mask[j] belongs to element 8j + k.
struct PerTensorParams {
  DType dtype;
  Flavour flavour;
  int64_t numel;
  const void* x;
  void* out;
  uint8_t* mask;  // nullptr: no mask is written
  bool mask_packed;
  // Scalar qparams, replaced by the values behind the pointers that are set (read on the device by CUDA):
  // float scale, int32 zero point, int32 enable flag (0 = pass x through with an all-true mask).
  float scale;
  int64_t zero_point;
  bool enabled;
  const float* scale_ptr;
  const int32_t* zero_point_ptr;
  const int32_t* enabled_ptr;
  int64_t quant_min;
  int64_t quant_max;
};

// The element at storage offset i belongs to channel (i / inner) % channels.
struct PerChannelParams {
  DType dtype;
  Flavour flavour;
  int64_t numel;
  const void* x;
  void* out;
  uint8_t* mask;
  bool mask_packed;
  const float* scale;           // [channels]
  const int32_t* zero_point_i;  // [channels], or nullptr when the zero point is float
  const float* zero_point_f;    // [channels], or nullptr when the zero point is int
  int64_t channels;
  int64_t inner;
  int64_t quant_min;
  int64_t quant_max;
  bool use_fma;  // float zero point: one FMA for x*inv + z (CUDA, and aten CPU builds above DEFAULT)
};

// out = grad * mask (mask promoted to grad's type, so -0.0 and NaN follow IEEE multiplication).
struct BackwardParams {
  DType dtype;
  int64_t numel;
  const void* grad;
  const uint8_t* mask;
  bool mask_packed;
  void* out;
};

namespace cpu {
// Each processes storage offsets [begin, end); the caller splits the range across threads, at multiples of
// 8 elements when the mask is packed.
void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end);
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end);
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
// Return a cudaError_t value (0 on success); stream is a cudaStream_t.
int fake_quant_per_tensor(const PerTensorParams& p, void* stream);
int fake_quant_per_channel(const PerChannelParams& p, void* stream);
int fake_quant_backward(const BackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
