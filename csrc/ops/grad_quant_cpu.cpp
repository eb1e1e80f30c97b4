// The gradient quantization family's private CPU ops qkernels::_grad_quant_{absmax, quantize}_cpu: thin torch glue
// over csrc/cpu/grad_quant.cpp. Each launcher is one at::parallel_for over the fixed blocks of its pass; the
// partials (a group's block maxima, the chunks' clipped counts) are finished here in block order, so the results
// never depend on the thread count.
#include <ATen/Parallel.h>

#include "grad_quant_glue.h"
#include "reduce_glue.h"

namespace qkernels {

void grad_quant_absmax_cpu(const at::Tensor& g, int64_t n, at::Tensor& amax) {
  GradQuantAbsmaxParams p = glue::grad_quant_absmax_params(g, n, amax, "_grad_quant_absmax_cpu");
  const ReduceDims dims{p.numel / n, 1, 1, n};
  const ReduceBlocks blocks = grad_quant_absmax_blocks(p.numel, n);
  at::Tensor partials;
  if (blocks.P > 1) {  // a group of several blocks: their maxima first (with one, the kernel writes amax itself)
    partials = at::empty({dims.B * blocks.P}, amax.options());
    p.partial = partials.data_ptr<float>();
  }
  glue::parallel_for_blocks(dims, blocks, [&](int64_t b, int64_t e) { cpu::grad_quant_absmax(p, b, e); });
  if (blocks.P > 1) {
    for (int64_t j = 0; j < dims.B; ++j) p.amax[j] = finish<AbsMaxCombine>(p.partial + j * blocks.P, blocks.P, 1);
  }
}

void grad_quant_quantize_cpu(const at::Tensor& g, int64_t n, const at::Tensor& amax, int64_t bits,
                             const at::Tensor& clip_ratio, const std::optional<at::Tensor>& key, bool packed,
                             at::Tensor& out, at::Tensor& scales, at::Tensor& n_clipped) {
  GradQuantParams p = glue::grad_quant_params(g, n, amax, bits, clip_ratio, key, packed, out, scales, n_clipped,
                                              "_grad_quant_quantize_cpu");
  const ReduceDims dims{1, 1, 1, p.numel};
  const ReduceBlocks blocks = cpu::grad_quant_quantize_blocks(p.numel);
  const at::Tensor partials = at::empty({blocks.P}, n_clipped.options());
  p.count_partial = partials.data_ptr<int64_t>();
  glue::parallel_for_blocks(dims, blocks, [&](int64_t b, int64_t e) { cpu::grad_quant_quantize(p, b, e); });
  *n_clipped.data_ptr<int64_t>() = finish<CountCombine>(p.count_partial, blocks.P, 1);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_GRAD_QUANT_IMPLS)
