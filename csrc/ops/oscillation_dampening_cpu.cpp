// The oscillation dampening family's private CPU op qkernels::_oscillation_dampening_forward_cpu: thin torch glue
// over csrc/cpu/oscillation_dampening.cpp.
#include "oscillation_dampening_glue.h"

namespace qkernels {

std::tuple<at::Tensor, at::Tensor> oscillation_dampening_forward_cpu(
    const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C,
    int64_t I, int64_t quant_min, int64_t quant_max, const at::Tensor& frozen, const at::Tensor& frozen_x_int,
    at::Tensor& dw) {
  at::Tensor partials;
  const DampeningParams p = glue::dampening_params(w, scale, zero_point, B, O, C, I, quant_min, quant_max, frozen,
                                                   frozen_x_int, dw, partials);
  glue::parallel_for_blocks(p.dims, p.blocks,
                            [&](int64_t b, int64_t e) { cpu::oscillation_dampening_forward(p, b, e); });
  return glue::dampening_sums(partials);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_OSCILLATION_DAMPENING_IMPLS)
