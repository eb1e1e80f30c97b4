// Launch-level interface of the oscillation regularizer kernels: POD params and raw-pointer entry points,
// implemented for the CPU (csrc/cpu/oscillation_regularizer.cpp) and CUDA (csrc/cuda/oscillation_regularizer.cu).
// Torch-free.
//
// A call covers L weight tensors of one dtype, each contiguous and walked flat: tensor l is the reduction layout
// [1, 1, 1, N_l] with the blocks of make_reduce_blocks({1, 1, 1, N_l}, kRegularizerReduceTarget) (run mode: P_l
// chunks of N_l), its Sum partials stored at offset[l] + p of one float32 array (offset: the P of the tensors
// before l). The caller finishes them in float64 (the CUDA entry points finish them on the device themselves).
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/oscillation_regularizer_math.h"
#include "qkernels/reduce.h"

namespace qkernels {

// qkernels.reference.oscillation_regularizer.REDUCE_TARGET
constexpr int64_t kRegularizerReduceTarget = 16384;

// One weight tensor of a call.
struct RegularizerSlot {
  const void* w;
  void* dw;           // backward: the gradient, w's dtype and shape
  int64_t numel;
  ReduceBlocks blocks;
  int64_t offset;     // of its first block's partial
};

struct RegularizerParams {
  DType dtype;
  int bits;
  const RegularizerSlot* slots;  // L of them, host memory (the CUDA entry points pass them as launch arguments)
  int64_t L;
  const float* amax;             // [L], the sums pass and the backward
  float* amax_partial;           // amax pass: [total P], NaN sticking
  float* e_partial;              // sums pass: [total P]
  float* t_partial;              // sums pass: [total P]
  int64_t* tie_partial;          // sums pass: [total P]
  const double* sums;            // backward: [L, 2], (S1 / N, S2)
  const int64_t* ties;           // backward: [L]
  const float* grad;             // backward: [], read on the device
  bool scale_grad;
};

namespace cpu {
// Work items [begin, end) of a pass over the call's blocks in order (item k: the k-th block of the concatenated
// tensors' blocks), each writing its block's partial(s) (amax, sums) or dw (backward).
void oscillation_regularizer_amax(const RegularizerParams& p, int64_t begin, int64_t end);
void oscillation_regularizer_sums(const RegularizerParams& p, int64_t begin, int64_t end);
void oscillation_regularizer_backward(const RegularizerParams& p, int64_t begin, int64_t end);
}  // namespace cpu

namespace cuda {
// Each pass on `stream`, its kernels reading what the earlier passes wrote on the device (no host sync). amax
// writes its block partials and out[l] = max|w_l| (float32 [L]); sums its block partials and out[l] = (S1_l / N_l,
// S2_l) (float64 [L, 2], the partials added in float64, not rounded) and ties[l] = c_l (int64 [L]); backward every
// dw. Return a cudaError_t value.
int oscillation_regularizer_amax(const RegularizerParams& p, float* out, void* stream);
int oscillation_regularizer_sums(const RegularizerParams& p, double* out, int64_t* ties, void* stream);
int oscillation_regularizer_backward(const RegularizerParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
