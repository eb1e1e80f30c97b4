// Per-quantizer math of the fused moving-average observer (qkernels/reference/fused_observer.py is the spec):
// the running-stat update, FBGEMM's ChooseQuantizationParams as torch's fused op computes it, and torch.ao's
// observer qparams. Host-and-device, torch-free. NaN propagates as in the torch ops the spec uses.
#pragma once

#include <cmath>
#include <cstdint>

#include "qkernels/fake_quant_math.h"
#include "qkernels/reduce.h"  // nan_min, nan_max

namespace qkernels {

// isinf(r) ? cur : r + c * (cur - r): two roundings as aten's CPU op computes it, or (contracted) one FMA
// fma(c, cur - r, r), as nvcc compiles aten's CUDA kernel by default (--fmad=true).
QK_HOST_DEVICE float moving_average(float running, float cur, float c, bool contracted) {
  if (std::isinf(running)) return cur;
  const float d = cur - running;
  return contracted ? fmaf(c, d, running) : running + c * d;
}

struct QParams {
  float scale;
  int32_t zero_point;
};

// float -> int32 as x86's cvtt does it (and torch's .to(int32) on the CPU): NaN and out of range -> INT32_MIN.
QK_HOST_DEVICE int32_t to_int32_x86(double v) {
  return (v >= -2147483648.0 && v < 2147483648.0) ? static_cast<int32_t>(v) : INT32_MIN;
}

// FBGEMM ChooseQuantizationParams(min, max, qmin, qmax, preserve_sparsity = symmetric), with the CPU's
// 6.1e-5 small-scale floor when small_scale_floor (torch's CUDA kernel has none).
QK_HOST_DEVICE QParams choose_qparams_fused(float mn, float mx, int64_t qmin, int64_t qmax, bool symmetric,
                                            bool small_scale_floor) {
  const bool sym = symmetric && mn < 0.0f && mx > 0.0f;
  if (sym) {
    const int64_t n = qmax - qmin;
    const float smin = static_cast<float>(-(n / 2 + 1)), smax = static_cast<float>(n / 2);
    const float m = std::fmax(std::fabs(mn / smin), std::fabs(mx / smax));  // both finite or inf here
    mn = m * smin;
    mx = m * smax;
  }
  mn = mn > 0.0f ? 0.0f : mn;  // min(mn, 0), NaN kept
  mx = mx < 0.0f ? 0.0f : mx;
  const float width = static_cast<float>(qmax - qmin);
  float scale =
      static_cast<float>((static_cast<double>(mx) - static_cast<double>(mn)) / static_cast<double>(qmax - qmin));
  if (scale == 0.0f || std::isinf(1.0f / scale)) scale = 0.1f;
  const float floor = 6.1e-5f;
  if (small_scale_floor && scale < floor) {
    const float ratio = floor / scale;
    if (mn == 0.0f) {
      mx = floor * width;
    } else if (mx == 0.0f) {
      mn = -floor * width;
    } else {
      mn *= ratio;
      mx *= ratio;
    }
    scale = floor;
  }
  const double s = scale, lo = static_cast<double>(qmin), hi = static_cast<double>(qmax);
  const double z_min = lo - static_cast<double>(mn) / s, z_max = hi - static_cast<double>(mx) / s;
  const bool from_min = (std::fabs(lo) + std::fabs(static_cast<double>(mn) / s)) <
                        (std::fabs(hi) + std::fabs(static_cast<double>(mx) / s));
  double z0 = from_min ? z_min : z_max;
  if (sym) z0 = (lo + hi) / 2.0;
  const double zp = z0 < lo ? lo : (z0 > hi ? hi : std::nearbyint(z0));
  return {scale, to_int32_x86(zp)};
}

// torch.ao's _calculate_qparams (float32, eps floor); never-observed stats (+inf, -inf) give (1.0, 0).
QK_HOST_DEVICE QParams choose_qparams_observer(float mn, float mx, int64_t qmin, int64_t qmax, bool symmetric,
                                               float eps, int32_t symmetric_zero_point) {
  if (std::isinf(mn) && mn > 0.0f && std::isinf(mx) && mx < 0.0f) return {1.0f, 0};
  const float minn = mn > 0.0f ? 0.0f : mn, maxp = mx < 0.0f ? 0.0f : mx;
  if (symmetric) {
    const float half_width = static_cast<float>(static_cast<double>(qmax - qmin) / 2.0);
    return {nan_max(nan_max(-minn, maxp) / half_width, eps), symmetric_zero_point};
  }
  const float scale = nan_max((maxp - minn) / static_cast<float>(qmax - qmin), eps);
  const int32_t r = to_int32_x86(round_half_even(minn / scale));
  const int64_t z = static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(qmin) - static_cast<uint32_t>(r)));
  return {scale, static_cast<int32_t>(z < qmin ? qmin : (z > qmax ? qmax : z))};
}

}  // namespace qkernels
