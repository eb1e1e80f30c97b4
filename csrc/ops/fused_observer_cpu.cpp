// The fused observer family's private CPU op qkernels::_fused_observer_update_cpu (and its per-tensor eager
// step): thin torch glue over csrc/cpu/fused_observer.cpp.
#include <vector>

#include "fused_observer_glue.h"
#include "reduce_glue.h"

namespace qkernels {
namespace {

constexpr int64_t kObserverBlock = 1 << 14;  // elements per min/max block

}  // namespace

void fused_observer_update_cpu(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                               at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                               at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                               int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                               int64_t flavour) {
  const ObserverParams p = glue::observer_params(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                                 zero_point, averaging_const, quant_min, quant_max, inner, symmetric,
                                                 mode, eps, symmetric_zero_point, flavour);
  // CPU tensors: the flags are read on the host, which is no device sync, and the pass over x is skipped
  // while the observer is off.
  const bool observe = flag_is_on(p.observer_on);
  const bool recompute = observer_recomputes(p, observe);
  // The min/max as the reduction layer's MinMax kind: one partial per block of the fixed layout, then the
  // blocks of each channel folded in order p = 0, 1, ..., P - 1, so no result depends on the thread count.
  const ReduceDims dims = cpu::observer_dims(p);
  const ReduceBlocks blocks = make_reduce_blocks(dims, kObserverBlock);
  std::vector<MinMax> partials;
  if (observe && x.numel() > 0) {
    partials.resize(blocks.P * p.channels);
    glue::parallel_for_blocks(dims, blocks, [&](int64_t b, int64_t e) {
      cpu::fused_observer_minmax(p, blocks, b, e, partials.data());
    });
  }
  for (int64_t c = 0; c < p.channels; ++c) {
    const MinMax m = partials.empty() ? MinMaxCombine::identity()
                                      : finish<MinMaxCombine>(partials.data() + c, blocks.P, p.channels);
    observer_finish_channel(p, c, m.lo, m.hi, observe, recompute);
  }
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_FUSED_OBSERVER_IMPLS)
QKERNELS_REGISTER_EAGER(cpu, QKERNELS_FUSED_OBSERVER_EAGER_SCHEMAS, QKERNELS_FUSED_OBSERVER_EAGER_IMPLS)
