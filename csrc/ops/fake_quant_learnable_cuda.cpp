// The learnable fake-quant family's private CUDA ops qkernels::_fake_quant_learnable_{forward,backward}_cuda (and
// its eager call): thin torch glue over csrc/cuda/fake_quant_learnable.cu. Also built for the CPU emulator
// (cuda_glue.h).
#include "cuda_glue.h"
#include "fake_quant_learnable_glue.h"

namespace qkernels {
namespace {

constexpr int64_t kLearnableItem = 1 << 12;  // elements per backward work item: one CTA of 256 threads each

}  // namespace

void learnable_forward_cuda(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                            int64_t quant_min, int64_t quant_max, int64_t flavour, bool per_tensor) {
  glue::check_cuda_flavour(flavour);
  const glue::DeviceGuard guard(x.device());
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  const LearnableForwardParams p =
      glue::learnable_forward_params(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor);
  glue::check_launch(cuda::fake_quant_learnable_forward(p, glue::current_stream()));
}

std::tuple<at::Tensor, at::Tensor> learnable_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype) {
  glue::check_cuda_flavour(flavour);
  const glue::DeviceGuard guard(x.device());
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const LearnableBackwardParams p =
      glue::learnable_backward_params(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour,
                                      rule, use_fma, need_qgrads, kLearnableItem, partials);
  glue::check_launch(cuda::fake_quant_learnable_backward(p, glue::current_stream()));
  return glue::reduce_partials(partials, ds_dtype, dz_dtype);
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_FAKE_QUANT_LEARNABLE_IMPLS, QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_SCHEMAS,
                       QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_IMPLS)
