// Launch-level interface of the gradient quantization kernels: POD params and raw-pointer entry points, implemented
// for the CPU (csrc/cpu/grad_quant.cpp; the CUDA side's layout and entry points: qkernels/grad_quant_cuda.h).
// Torch-free. Per-element math: qkernels/grad_quant_math.h.
//
// g is contiguous and walked flat in G = numel / n groups of n consecutive elements. absmax is the reduction layout
// [G, 1, 1, n] with the blocks of grad_quant_absmax_blocks (run mode: P chunks of each group; AbsMax partials [G, P],
// finished in block order). quantize is elementwise on the layout [1, 1, 1, numel] of grad_quant_quantize_blocks: one
// int64 clipped-count partial per chunk (Count: exact in any order). Its chunks are even-sized wherever there is more
// than one (the target is even), so no byte of the packed codes spans two chunks.
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/grad_quant_math.h"
#include "qkernels/reduce.h"

namespace qkernels {

constexpr int64_t kGradQuantReduceTarget = 16384;  // elements per block of both passes (even: see above)

inline ReduceBlocks grad_quant_absmax_blocks(int64_t numel, int64_t n) {
  return make_reduce_blocks(ReduceDims{numel / n, 1, 1, n}, kGradQuantReduceTarget);
}

struct GradQuantAbsmaxParams {
  const void* g;
  DType dtype;
  int64_t numel, n;  // numel >= 1, n >= 1 divides it
  float* amax;       // [G]: max|g| per group, NaN for a group holding a NaN or an infinity
  float* partial;    // [G * P] when a group has several blocks (P > 1), else unused
};

struct GradQuantParams {
  const void* g;
  DType dtype;
  int64_t numel, n;
  int bits;                 // 2..8 (2..4 packed)
  const float* amax;        // [G], absmax's
  const float* clip_ratio;  // [], γ, read by the kernel
  const int64_t* key;       // [2] = [seed, offset] read by the kernel; nullptr: nearest rounding
  bool packed;
  void* out;                // g's dtype and numel, or packed: uint8 [ceil(numel / 2)]
  float* scales;            // [G]
  int64_t* n_clipped;       // [] (CUDA: finished on the device; the CPU glue adds the partials itself)
  int64_t* count_partial;   // CPU: [P of grad_quant_quantize_blocks(numel)]; CUDA: grad_quant_count_partials
};

namespace cpu {

inline ReduceBlocks grad_quant_quantize_blocks(int64_t numel) {
  return make_reduce_blocks(ReduceDims{1, 1, 1, numel}, kGradQuantReduceTarget);
}

// Work items [begin, end) of absmax: item k is block k % P of group k / P (grad_quant_absmax_blocks); it writes its
// block's max|g| (NaN if the block holds a NaN or an infinity) to partial[k], or to amax[k] when P == 1.
void grad_quant_absmax(const GradQuantAbsmaxParams& p, int64_t begin, int64_t end);
// Work items [begin, end) of quantize: item k is chunk k of grad_quant_quantize_blocks(numel); it writes the out
// elements (packed: the bytes) of its chunk, the scale of every group that starts in it and its clipped count to
// count_partial[k].
void grad_quant_quantize(const GradQuantParams& p, int64_t begin, int64_t end);

}  // namespace cpu

}  // namespace qkernels
