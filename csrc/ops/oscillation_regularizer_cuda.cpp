// The oscillation regularizer family's private CUDA ops qkernels::_oscillation_regularizer_{amax,sums,backward}_cuda:
// thin torch glue over csrc/cuda/oscillation_regularizer.cu. Also built for the CPU emulator (cuda_glue.h). Nothing
// here reads a device value: the kernels read amax, sums, ties and grad where they are, and finish the partials on
// the device. The slot table stays in host memory (the kernels take it as a launch argument, so there is no copy
// to the device to wait for, and a captured CUDA graph holds its own copy).
#include <vector>

#include "cuda_glue.h"
#include "oscillation_regularizer_glue.h"

// The family has no eager fast path: nothing to register beyond the launchers.
#define QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER(m, ...) (void)m

namespace qkernels {

void oscillation_regularizer_amax_cuda(at::TensorList w, at::Tensor& out) {
  constexpr const char* kLauncher = "_oscillation_regularizer_amax_cuda";
  int64_t blocks = 0;
  const std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_per_tensor(out, {static_cast<int64_t>(slots.size())}, at::kFloat, w[0], kLauncher, "out");
  RegularizerParams p = glue::regularizer_params(w, slots);
  const at::Tensor partials = at::empty({blocks}, out.options());
  p.amax_partial = partials.data_ptr<float>();
  glue::check_launch(cuda::oscillation_regularizer_amax(p, out.data_ptr<float>(), glue::current_stream()));
}

void oscillation_regularizer_sums_cuda(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                       at::Tensor& ties) {
  constexpr const char* kLauncher = "_oscillation_regularizer_sums_cuda";
  int64_t blocks = 0;
  const std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const int64_t L = static_cast<int64_t>(slots.size());
  glue::check_bits(bits, kLauncher);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_per_tensor(amax, {L}, at::kFloat, w[0], kLauncher, "amax");
  glue::check_per_tensor(out, {L, 2}, at::kDouble, w[0], kLauncher, "out");
  glue::check_per_tensor(ties, {L}, at::kLong, w[0], kLauncher, "ties");
  RegularizerParams p = glue::regularizer_params(w, slots);
  p.bits = static_cast<int>(bits);
  p.amax = amax.const_data_ptr<float>();
  const at::Tensor partials = at::empty({2, blocks}, amax.options());
  const at::Tensor tie_partials = at::empty({blocks}, ties.options());
  p.e_partial = partials.data_ptr<float>();
  p.t_partial = p.e_partial + blocks;
  p.tie_partial = tie_partials.data_ptr<int64_t>();
  glue::check_launch(cuda::oscillation_regularizer_sums(p, out.data_ptr<double>(), ties.data_ptr<int64_t>(),
                                                        glue::current_stream()));
}

void oscillation_regularizer_backward_cuda(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                           const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                           int64_t bits, bool scale_grad) {
  constexpr const char* kLauncher = "_oscillation_regularizer_backward_cuda";
  int64_t blocks = 0;
  std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const int64_t L = static_cast<int64_t>(slots.size());
  glue::check_bits(bits, kLauncher);
  glue::set_gradients(w, dw, slots, kLauncher);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_per_tensor(grad, {}, at::kFloat, w[0], kLauncher, "grad");
  glue::check_per_tensor(amax, {L}, at::kFloat, w[0], kLauncher, "amax");
  glue::check_per_tensor(sums, {L, 2}, at::kDouble, w[0], kLauncher, "sums");
  glue::check_per_tensor(ties, {L}, at::kLong, w[0], kLauncher, "ties");
  RegularizerParams p = glue::regularizer_params(w, slots);
  p.bits = static_cast<int>(bits);
  p.amax = amax.const_data_ptr<float>();
  p.sums = sums.const_data_ptr<double>();
  p.ties = ties.const_data_ptr<int64_t>();
  p.grad = grad.const_data_ptr<float>();
  p.scale_grad = scale_grad;
  glue::check_launch(cuda::oscillation_regularizer_backward(p, glue::current_stream()));
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_OSCILLATION_REGULARIZER_IMPLS, QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER,
                       QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER)
