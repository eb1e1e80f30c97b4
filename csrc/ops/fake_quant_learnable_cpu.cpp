// The learnable fake-quant family's private CPU ops qkernels::_fake_quant_learnable_{forward,backward}_cpu (and its
// eager call): thin torch glue over csrc/cpu/fake_quant_learnable.cpp.
#include <ATen/Parallel.h>

#include <algorithm>

#include "fake_quant_learnable_glue.h"

namespace qkernels {
namespace {

constexpr int64_t kLearnableItem = 1 << 14;  // elements per backward work item (fixes the summation order)

// glue::reduce_partials (the rule of qkernels.reference.fake_quant_learnable.reduce_partials) as one host loop:
// aten's float64 sum and casts cost far more than these few sums.
// The sum runs over P in order; double -> dtype as aten's casts convert.
std::tuple<at::Tensor, at::Tensor> reduce_partials_cpu(const at::Tensor& partials, at::ScalarType ds_dtype,
                                                       at::ScalarType dz_dtype) {
  if (partials.dim() != 4) return glue::reduce_partials(partials, ds_dtype, dz_dtype);
  const int64_t B = partials.size(1), P = partials.size(2), C = partials.size(3);
  const float* src = partials.const_data_ptr<float>();
  at::Tensor grads[2] = {at::empty({B * C}, partials.options().dtype(ds_dtype)),
                         at::empty({B * C}, partials.options().dtype(dz_dtype))};
  for (int64_t g = 0; g < 2; ++g) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[g].scalar_type(), "reduce_partials", [&] {
      scalar_t* dst = grads[g].data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0.0;
          for (int64_t k = 0; k < P; ++k) acc += src[((g * B + b) * P + k) * C + c];
          dst[b * C + c] = static_cast<scalar_t>(acc);
        }
      }
    });
  }
  return {grads[0], grads[1]};
}

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
  // Items hold up to kLearnableItem elements, and far fewer in a small input: each thread takes at least kCpuGrain
  // elements' worth of them (waking the thread pool costs more than a small backward pass).
  const int64_t items = cpu::learnable_backward_items(p);
  const int64_t per_item = std::max<int64_t>(1, dims.numel() / std::max<int64_t>(1, items));
  at::parallel_for(0, items, std::max<int64_t>(1, glue::kCpuGrain / per_item),
                   [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_backward(p, b, e); });
  return reduce_partials_cpu(partials, ds_dtype, dz_dtype);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_FAKE_QUANT_LEARNABLE_IMPLS)
QKERNELS_REGISTER_EAGER(cpu, QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_SCHEMAS,
                        QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_IMPLS)
