// The oscillation regularizer family's private CPU ops qkernels::_oscillation_regularizer_{amax, sums,
// backward}_cpu: thin torch glue over csrc/cpu/oscillation_regularizer.cpp. Each launcher is one at::parallel_for
// over the blocks of all its tensors; the partials are finished here, per tensor in block order, so the results
// never depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "oscillation_regularizer_glue.h"

namespace qkernels {
namespace {

// Runs fn(begin, end) over the call's blocks, each thread taking at least kCpuGrain elements' worth of them (the
// blocks of small tensors hold few elements; waking the thread pool costs more than a small pass).
template <typename F>
void parallel_for_slots(const std::vector<RegularizerSlot>& slots, int64_t blocks, const F& fn) {
  int64_t numel = 0;
  for (const RegularizerSlot& s : slots) numel += s.numel;
  const int64_t per_block = std::max<int64_t>(1, numel / blocks);
  at::parallel_for(0, blocks, std::max<int64_t>(1, glue::kCpuGrain / per_block), fn);
}

}  // namespace

void oscillation_regularizer_amax_cpu(at::TensorList w, at::Tensor& out) {
  constexpr const char* kLauncher = "_oscillation_regularizer_amax_cpu";
  int64_t blocks = 0;
  const std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const int64_t L = static_cast<int64_t>(slots.size());
  glue::check_per_tensor(out, {L}, at::kFloat, w[0], kLauncher, "out");
  RegularizerParams p = glue::regularizer_params(w, slots);
  const at::Tensor partials = at::empty({blocks}, out.options());
  p.amax_partial = partials.data_ptr<float>();
  parallel_for_slots(slots, blocks, [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_amax(p, b, e); });
  float* dst = out.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l) {
    const float m = finish<AbsMaxCombine>(p.amax_partial + slots[l].offset, slots[l].blocks.P, 1);
    dst[l] = m != m ? std::numeric_limits<float>::quiet_NaN() : m;  // the spec's NaN, whatever the weight's was
  }
}

void oscillation_regularizer_sums_cpu(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                      at::Tensor& ties) {
  constexpr const char* kLauncher = "_oscillation_regularizer_sums_cpu";
  int64_t blocks = 0;
  const std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const int64_t L = static_cast<int64_t>(slots.size());
  glue::check_bits(bits, kLauncher);
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
  parallel_for_slots(slots, blocks, [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_sums(p, b, e); });
  double* sums = out.data_ptr<double>();
  int64_t* counts = ties.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    const RegularizerSlot& s = slots[l];
    sums[2 * l] = finish_sum(p.e_partial + s.offset, s.blocks.P, 1) / static_cast<double>(s.numel);
    sums[2 * l + 1] = finish_sum(p.t_partial + s.offset, s.blocks.P, 1);
    counts[l] = finish<CountCombine>(p.tie_partial + s.offset, s.blocks.P, 1);
  }
}

void oscillation_regularizer_backward_cpu(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                          const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                          int64_t bits, bool scale_grad) {
  constexpr const char* kLauncher = "_oscillation_regularizer_backward_cpu";
  int64_t blocks = 0;
  std::vector<RegularizerSlot> slots = glue::regularizer_slots(w, kLauncher, blocks);
  const int64_t L = static_cast<int64_t>(slots.size());
  glue::check_bits(bits, kLauncher);
  glue::set_gradients(w, dw, slots, kLauncher);
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
  parallel_for_slots(slots, blocks, [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_backward(p, b, e); });
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_OSCILLATION_REGULARIZER_IMPLS)
