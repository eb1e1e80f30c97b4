// The oscillation dampening family's private CUDA op qkernels::_oscillation_dampening_forward_cuda: thin torch glue
// over csrc/cuda/oscillation_dampening.cu. Also built for the CPU emulator (cuda_glue.h). Nothing here reads a
// device value: the sums are finished on the device.
#include "cuda_glue.h"
#include "oscillation_dampening_glue.h"

// The family has no eager fast path: nothing to register beyond the launcher.
#define QKERNELS_OSCILLATION_DAMPENING_NO_EAGER(m, ...) (void)m

namespace qkernels {

std::tuple<at::Tensor, at::Tensor> oscillation_dampening_forward_cuda(
    const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C,
    int64_t I, int64_t quant_min, int64_t quant_max, const at::Tensor& frozen, const at::Tensor& frozen_x_int,
    at::Tensor& dw) {
  const glue::DeviceGuard guard(w.device());
  at::Tensor partials;
  const DampeningParams p = glue::dampening_params(w, scale, zero_point, B, O, C, I, quant_min, quant_max, frozen,
                                                   frozen_x_int, dw, partials);
  glue::check_launch(cuda::oscillation_dampening_forward(p, glue::current_stream()));
  return glue::dampening_sums(partials);
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_OSCILLATION_DAMPENING_IMPLS, QKERNELS_OSCILLATION_DAMPENING_NO_EAGER,
                       QKERNELS_OSCILLATION_DAMPENING_NO_EAGER)
