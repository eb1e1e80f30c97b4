// Launch-level interface of the gradient quantization CUDA kernels (csrc/cuda/grad_quant.cu): POD params and
// raw-pointer entry points. Torch-free.
//
// g is contiguous and walked flat in G = numel / n groups of n consecutive elements. absmax is the reduction layout
// [G, 1, 1, n] with the blocks of make_reduce_blocks({G, 1, 1, n}, kGradQuantReduceTarget) (run mode: P chunks of
// each group); groups of at most kGradQuantThreadGroup elements are reduced by one thread each instead. quantize is
// elementwise (one thread per pair of elements, the bytes of the packed codes) with one clipped-count partial per
// CTA of its grid, grad_quant_count_partials(numel) of them.
#pragma once

#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/grad_quant_math.h"
#include "qkernels/reduce.h"

namespace qkernels {

constexpr int64_t kGradQuantReduceTarget = 16384;  // elements per absmax block (one CTA)
constexpr int64_t kGradQuantThreadGroup = 64;      // groups up to this size: one thread per group
constexpr int64_t kGradQuantThreads = 256;         // threads per CTA of every kernel
constexpr int64_t kGradQuantMaxCtas = 2048;        // quantize's grid (grid-stride beyond): its count partials

inline ReduceBlocks grad_quant_absmax_blocks(int64_t numel, int64_t n) {
  return make_reduce_blocks(ReduceDims{numel / n, 1, 1, n}, kGradQuantReduceTarget);
}

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

struct GradQuantAbsmaxParams {
  const void* g;
  DType dtype;
  int64_t numel, n;  // numel >= 1, n >= 1 divides it
  float* amax;       // [G]: max|g| per group, NaN for a group holding a NaN or an infinity
  float* partial;    // [grad_quant_absmax_partials(numel, n)]
};

struct GradQuantParams {
  const void* g;
  DType dtype;
  int64_t numel, n;
  int bits;                 // 2..8 (2..4 packed)
  const float* amax;        // [G], absmax's
  const float* clip_ratio;  // [], γ, read on the device
  const int64_t* key;       // [2] = [seed, offset] read on the device; nullptr: nearest rounding
  bool packed;
  void* out;                // g's dtype and numel, or packed: uint8 [ceil(numel / 2)]
  float* scales;            // [G]
  int64_t* n_clipped;       // []
  int64_t* count_partial;   // [grad_quant_count_partials(numel)]
};

namespace cuda {
// On `stream`, reading what earlier work wrote on the device (no host sync); return a cudaError_t value.
int grad_quant_absmax(const GradQuantAbsmaxParams& p, void* stream);
int grad_quant_quantize(const GradQuantParams& p, void* stream);
}  // namespace cuda

}  // namespace qkernels
