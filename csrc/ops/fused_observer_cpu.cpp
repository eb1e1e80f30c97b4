// The fused observer family's private CPU op qkernels::_fused_observer_update_cpu (and its per-tensor eager
// step): thin torch glue over csrc/cpu/fused_observer.cpp.
#include <ATen/Parallel.h>

#include <cmath>
#include <mutex>
#include <vector>

#include "fused_observer_glue.h"

namespace qkernels {

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
  std::vector<float> lo(p.channels, INFINITY), hi(p.channels, -INFINITY);
  if (observe && x.numel() > 0) {
    std::mutex fold;
    const auto combine = [&](const float* l, const float* h) {
      const std::lock_guard<std::mutex> lock(fold);
      for (int64_t c = 0; c < p.channels; ++c) lo[c] = nan_min(lo[c], l[c]), hi[c] = nan_max(hi[c], h[c]);
    };
    const int64_t size = x.element_size();
    if (p.channels == 1) {  // one run: split it into element ranges
      at::parallel_for(0, x.numel(), glue::kCpuGrain, [&](int64_t b, int64_t e) {
        ObserverParams q = p;
        q.x = static_cast<const char*>(p.x) + b * size;
        q.outer = 1;
        q.inner = e - b;
        float l = INFINITY, h = -INFINITY;
        cpu::fused_observer_minmax(q, 0, 1, &l, &h);
        combine(&l, &h);
      });
    } else if (p.outer == 1) {  // one row of channels (e.g. a weight on axis 0): split the channels
      at::parallel_for(0, p.channels, std::max<int64_t>(1, glue::kCpuGrain / p.inner), [&](int64_t b, int64_t e) {
        ObserverParams q = p;
        q.x = static_cast<const char*>(p.x) + b * p.inner * size;
        q.channels = e - b;
        cpu::fused_observer_minmax(q, 0, 1, lo.data() + b, hi.data() + b);  // disjoint channels: no combine
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, glue::kCpuGrain / (p.channels * p.inner));
      at::parallel_for(0, p.outer, grain, [&](int64_t b, int64_t e) {
        std::vector<float> l(p.channels, INFINITY), h(p.channels, -INFINITY);
        cpu::fused_observer_minmax(p, b, e, l.data(), h.data());
        combine(l.data(), h.data());
      });
    }
  }
  for (int64_t c = 0; c < p.channels; ++c) observer_finish_channel(p, c, lo[c], hi[c], observe, recompute);
}

}  // namespace qkernels

QKERNELS_REGISTER_LAUNCHERS(qkernels, cpu, CPU, QKERNELS_FUSED_OBSERVER_IMPLS)
QKERNELS_REGISTER_EAGER(cpu, QKERNELS_FUSED_OBSERVER_EAGER_SCHEMAS, QKERNELS_FUSED_OBSERVER_EAGER_IMPLS)
