// The learnable fake-quant family's private CPU ops qkernels::_fake_quant_learnable_{forward,backward}_cpu (and its
// eager call): thin torch glue over csrc/cpu/fake_quant_learnable.cpp.
#include <ATen/Parallel.h>

#include "fake_quant_learnable_glue.h"

namespace qkernels {
namespace {

constexpr int64_t kLearnableItem = 1 << 14;  // elements per backward work item (fixes the summation order)

}  // namespace

void learnable_forward_cpu(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min,
                           int64_t quant_max, int64_t flavour, bool per_tensor) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  const LearnableForwardParams p =
      glue::learnable_forward_params(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor);
  at::parallel_for(0, dims.numel(), glue::kCpuGrain,
                   [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_forward(p, b, e); });
}

std::tuple<at::Tensor, at::Tensor> learnable_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const LearnableBackwardParams p =
      glue::learnable_backward_params(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour,
                                      rule, use_fma, need_qgrads, kLearnableItem, partials);
  glue::parallel_for_blocks(dims, p.blocks, [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_backward(p, b, e); });
  return glue::reduce_partials(partials, ds_dtype, dz_dtype);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_FAKE_QUANT_LEARNABLE_IMPLS)
QKERNELS_REGISTER_EAGER(cpu, QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_SCHEMAS,
                        QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_IMPLS)
