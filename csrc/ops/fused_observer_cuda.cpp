// The fused observer family's private CUDA op qkernels::_fused_observer_update_cuda (and its per-tensor eager
// step): thin torch glue over csrc/cuda/fused_observer.cu. Also built for the CPU emulator (cuda_glue.h).
#include "cuda_glue.h"
#include "fused_observer_glue.h"

namespace qkernels {

void fused_observer_update_cuda(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                                at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                                at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                                int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                                int64_t flavour) {
  glue::check_cuda_flavour(flavour);
  const glue::DeviceGuard guard(x.device());
  const ObserverParams p = glue::observer_params(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                                 zero_point, averaging_const, quant_min, quant_max, inner, symmetric,
                                                 mode, eps, symmetric_zero_point, flavour);
  if (x.numel() == 0) return;
  // Scratch for the min/max partials, from the caching allocator.
  at::Tensor partials = at::empty({2 * p.channels * cuda::fused_observer_parts(p)}, x.options().dtype(at::kFloat));
  glue::check_launch(cuda::fused_observer_update(p, partials.data_ptr<float>(), glue::current_stream()));
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_FUSED_OBSERVER_IMPLS, QKERNELS_FUSED_OBSERVER_EAGER_SCHEMAS,
                       QKERNELS_FUSED_OBSERVER_EAGER_IMPLS)
