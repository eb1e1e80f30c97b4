// Torch glue of the oscillation fake-quant family: its private launcher ops _oscillation_fake_quant_{forward,
// backward}_<device> (csrc/ops/oscillation_fake_quant_{cpu,cuda}.cpp), tensors -> the params of
// qkernels/oscillation_fake_quant_kernels.h. The schemas are LAUNCHERS in qkernels/oscillation_fake_quant.py. No
// eager fast path (ARCHITECTURE.md: opt-in).
#pragma once

#include "glue.h"
#include "qkernels/oscillation_fake_quant_kernels.h"
#include "reduce_glue.h"

namespace qkernels {

// The family's launchers, one per device. forward returns the call's oscillation count, int64 [1]; backward
// dscale float32 [B * C] (empty when need_dscale is false).
using OscillationForwardLauncher = at::Tensor(
    const at::Tensor& w, at::Tensor& out, at::Tensor& x_int, at::Tensor& mask, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max,
    at::Tensor& prev_x_int, at::Tensor& prev_switch_dir, at::Tensor& ema_oscillation, at::Tensor& frozen,
    at::Tensor& frozen_x_int, at::Tensor& ema_x_int, const at::Tensor& started, const at::Tensor& threshold,
    const at::Tensor& tracking, double momentum, bool use_ema_x_int, bool need_grad);
using OscillationBackwardLauncher = at::Tensor(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& x_int,
                                               const at::Tensor& mask, at::Tensor& dw, const at::Tensor& scale,
                                               const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C,
                                               int64_t I, double grad_factor, bool need_dscale);
OscillationForwardLauncher oscillation_forward_cpu, oscillation_forward_cuda;
OscillationBackwardLauncher oscillation_backward_cpu, oscillation_backward_cuda;

namespace glue {

// Elements per backward work item (REDUCE_TARGET of qkernels/reference/oscillation_fake_quant.py: the layout of
// the dscale sum, the same on every backend).
constexpr int64_t kOscillationReduceTarget = 16384;

inline ReduceDims oscillation_dims(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero_point,
                                   int64_t B, int64_t O, int64_t C, int64_t I) {
  TORCH_CHECK(B > 0 && O > 0 && C > 0 && I > 0 && B * O * C * I == w.numel(),
              "qkernels: oscillation dims [B, O, C, I] must be positive and multiply to numel");
  TORCH_CHECK(w.is_contiguous(), "qkernels: the weight must be contiguous");
  for (const at::Tensor* t : {&scale, &zero_point}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == B * C &&
                    t->device() == w.device(),
                "qkernels: oscillation qparams must be contiguous float32 with B * C elements on w's device");
  }
  return ReduceDims{B, O, C, I};
}

// A per-element tensor of w: contiguous, dtype, w's size and device.
inline void check_element_tensor(const at::Tensor& t, const at::Tensor& w, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() == w.numel() && t.device() == w.device(),
              "qkernels: ", what, " must be a contiguous ", dtype, " tensor of w's size on w's device");
}

// The forward params. The flags are read on the device where they are: `tracking` as one byte (uint8 0/1, as the
// Python op passes it, or bool), the threshold as float32 (a converted copy, kept alive by the caller in flags,
// only when it is not float32 already).
inline OscillationForwardParams oscillation_forward_params(
    const at::Tensor& w, at::Tensor& out, at::Tensor& x_int, at::Tensor& mask, const at::Tensor& scale,
    const at::Tensor& zero_point, const ReduceDims& dims, int64_t quant_min, int64_t quant_max,
    at::Tensor& prev_x_int, at::Tensor& prev_switch_dir, at::Tensor& ema_oscillation, at::Tensor& frozen,
    at::Tensor& frozen_x_int, at::Tensor& ema_x_int, const at::Tensor& started, const at::Tensor& threshold,
    const at::Tensor& tracking, double momentum, bool use_ema_x_int, bool need_grad, std::vector<at::Tensor>& flags) {
  check_pair(w, out);
  TORCH_CHECK(quant_min >= -128 && quant_min <= 0 && quant_max >= 0 && quant_max <= 127,
              "qkernels: the oscillation grid must fit int8 and contain 0");
  if (need_grad) {
    check_element_tensor(x_int, w, at::kChar, "x_int");
    check_element_tensor(mask, w, at::kBool, "mask");
  }
  check_element_tensor(prev_x_int, w, at::kChar, "prev_x_int");
  check_element_tensor(prev_switch_dir, w, at::kChar, "prev_switch_dir");
  check_element_tensor(ema_oscillation, w, at::kFloat, "ema_oscillation");
  check_element_tensor(frozen, w, at::kBool, "frozen");
  check_element_tensor(frozen_x_int, w, at::kChar, "frozen_x_int");
  check_element_tensor(ema_x_int, w, at::kFloat, "ema_x_int");
  TORCH_CHECK(started.scalar_type() == at::kByte && started.is_contiguous() && started.numel() == 2 &&
                  started.device() == w.device(),
              "qkernels: started must be uint8 [2] on w's device");
  TORCH_CHECK(threshold.numel() == 1 && tracking.numel() == 1 && threshold.device() == w.device() &&
                  tracking.device() == w.device(),
              "qkernels: threshold and tracking must have one element on w's device");
  TORCH_CHECK(tracking.scalar_type() == at::kByte || tracking.scalar_type() == at::kBool,
              "qkernels: tracking must be a uint8 or bool flag");
  flags = {started, threshold.reshape({1}).to(at::kFloat).contiguous(), tracking.reshape({1})};
  OscillationForwardParams p{};
  p.dtype = dtype_of(w);
  p.dims = dims;
  p.w = w.data_ptr();
  p.out = out.data_ptr();
  p.x_int = need_grad ? x_int.data_ptr<int8_t>() : nullptr;
  p.mask = need_grad ? mask.data_ptr<bool>() : nullptr;
  p.scale = scale.data_ptr<float>();
  p.zero_point = zero_point.data_ptr<float>();
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  p.prev_x_int = prev_x_int.data_ptr<int8_t>();
  p.prev_switch_dir = prev_switch_dir.data_ptr<int8_t>();
  p.ema_oscillation = ema_oscillation.data_ptr<float>();
  p.frozen = frozen.data_ptr<bool>();
  p.frozen_x_int = frozen_x_int.data_ptr<int8_t>();
  p.ema_x_int = ema_x_int.data_ptr<float>();
  p.started = flags[0].const_data_ptr<uint8_t>();
  p.threshold = flags[1].const_data_ptr<float>();
  p.tracking = static_cast<const uint8_t*>(flags[2].const_data_ptr());
  p.m = static_cast<float>(momentum);
  p.cm = static_cast<float>(1.0 - momentum);  // formed in float64, rounded once (the spec's cm)
  p.use_ema_x_int = use_ema_x_int;
  return p;
}

// The backward params; allocates the dscale partials [B, P, C] (empty when no dscale is wanted).
inline OscillationBackwardParams oscillation_backward_params(const at::Tensor& dy, const at::Tensor& w,
                                                             const at::Tensor& x_int, const at::Tensor& mask,
                                                             at::Tensor& dw, const at::Tensor& scale,
                                                             const at::Tensor& zero_point, const ReduceDims& dims,
                                                             double grad_factor, bool need_dscale,
                                                             at::Tensor& partials) {
  check_pair(w, dw);
  check_pair(w, dy);
  check_element_tensor(x_int, w, at::kChar, "x_int");
  check_element_tensor(mask, w, at::kBool, "mask");
  OscillationBackwardParams p{};
  p.dtype = dtype_of(w);
  p.dims = dims;
  p.blocks = make_reduce_blocks(dims, kOscillationReduceTarget);
  p.dy = dy.data_ptr();
  p.w = w.data_ptr();
  p.x_int = x_int.const_data_ptr<int8_t>();
  p.mask = mask.const_data_ptr<bool>();
  p.dw = dw.data_ptr();
  p.scale = scale.data_ptr<float>();
  p.zero_point = zero_point.data_ptr<float>();
  p.grad_factor = static_cast<float>(grad_factor);
  const auto shape = need_dscale ? std::vector<int64_t>{1, dims.B, p.blocks.P, dims.C} : std::vector<int64_t>{0};
  partials = at::empty(shape, w.options().dtype(at::kFloat));
  p.ds_partial = need_dscale ? partials.data_ptr<float>() : nullptr;
  return p;
}

// dscale from the partials: float64 over p in order, rounded once to float32 (reduce_glue.h's finish_sums).
inline at::Tensor oscillation_dscale(const at::Tensor& partials) { return finish_sums(partials, {at::kFloat})[0]; }

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_OSCILLATION_FAKE_QUANT_IMPLS(m, dev)                                    \
  m.impl("_oscillation_fake_quant_forward_" #dev, &qkernels::oscillation_forward_##dev); \
  m.impl("_oscillation_fake_quant_backward_" #dev, &qkernels::oscillation_backward_##dev)
