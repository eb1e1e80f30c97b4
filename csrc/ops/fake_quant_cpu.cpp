// Private CPU ops qkernels::_fake_quant_*_cpu: thin torch glue over csrc/cpu/fake_quant.cpp.
#include <ATen/Parallel.h>

#include <algorithm>

#include "fake_quant_glue.h"

namespace qkernels {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Splits [0, n) across threads; with a packed mask at multiples of 8 elements, so no byte is shared.
template <typename Params, typename Fn>
void parallel_over(const Params& p, Fn fn) {
  if (!p.mask_packed) {
    at::parallel_for(0, p.numel, kGrain, fn);
    return;
  }
  at::parallel_for(0, (p.numel + 7) / 8, kGrain / 8,
                   [&](int64_t b, int64_t e) { fn(8 * b, std::min(8 * e, p.numel)); });
}

void per_tensor_cpu(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask, double scale,
                    int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                    const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                    int64_t quant_min, int64_t quant_max, int64_t flavour) {
  PerTensorParams p =
      glue::per_tensor_params(x, out, mask, scale, zero_point, quant_min, quant_max, flavour);
  // CPU tensors: reading them here is not a device sync.
  glue::set_tensor_qparams(p, scale_t, zero_point_t, enabled_t);
  if (p.scale_ptr) p.scale = *p.scale_ptr;
  if (p.zero_point_ptr) p.zero_point = *p.zero_point_ptr;
  if (p.enabled_ptr) p.enabled = *p.enabled_ptr != 0;
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_per_tensor(p, b, e); });
}

void per_channel_cpu(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                     const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner, int64_t quant_min,
                     int64_t quant_max, int64_t flavour, bool use_fma) {
  const PerChannelParams p = glue::per_channel_params(x, out, mask, scale, zero_point, inner, quant_min, quant_max,
                                                      flavour, use_fma);
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_per_channel(p, b, e); });
}

void backward_cpu(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  const BackwardParams p = glue::backward_params(grad, mask, out);
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_backward(p, b, e); });
}

constexpr int64_t kLearnableItem = 1 << 14;  // elements per backward work item (fixes the summation order)

void learnable_forward_cpu(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min,
                           int64_t quant_max, int64_t flavour, bool per_tensor) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  const LearnableForwardParams p =
      glue::learnable_forward_params(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor);
  at::parallel_for(0, dims.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_forward(p, b, e); });
}

at::Tensor learnable_backward_cpu(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx,
                                                          const at::Tensor& scale, const at::Tensor& zero_point,
                                                          int64_t B, int64_t O, int64_t C, int64_t I,
                                                          int64_t quant_min, int64_t quant_max, double grad_factor,
                                                          int64_t flavour, int64_t rule, bool use_fma,
                                                          bool need_qgrads) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const LearnableBackwardParams p =
      glue::learnable_backward_params(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour,
                                      rule, use_fma, need_qgrads, kLearnableItem, partials);
  at::parallel_for(0, cpu::learnable_backward_items(p), 1,
                   [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_backward(p, b, e); });
  return partials;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qkernels, m) { QKERNELS_FAKE_QUANT_SCHEMAS(m, "cpu"); }

TORCH_LIBRARY_IMPL(qkernels, CPU, m) {
  m.impl("_fake_quant_per_tensor_cpu", &per_tensor_cpu);
  m.impl("_fake_quant_per_channel_cpu", &per_channel_cpu);
  m.impl("_fake_quant_backward_cpu", &backward_cpu);
  m.impl("_fake_quant_learnable_forward_cpu", &learnable_forward_cpu);
  m.impl("_fake_quant_learnable_backward_cpu", &learnable_backward_cpu);
}

}  // namespace qkernels
