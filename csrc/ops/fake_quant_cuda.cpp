// Private CUDA ops qkernels::_fake_quant_*_cuda: thin torch glue over csrc/cuda/*.cu.
//
// Built with QKERNELS_CUDA_EMULATION=<library> (by tests/cuda_emulator.py, never by setup.py), the same glue runs
// the kernels under the CPU emulator of csrc/emu on CPU tensors, registered as <library>::_*_cuda (the launcher
// ops only), so that the tests cover the CUDA kernels and this glue on machines without a GPU.
#ifdef QKERNELS_CUDA_EMULATION
#include <c10/core/Device.h>
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <cuda_runtime.h>

#include "fake_quant_glue.h"
#include "eager_autograd.h"

namespace qkernels {
namespace {

#ifdef QKERNELS_CUDA_EMULATION
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
void* current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

void check_launch(int err) {
  TORCH_CHECK(err == 0, "qkernels CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void check_cuda_flavour(int64_t flavour) {
  TORCH_CHECK(flavour == static_cast<int64_t>(Flavour::Cuda), "qkernels: the CUDA kernels implement the CUDA flavour");
}

void per_tensor_cuda(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask, double scale,
                     int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                     const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                     int64_t quant_min, int64_t quant_max, int64_t flavour) {
  check_cuda_flavour(flavour);
  const DeviceGuard guard(x.device());
  PerTensorParams p =
      glue::per_tensor_params(x, out, mask, scale, zero_point, quant_min, quant_max, flavour);
  glue::set_tensor_qparams(p, scale_t, zero_point_t, enabled_t);
  check_launch(cuda::fake_quant_per_tensor(p, current_stream()));
}

void per_channel_cuda(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                      const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner, int64_t quant_min,
                      int64_t quant_max, int64_t flavour, bool use_fma) {
  TORCH_CHECK(flavour == static_cast<int64_t>(Flavour::Cuda) && use_fma,
              "qkernels: the CUDA kernels implement the CUDA flavour");
  const DeviceGuard guard(x.device());
  const PerChannelParams p = glue::per_channel_params(x, out, mask, scale, zero_point, inner, quant_min, quant_max,
                                                      flavour, use_fma);
  check_launch(cuda::fake_quant_per_channel(p, current_stream()));
}

void backward_cuda(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  const DeviceGuard guard(grad.device());
  const BackwardParams p = glue::backward_params(grad, mask, out);
  check_launch(cuda::fake_quant_backward(p, current_stream()));
}

constexpr int64_t kLearnableItem = 1 << 12;  // elements per backward work item: one CTA of 256 threads each

void learnable_forward_cuda(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                            int64_t quant_min, int64_t quant_max, int64_t flavour, bool per_tensor) {
  check_cuda_flavour(flavour);
  const DeviceGuard guard(x.device());
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  const LearnableForwardParams p =
      glue::learnable_forward_params(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor);
  check_launch(cuda::fake_quant_learnable_forward(p, current_stream()));
}

std::tuple<at::Tensor, at::Tensor> learnable_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype) {
  check_cuda_flavour(flavour);
  const DeviceGuard guard(x.device());
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const LearnableBackwardParams p =
      glue::learnable_backward_params(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour,
                                      rule, use_fma, need_qgrads, kLearnableItem, partials);
  check_launch(cuda::fake_quant_learnable_backward(p, current_stream()));
  return glue::reduce_partials(partials, ds_dtype, dz_dtype);
}

void fused_observer_update_cuda(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                                at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                                at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                                int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                                int64_t flavour) {
  check_cuda_flavour(flavour);
  const DeviceGuard guard(x.device());
  const ObserverParams p = glue::observer_params(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                                 zero_point, averaging_const, quant_min, quant_max, inner, symmetric,
                                                 mode, eps, symmetric_zero_point, flavour);
  if (x.numel() == 0) return;
  // Scratch for the min/max partials, from the caching allocator.
  at::Tensor partials = at::empty({2 * p.channels * cuda::fused_observer_parts(p)}, x.options().dtype(at::kFloat));
  check_launch(cuda::fused_observer_update(p, partials.data_ptr<float>(), current_stream()));
}

}  // namespace

#ifdef QKERNELS_CUDA_EMULATION
QKERNELS_REGISTER_KERNELS(QKERNELS_CUDA_EMULATION, cuda, CPU)
#else
QKERNELS_REGISTER_DEVICE(cuda, CUDA)
#endif

}  // namespace qkernels
