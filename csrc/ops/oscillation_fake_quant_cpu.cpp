// The oscillation fake-quant family's private CPU ops qkernels::_oscillation_fake_quant_{forward,backward}_cpu: thin
// torch glue over csrc/cpu/oscillation_fake_quant.cpp.
#include <ATen/Parallel.h>

#include <atomic>

#include "oscillation_fake_quant_glue.h"

namespace qkernels {

at::Tensor oscillation_forward_cpu(const at::Tensor& w, at::Tensor& out, at::Tensor& x_int, at::Tensor& mask,
                                   const at::Tensor& scale, const at::Tensor& zero_point, int64_t B, int64_t O,
                                   int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, at::Tensor& prev_x_int,
                                   at::Tensor& prev_switch_dir, at::Tensor& ema_oscillation, at::Tensor& frozen,
                                   at::Tensor& frozen_x_int, at::Tensor& ema_x_int, const at::Tensor& started,
                                   const at::Tensor& threshold, const at::Tensor& tracking, double momentum,
                                   bool use_ema_x_int, bool need_grad) {
  const ReduceDims dims = glue::oscillation_dims(w, scale, zero_point, B, O, C, I);
  std::vector<at::Tensor> flags;
  const OscillationForwardParams p = glue::oscillation_forward_params(
      w, out, x_int, mask, scale, zero_point, dims, quant_min, quant_max, prev_x_int, prev_switch_dir,
      ema_oscillation, frozen, frozen_x_int, ema_x_int, started, threshold, tracking, momentum, use_ema_x_int,
      need_grad, flags);
  std::atomic<int64_t> count{0};  // integer counts: exact in any order
  at::parallel_for(0, dims.numel(), glue::kCpuGrain, [&](int64_t b, int64_t e) {
    count.fetch_add(cpu::oscillation_fake_quant_forward(p, b, e), std::memory_order_relaxed);
  });
  return at::full({1}, count.load(), w.options().dtype(at::kLong));
}

at::Tensor oscillation_backward_cpu(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& x_int,
                                    const at::Tensor& mask, at::Tensor& dw, const at::Tensor& scale,
                                    const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                                    double grad_factor, bool need_dscale) {
  const ReduceDims dims = glue::oscillation_dims(w, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const OscillationBackwardParams p = glue::oscillation_backward_params(dy, w, x_int, mask, dw, scale, zero_point,
                                                                        dims, grad_factor, need_dscale, partials);
  glue::parallel_for_blocks(dims, p.blocks,
                            [&](int64_t b, int64_t e) { cpu::oscillation_fake_quant_backward(p, b, e); });
  return glue::oscillation_dscale(partials);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_OSCILLATION_FAKE_QUANT_IMPLS)
