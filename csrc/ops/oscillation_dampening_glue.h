// Torch glue of the oscillation dampening family: its private launcher ops _oscillation_dampening_forward_<device>
// (csrc/ops/oscillation_dampening_{cpu,cuda}.cpp), tensors -> the params of qkernels/oscillation_dampening_kernels.h.
// The schema is LAUNCHERS in qkernels/oscillation_dampening.py. The dims, the element checks and the block target
// are the sibling family's (oscillation_fake_quant_glue.h: the layout and REDUCE_TARGET are shared). No eager fast
// path (ARCHITECTURE.md: opt-in).
#pragma once

#include <tuple>

#include "glue.h"
#include "oscillation_fake_quant_glue.h"
#include "qkernels/oscillation_dampening_kernels.h"
#include "reduce_glue.h"

namespace qkernels {

// The family's launcher, one per device: writes dw and returns (e_sums, ds_sums), float32 [B * C] each.
using DampeningForwardLauncher = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C,
    int64_t I, int64_t quant_min, int64_t quant_max, const at::Tensor& frozen, const at::Tensor& frozen_x_int,
    at::Tensor& dw);
DampeningForwardLauncher oscillation_dampening_forward_cpu, oscillation_dampening_forward_cuda;

namespace glue {

// The params; allocates the partials [2, B, P, C] (e's, then ds's).
inline DampeningParams dampening_params(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero_point,
                                        int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min,
                                        int64_t quant_max, const at::Tensor& frozen, const at::Tensor& frozen_x_int,
                                        at::Tensor& dw, at::Tensor& partials) {
  DampeningParams p{};
  p.dims = oscillation_dims(w, scale, zero_point, B, O, C, I);
  check_element_tensor(frozen, w, at::kBool, "frozen");
  check_element_tensor(frozen_x_int, w, at::kChar, "frozen_x_int");
  check_element_tensor(dw, w, at::kFloat, "dw");
  p.dtype = dtype_of(w);
  p.blocks = make_reduce_blocks(p.dims, kOscillationReduceTarget);
  p.w = w.data_ptr();
  p.frozen = frozen.const_data_ptr<bool>();
  p.frozen_x_int = frozen_x_int.const_data_ptr<int8_t>();
  p.dw = dw.data_ptr<float>();
  p.scale = scale.const_data_ptr<float>();
  p.zero_point = zero_point.const_data_ptr<float>();
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  partials = at::empty({2, B, p.blocks.P, C}, w.options().dtype(at::kFloat));
  p.e_partial = partials.data_ptr<float>();
  p.ds_partial = p.e_partial + B * p.blocks.P * C;
  return p;
}

// (e_sums, ds_sums) from the partials: float64 over p in order, rounded once to float32 (reduce_glue.h).
inline std::tuple<at::Tensor, at::Tensor> dampening_sums(const at::Tensor& partials) {
  const std::vector<at::Tensor> sums = finish_sums(partials, {at::kFloat, at::kFloat});
  return {sums[0], sums[1]};
}

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_OSCILLATION_DAMPENING_IMPLS(m, dev) \
  m.impl("_oscillation_dampening_forward_" #dev, &qkernels::oscillation_dampening_forward_##dev)
