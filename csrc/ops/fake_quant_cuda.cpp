// The fake-quant family's private CUDA ops qkernels::_fake_quant_{per_tensor,per_channel,backward}_cuda (and its
// eager forwards): thin torch glue over csrc/cuda/fake_quant.cu. Also built for the CPU emulator (cuda_glue.h).
#include "cuda_glue.h"
#include "fake_quant_glue.h"

namespace qkernels {

void per_tensor_cuda(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask, double scale,
                     int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                     const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                     int64_t quant_min, int64_t quant_max, int64_t flavour) {
  glue::check_cuda_flavour(flavour);
  const glue::DeviceGuard guard(x.device());
  PerTensorParams p =
      glue::per_tensor_params(x, out, mask, scale, zero_point, quant_min, quant_max, flavour);
  glue::set_tensor_qparams(p, scale_t, zero_point_t, enabled_t);
  glue::check_launch(cuda::fake_quant_per_tensor(p, glue::current_stream()));
}

void per_channel_cuda(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                      const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner, int64_t quant_min,
                      int64_t quant_max, int64_t flavour, bool use_fma) {
  TORCH_CHECK(flavour == static_cast<int64_t>(Flavour::Cuda) && use_fma,
              "qkernels: the CUDA kernels implement the CUDA flavour");
  const glue::DeviceGuard guard(x.device());
  const PerChannelParams p = glue::per_channel_params(x, out, mask, scale, zero_point, inner, quant_min, quant_max,
                                                      flavour, use_fma);
  glue::check_launch(cuda::fake_quant_per_channel(p, glue::current_stream()));
}

void backward_cuda(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  const glue::DeviceGuard guard(grad.device());
  const BackwardParams p = glue::backward_params(grad, mask, out);
  glue::check_launch(cuda::fake_quant_backward(p, glue::current_stream()));
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_FAKE_QUANT_IMPLS, QKERNELS_FAKE_QUANT_EAGER_SCHEMAS,
                       QKERNELS_FAKE_QUANT_EAGER_IMPLS)
