// The oscillation fake-quant family's private CUDA ops qkernels::_oscillation_fake_quant_{forward,backward}_cuda:
// thin torch glue over csrc/cuda/oscillation_fake_quant.cu. Also built for the CPU emulator (cuda_glue.h). Nothing
// here reads a device value: the flags go to the kernels as device tensors, the count and dscale are finished on
// the device.
#include "cuda_glue.h"
#include "oscillation_fake_quant_glue.h"

// The family has no eager fast path: nothing to register beyond the launchers.
#define QKERNELS_OSCILLATION_NO_EAGER(m, ...) (void)m

namespace qkernels {

at::Tensor oscillation_forward_cuda(const at::Tensor& w, at::Tensor& out, at::Tensor& x_int, at::Tensor& mask,
                                    const at::Tensor& scale, const at::Tensor& zero_point, int64_t B, int64_t O,
                                    int64_t C, int64_t I, int64_t quant_min, int64_t quant_max,
                                    at::Tensor& prev_x_int, at::Tensor& prev_switch_dir, at::Tensor& ema_oscillation,
                                    at::Tensor& frozen, at::Tensor& frozen_x_int, at::Tensor& ema_x_int,
                                    const at::Tensor& started, const at::Tensor& threshold, const at::Tensor& tracking,
                                    double momentum, bool use_ema_x_int, bool need_grad) {
  const glue::DeviceGuard guard(w.device());
  const ReduceDims dims = glue::oscillation_dims(w, scale, zero_point, B, O, C, I);
  std::vector<at::Tensor> flags;
  const OscillationForwardParams p = glue::oscillation_forward_params(
      w, out, x_int, mask, scale, zero_point, dims, quant_min, quant_max, prev_x_int, prev_switch_dir,
      ema_oscillation, frozen, frozen_x_int, ema_x_int, started, threshold, tracking, momentum, use_ema_x_int,
      need_grad, flags);
  at::Tensor counts = at::empty({cuda::oscillation_forward_ctas(dims.numel())}, w.options().dtype(at::kLong));
  glue::check_launch(cuda::oscillation_fake_quant_forward(p, counts.data_ptr<int64_t>(), glue::current_stream()));
  return counts.sum().reshape({1});  // int64: exact
}

at::Tensor oscillation_backward_cuda(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& x_int,
                                     const at::Tensor& mask, at::Tensor& dw, const at::Tensor& scale,
                                     const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                                     double grad_factor, bool need_dscale) {
  const glue::DeviceGuard guard(w.device());
  const ReduceDims dims = glue::oscillation_dims(w, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const OscillationBackwardParams p = glue::oscillation_backward_params(dy, w, x_int, mask, dw, scale, zero_point,
                                                                        dims, grad_factor, need_dscale, partials);
  glue::check_launch(cuda::oscillation_fake_quant_backward(p, glue::current_stream()));
  return glue::oscillation_dscale(partials);
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_OSCILLATION_FAKE_QUANT_IMPLS, QKERNELS_OSCILLATION_NO_EAGER,
                       QKERNELS_OSCILLATION_NO_EAGER)
