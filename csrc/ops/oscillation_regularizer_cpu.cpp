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
  const glue::RegularizerCall call = glue::regularizer_amax_call(w, out, "_oscillation_regularizer_amax_cpu");
  const RegularizerParams& p = call.p;
  parallel_for_slots(call.slots, call.blocks,
                     [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_amax(p, b, e); });
  float* dst = out.data_ptr<float>();
  for (int64_t l = 0; l < p.L; ++l) {
    const RegularizerSlot& s = call.slots[l];
    const float m = finish<AbsMaxCombine>(p.amax_partial + s.offset, s.blocks.P, 1);
    dst[l] = m != m ? std::numeric_limits<float>::quiet_NaN() : m;  // the spec's NaN, whatever the weight's was
  }
}

void oscillation_regularizer_sums_cpu(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                      at::Tensor& ties) {
  const glue::RegularizerCall call =
      glue::regularizer_sums_call(w, amax, bits, out, ties, "_oscillation_regularizer_sums_cpu");
  const RegularizerParams& p = call.p;
  parallel_for_slots(call.slots, call.blocks,
                     [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_sums(p, b, e); });
  double* sums = out.data_ptr<double>();
  int64_t* counts = ties.data_ptr<int64_t>();
  for (int64_t l = 0; l < p.L; ++l) {
    const RegularizerSlot& s = call.slots[l];
    sums[2 * l] = finish_sum(p.e_partial + s.offset, s.blocks.P, 1) / static_cast<double>(s.numel);
    sums[2 * l + 1] = finish_sum(p.t_partial + s.offset, s.blocks.P, 1);
    counts[l] = finish<CountCombine>(p.tie_partial + s.offset, s.blocks.P, 1);
  }
}

void oscillation_regularizer_backward_cpu(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                          const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                          int64_t bits, bool scale_grad) {
  const glue::RegularizerCall call = glue::regularizer_backward_call(w, dw, grad, amax, sums, ties, bits, scale_grad,
                                                                     "_oscillation_regularizer_backward_cpu");
  const RegularizerParams& p = call.p;
  parallel_for_slots(call.slots, call.blocks,
                     [&](int64_t b, int64_t e) { cpu::oscillation_regularizer_backward(p, b, e); });
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_OSCILLATION_REGULARIZER_IMPLS)
