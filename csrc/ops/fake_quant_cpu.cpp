// The fake-quant family's private CPU ops qkernels::_fake_quant_{per_tensor,per_channel,backward}_cpu (and its
// eager forwards): thin torch glue over csrc/cpu/fake_quant.cpp.
#include <ATen/Parallel.h>

#include <algorithm>

#include "fake_quant_glue.h"

namespace qkernels {
namespace {

// Splits [0, n) across threads; with a packed mask at multiples of 8 elements, so no byte is shared.
template <typename Params, typename Fn>
void parallel_over(const Params& p, Fn fn) {
  if (!p.mask_packed) {
    at::parallel_for(0, p.numel, glue::kCpuGrain, fn);
    return;
  }
  at::parallel_for(0, (p.numel + 7) / 8, glue::kCpuGrain / 8,
                   [&](int64_t b, int64_t e) { fn(8 * b, std::min(8 * e, p.numel)); });
}

}  // namespace

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

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_FAKE_QUANT_IMPLS)
QKERNELS_REGISTER_EAGER(cpu, QKERNELS_FAKE_QUANT_EAGER_SCHEMAS, QKERNELS_FAKE_QUANT_EAGER_IMPLS)
