// Launch-level interface of the gradient quantization CUDA kernels (csrc/cuda/grad_quant.cu): their layout and
// raw-pointer entry points, on the params of qkernels/grad_quant_kernels.h. Torch-free.
//
// g is contiguous and walked flat in G = numel / n groups of n consecutive elements. absmax is the reduction layout
// [G, 1, 1, n] with the blocks of grad_quant_absmax_blocks (run mode: P chunks of each group); groups of at most
// kGradQuantThreadGroup elements are reduced by one thread each instead. quantize is elementwise (one thread per
// pair of elements, the bytes of the packed codes) with one clipped-count partial per CTA of its grid,
// grad_quant_count_partials(numel) of them.
#pragma once

#include <cstdint>

#include "qkernels/grad_quant_kernels.h"

namespace qkernels {

constexpr int64_t kGradQuantThreadGroup = 64;      // groups up to this size: one thread per group
constexpr int64_t kGradQuantThreads = 256;         // threads per CTA of every kernel
constexpr int64_t kGradQuantMaxCtas = 2048;        // quantize's grid (grid-stride beyond): its count partials

// float32 partials absmax needs: G * P where a group takes several CTAs (P > 1), else none.
inline int64_t grad_quant_absmax_partials(int64_t numel, int64_t n) {
  const ReduceBlocks k = grad_quant_absmax_blocks(numel, n);
  return n > kGradQuantThreadGroup && k.P > 1 ? numel / n * k.P : 0;
}

// quantize's CTAs, and so its int64 count partials: one thread per pair of elements, at most kGradQuantMaxCtas.
inline int64_t grad_quant_count_partials(int64_t numel) {
  const int64_t ctas = ((numel + 1) / 2 + kGradQuantThreads - 1) / kGradQuantThreads;
  return ctas < kGradQuantMaxCtas ? ctas : kGradQuantMaxCtas;
}

namespace cuda {
// On `stream`, reading what earlier work wrote on the device (no host sync); return a cudaError_t value.
int grad_quant_absmax(const GradQuantAbsmaxParams& p, void* stream);
int grad_quant_quantize(const GradQuantParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
