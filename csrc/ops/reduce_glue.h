// Torch glue of the reduction layer (qkernels/reduce.h), shared by the families' native glue: the CPU loop over
// a layout's work items, and the finish of Sum partials. The Python/Triton twin is qkernels/reference/reduce.py.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "glue.h"
#include "qkernels/reduce.h"

namespace qkernels {
namespace glue {

// Runs fn(begin, end) over the work items of a layout with at::parallel_for. Items hold up to the layout's target
// elements, and far fewer in a small input: each thread takes at least kCpuGrain elements' worth of them (waking
// the thread pool costs more than a small pass). Which thread forms a block never changes its partial.
template <typename F>
void parallel_for_blocks(const ReduceDims& dims, const ReduceBlocks& blocks, const F& fn) {
  const int64_t items = reduce_items(dims, blocks);
  const int64_t per_item = std::max<int64_t>(1, dims.numel() / std::max<int64_t>(1, items));
  at::parallel_for(0, items, std::max<int64_t>(1, kCpuGrain / per_item), fn);
}

// The finish of Sum partials [G, B, P, C] (float32, G sums per quantizer, e.g. ds and dz): sum g of quantizer
// b * C + c is its P partials added in float64 in order p = 0, 1, ..., P - 1 and rounded once to dtypes[g], 1-D
// [B * C], in a storage of its own. On CPU tensors a host loop (aten's float64 sum and casts cost far more than
// these few sums); on the device aten's float64 sum over P (deterministic; a different order of the float64 adds
// can only change the rounded result in a near-tie). Empty tensors when the partials are (no sums wanted).
inline std::vector<at::Tensor> finish_sums(const at::Tensor& partials, const std::vector<at::ScalarType>& dtypes) {
  std::vector<at::Tensor> out;
  if (partials.dim() != 4) {
    for (const at::ScalarType t : dtypes) out.push_back(partials.new_empty({0}, t));
    return out;
  }
  const int64_t B = partials.size(1), P = partials.size(2), C = partials.size(3);
  if (!partials.is_cpu()) {
    const at::Tensor sums = partials.sum(2, /*keepdim=*/false, at::kDouble);
    for (size_t g = 0; g < dtypes.size(); ++g) {
      out.push_back(sums[static_cast<int64_t>(g)].reshape(-1).to(dtypes[g], false, /*copy=*/true));
    }
    return out;
  }
  const at::Tensor src_t = partials.contiguous();
  const float* src = src_t.const_data_ptr<float>();
  for (size_t g = 0; g < dtypes.size(); ++g) {
    at::Tensor grad = at::empty({B * C}, partials.options().dtype(dtypes[g]));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtypes[g], "finish_sums", [&] {
      scalar_t* dst = grad.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          const float* first = src + ((static_cast<int64_t>(g) * B + b) * P) * C + c;
          dst[b * C + c] = static_cast<scalar_t>(finish_sum(first, P, C));  // as aten's casts convert
        }
      }
    });
    out.push_back(grad);
  }
  return out;
}

}  // namespace glue
}  // namespace qkernels
