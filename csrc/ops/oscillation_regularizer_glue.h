// Torch glue of the oscillation regularizer family: its private launcher ops _oscillation_regularizer_{amax, sums,
// backward}_<device> (csrc/ops/oscillation_regularizer_{cpu,cuda}.cpp), tensor lists -> the params of
// qkernels/oscillation_regularizer_kernels.h. The schemas are LAUNCHERS in qkernels/oscillation_regularizer.py; the
// public op checks its inputs, these checks are internal checks of what it hands over. No eager fast path
// (ARCHITECTURE.md: opt-in).
#pragma once

#include <vector>

#include "glue.h"
#include "qkernels/oscillation_regularizer_kernels.h"

namespace qkernels {

// The family's launchers, one set per device: amax writes max|w_l| (float32 [L]); sums writes (S1_l / N_l, S2_l)
// (float64 [L, 2]) and the tie counts (int64 [L]); backward writes dw.
using RegularizerAmaxLauncher = void(at::TensorList w, at::Tensor& out);
using RegularizerSumsLauncher = void(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                     at::Tensor& ties);
using RegularizerBackwardLauncher = void(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                         const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                         int64_t bits, bool scale_grad);
RegularizerAmaxLauncher oscillation_regularizer_amax_cpu, oscillation_regularizer_amax_cuda;
RegularizerSumsLauncher oscillation_regularizer_sums_cpu, oscillation_regularizer_sums_cuda;
RegularizerBackwardLauncher oscillation_regularizer_backward_cpu, oscillation_regularizer_backward_cuda;

namespace glue {

// The slots of a call's weights (host memory; dw unset) with their blocks and partial offsets: checks that the
// list is non-empty and that every weight is a contiguous float32/float16/bfloat16 tensor with elements (an empty
// one has no block layout), all of one dtype on one device. `total_blocks`: the P of all tensors together.
inline std::vector<RegularizerSlot> regularizer_slots(at::TensorList w, const char* launcher, int64_t& total_blocks) {
  TORCH_CHECK(!w.empty(), "qkernels: ", launcher, ": `w` must hold at least one tensor");
  std::vector<RegularizerSlot> slots(w.size());
  total_blocks = 0;
  for (size_t l = 0; l < w.size(); ++l) {
    const at::Tensor& t = w[l];
    TORCH_CHECK(t.scalar_type() == w[0].scalar_type() && t.device() == w[0].device(), "qkernels: ", launcher,
                ": `w` must share one dtype and device: w[0] is ", w[0].scalar_type(), " on ", w[0].device(), ", w[",
                l, "] is ", t.scalar_type(), " on ", t.device());
    TORCH_CHECK(t.numel() > 0 && t.is_contiguous(), "qkernels: ", launcher, ": w[", l,
                "] must be contiguous with at least one element, got sizes ", t.sizes());
    dtype_of(t);  // float32, float16 or bfloat16
    RegularizerSlot& s = slots[l];
    s.w = t.data_ptr();
    s.dw = nullptr;
    s.numel = t.numel();
    s.blocks = make_reduce_blocks(ReduceDims{1, 1, 1, s.numel}, kRegularizerReduceTarget);
    s.offset = total_blocks;
    total_blocks += s.blocks.P;
  }
  return slots;
}

// A per-tensor array of the call: contiguous, `dtype`, `sizes`, on the weights' device.
inline void check_per_tensor(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype,
                             const at::Tensor& like, const char* launcher, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.sizes() == sizes && t.is_contiguous() && t.device() == like.device(),
              "qkernels: ", launcher, ": `", what, "` must be a contiguous ", dtype, " tensor of sizes ", sizes,
              " on ", like.device(), ", got ", t.scalar_type(), " of sizes ", t.sizes(), " on ", t.device());
}

inline void check_bits(int64_t bits, const char* launcher) {
  TORCH_CHECK(bits >= 2 && bits <= 8, "qkernels: ", launcher, ": `bits` must be 2 to 8, got ", bits);
}

// The params of a pass over `slots` (their storage: the caller's) of the weights' dtype; the rest is the pass's.
inline RegularizerParams regularizer_params(at::TensorList w, const std::vector<RegularizerSlot>& slots) {
  RegularizerParams p{};
  p.dtype = dtype_of(w[0]);
  p.slots = slots.data();
  p.L = static_cast<int64_t>(slots.size());
  return p;
}

// The backward's gradients: as many as the weights, each contiguous with its weight's sizes, dtype and device.
inline void set_gradients(at::TensorList w, at::TensorList dw, std::vector<RegularizerSlot>& slots,
                          const char* launcher) {
  TORCH_CHECK(dw.size() == w.size(), "qkernels: ", launcher, ": `dw` must hold one tensor per weight (", w.size(),
              "), got ", dw.size());
  for (size_t l = 0; l < w.size(); ++l) {
    TORCH_CHECK(dw[l].scalar_type() == w[l].scalar_type() && dw[l].sizes() == w[l].sizes() &&
                    dw[l].is_contiguous() && dw[l].device() == w[l].device(),
                "qkernels: ", launcher, ": dw[", l, "] must be contiguous with the dtype, sizes and device of w[", l,
                "] (", w[l].scalar_type(), " ", w[l].sizes(), " on ", w[l].device(), "), got ", dw[l].scalar_type(),
                " ", dw[l].sizes(), " on ", dw[l].device());
    slots[l].dw = dw[l].data_ptr();
  }
}

// One launcher call's slots and params, and the partials its pass writes (`partials` float32: [blocks] for the
// maxima, [2, blocks] for the sums' e and t; `tie_partials` int64 [blocks]). The same checks and layout on both devices; the device's code runs
// the pass and the finish. Moving it keeps params.slots valid (a moved vector keeps its buffer).
struct RegularizerCall {
  std::vector<RegularizerSlot> slots;
  int64_t blocks = 0;
  RegularizerParams p{};
  at::Tensor partials, tie_partials;
};

inline RegularizerCall regularizer_amax_call(at::TensorList w, const at::Tensor& out, const char* launcher) {
  RegularizerCall call;
  call.slots = regularizer_slots(w, launcher, call.blocks);
  check_per_tensor(out, {static_cast<int64_t>(call.slots.size())}, at::kFloat, w[0], launcher, "out");
  call.p = regularizer_params(w, call.slots);
  call.partials = at::empty({call.blocks}, out.options());
  call.p.amax_partial = call.partials.data_ptr<float>();
  return call;
}

inline RegularizerCall regularizer_sums_call(at::TensorList w, const at::Tensor& amax, int64_t bits,
                                             const at::Tensor& out, const at::Tensor& ties, const char* launcher) {
  RegularizerCall call;
  call.slots = regularizer_slots(w, launcher, call.blocks);
  const int64_t L = static_cast<int64_t>(call.slots.size());
  check_bits(bits, launcher);
  check_per_tensor(amax, {L}, at::kFloat, w[0], launcher, "amax");
  check_per_tensor(out, {L, 2}, at::kDouble, w[0], launcher, "out");
  check_per_tensor(ties, {L}, at::kLong, w[0], launcher, "ties");
  call.p = regularizer_params(w, call.slots);
  call.p.bits = static_cast<int>(bits);
  call.p.amax = amax.const_data_ptr<float>();
  call.partials = at::empty({2, call.blocks}, amax.options());
  call.tie_partials = at::empty({call.blocks}, ties.options());
  call.p.e_partial = call.partials.data_ptr<float>();
  call.p.t_partial = call.p.e_partial + call.blocks;
  call.p.tie_partial = call.tie_partials.data_ptr<int64_t>();
  return call;
}

inline RegularizerCall regularizer_backward_call(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                                 const at::Tensor& amax, const at::Tensor& sums,
                                                 const at::Tensor& ties, int64_t bits, bool scale_grad,
                                                 const char* launcher) {
  RegularizerCall call;
  call.slots = regularizer_slots(w, launcher, call.blocks);
  const int64_t L = static_cast<int64_t>(call.slots.size());
  check_bits(bits, launcher);
  set_gradients(w, dw, call.slots, launcher);
  check_per_tensor(grad, {}, at::kFloat, w[0], launcher, "grad");
  check_per_tensor(amax, {L}, at::kFloat, w[0], launcher, "amax");
  check_per_tensor(sums, {L, 2}, at::kDouble, w[0], launcher, "sums");
  check_per_tensor(ties, {L}, at::kLong, w[0], launcher, "ties");
  call.p = regularizer_params(w, call.slots);
  call.p.bits = static_cast<int>(bits);
  call.p.amax = amax.const_data_ptr<float>();
  call.p.sums = sums.const_data_ptr<double>();
  call.p.ties = ties.const_data_ptr<int64_t>();
  call.p.grad = grad.const_data_ptr<float>();
  call.p.scale_grad = scale_grad;
  return call;
}

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_OSCILLATION_REGULARIZER_IMPLS(m, dev)                                            \
  m.impl("_oscillation_regularizer_amax_" #dev, &qkernels::oscillation_regularizer_amax_##dev);  \
  m.impl("_oscillation_regularizer_sums_" #dev, &qkernels::oscillation_regularizer_sums_##dev);  \
  m.impl("_oscillation_regularizer_backward_" #dev, &qkernels::oscillation_regularizer_backward_##dev)
