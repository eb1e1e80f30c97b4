// The gradient quantization family's private CUDA ops qkernels::_grad_quant_{absmax,quantize}_cuda: thin torch
// glue over csrc/cuda/grad_quant.cu (qkernels/grad_quant_cuda.h). Also built for the CPU emulator (cuda_glue.h).
// The schemas are LAUNCHERS in qkernels/grad_quant.py; the public op checks its inputs, these checks are internal
// checks of what it hands over. Nothing here reads a device value: amax, clip_ratio and the key are read by the
// kernels, which also finish their partials on the device (the partials' buffers are stream-ordered allocations).
#include "cuda_glue.h"
#include "grad_quant_glue.h"
#include "qkernels/grad_quant_cuda.h"

// The family has no eager fast path: nothing to register beyond the launchers.
#define QKERNELS_GRAD_QUANT_NO_EAGER(m, ...) (void)m

namespace qkernels {

void grad_quant_absmax_cuda(const at::Tensor& g, int64_t n, at::Tensor& amax) {
  GradQuantAbsmaxParams p = glue::grad_quant_absmax_params(g, n, amax, "_grad_quant_absmax_cuda");
  const glue::DeviceGuard guard(g.device());
  const at::Tensor partial = at::empty({grad_quant_absmax_partials(g.numel(), n)}, amax.options());
  p.partial = partial.numel() > 0 ? partial.data_ptr<float>() : nullptr;
  glue::check_launch(cuda::grad_quant_absmax(p, glue::current_stream()));
}

void grad_quant_quantize_cuda(const at::Tensor& g, int64_t n, const at::Tensor& amax, int64_t bits,
                              const at::Tensor& clip_ratio, const std::optional<at::Tensor>& key, bool packed,
                              at::Tensor& out, at::Tensor& scales, at::Tensor& n_clipped) {
  GradQuantParams p = glue::grad_quant_params(g, n, amax, bits, clip_ratio, key, packed, out, scales, n_clipped,
                                              "_grad_quant_quantize_cuda");
  const glue::DeviceGuard guard(g.device());
  const at::Tensor partial = at::empty({grad_quant_count_partials(g.numel())}, n_clipped.options());
  p.n_clipped = n_clipped.data_ptr<int64_t>();
  p.count_partial = partial.data_ptr<int64_t>();
  glue::check_launch(cuda::grad_quant_quantize(p, glue::current_stream()));
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_GRAD_QUANT_IMPLS, QKERNELS_GRAD_QUANT_NO_EAGER, QKERNELS_GRAD_QUANT_NO_EAGER)
