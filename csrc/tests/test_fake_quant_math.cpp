// Host test of qkernels/fake_quant_math.h and fake_quant_learnable_math.h: the rounding, conversion and
// division helpers against their plain definitions, and the float fast paths against the exact (wide zero
// point, int64) paths they replace.
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "qkernels/fake_quant_learnable_math.h"
#include "qkernels/fake_quant_math.h"
#include "host_check.h"

using namespace qkernels;

static uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static float edge(std::mt19937& rng) {
  static const float specials[] = {0.5f, 1.5f, 2.5f, -2.5f, -0.5f, 8388607.5f, 4194303.5f, -4194304.5f, 16777216.f,
                                   1e20f, -1e20f, 9.3e18f, INFINITY, -INFINITY, NAN, 0.f, -0.f, 1e-40f};
  std::uniform_int_distribution<int> pick(0, 3);
  if (pick(rng) == 0) return specials[rng() % (sizeof(specials) / sizeof(float))];
  float f;
  uint32_t u = rng();
  std::memcpy(&f, &u, 4);
  return pick(rng) == 1 ? f : std::ldexp(static_cast<float>(static_cast<int32_t>(rng())), -(int)(rng() % 40));
}

int main() {
  std::fesetround(FE_TONEAREST);
  std::mt19937 rng(1234);

  for (int i = 0; i < 2000000; ++i) {
    const float v = edge(rng);
    const float got = round_half_even(v), want = std::nearbyint(v);
    CHECK((std::isnan(want) && std::isnan(got)) || got == want, "round_half_even(%a) = %a, want %a\n", v, got, want);
    const int64_t c = to_int64_cuda(want);
    const float two63 = 9.223372036854775808e18f;
    const int64_t cw = std::isnan(want)      ? INT64_MIN
                       : want >= two63       ? INT64_MAX
                       : want < -two63       ? INT64_MIN
                                             : static_cast<int64_t>(want);
    CHECK(c == cw, "to_int64_cuda(%a)\n", want);
  }
  CHECK(wrapping_add(INT64_MIN, -3) == INT64_MAX - 2, "wrapping_add low\n");
  CHECK(wrapping_add(INT64_MAX, 1) == INT64_MIN, "wrapping_add high\n");

  for (int i = 0; i < 200000; ++i) {
    const uint32_t d = 1 + rng() % ((i % 3 == 0) ? 7u : (i % 3 == 1 ? 70000u : 0x7FFFFFFFu));
    const FastDivmod fd(d);
    for (int k = 0; k < 8; ++k) {
      const uint32_t n = (k == 0) ? 0x7FFFFFFFu : (k == 1 ? d - 1 : rng() % 0x80000000u);
      CHECK(fd.div(n) == n / d && fd.mod(n) == n % d, "FastDivmod(%u) of %u\n", d, n);
    }
  }

  // The float paths equal the exact (wide) paths whenever |z| <= 2^23 and the bounds are <= 2^22.
  std::uniform_int_distribution<int> zd(-(1 << 23), 1 << 23), bd(-(1 << 22), 1 << 22);
  for (int i = 0; i < 2000000; ++i) {
    const float x = edge(rng);
    const float scale = std::ldexp(1.0f + (rng() % 1000) / 999.0f, (int)(rng() % 16) - 8);
    const float inv = 1.0f / scale;
    int64_t lo = bd(rng), hi = bd(rng);
    if (lo > hi) std::swap(lo, hi);
    const int64_t z = zd(rng);
    bool a_mask;
    const float a_y = fq_per_tensor<Flavour::Cpu, false>(x, scale, inv, z, float(lo), float(hi), a_mask);
    bool b_mask;
    const float b_y = fq_per_tensor<Flavour::Cpu, true>(x, scale, inv, z, float(lo), float(hi), b_mask);
    CHECK(bits(a_y) == bits(b_y) && a_mask == b_mask, "per_tensor fast/wide x=%a z=%lld\n", x, (long long)z);
    bool c_mask;
    const float c_y = fq_per_channel_int_zp<Flavour::Cpu, false>(x, scale, inv, z, lo, hi, c_mask);
    bool e_mask;
    const float e_y = fq_per_channel_int_zp<Flavour::Cpu, true>(x, scale, inv, z, lo, hi, e_mask);
    CHECK(bits(c_y) == bits(e_y) && c_mask == e_mask, "per_channel fast/wide x=%a z=%lld\n", x, (long long)z);
    // Cuda per-channel int zero point: the float fast path against aten's literal int64 definition.
    for (const int64_t zz : {z, z * 256 + 5, int64_t(INT32_MIN), int64_t(INT32_MAX)}) {
      bool i_mask;
      const float i_y = fq_per_channel_int_zp<Flavour::Cuda, false>(x, scale, inv, zz, lo, hi, i_mask);
      const int64_t qi = wrapping_add(to_int64_cuda(std::nearbyint(x * inv)), zz);
      const int64_t qc = qi < lo ? lo : (qi > hi ? hi : qi);
      const float want_y = static_cast<float>(qc - zz) * scale;
      CHECK(i_mask == (lo <= qi && qi <= hi) && bits(i_y) == bits(want_y), "cuda int zp x=%a z=%lld\n", x,
            (long long)zz);
    }
    // Cuda per-channel float zero point: the float clamp of the rounded value equals aten's literal
    // definition through a saturating int64 conversion (lrint), for every input including NaN and inf.
    const float zf = static_cast<float>(z) * 0.25f;
    bool g_mask;
    const float g_y = fq_per_channel_float_zp<Flavour::Cuda>(x, scale, inv, zf, float(lo), float(hi), true, g_mask);
    const int64_t q = to_int64_cuda(std::nearbyint(std::fma(x, inv, zf)));
    const float want = (std::fmin(float(hi), std::fmax(float(lo), static_cast<float>(q))) - zf) * scale;
    CHECK(g_mask == (lo <= q && q <= hi) && bits(g_y) == bits(want), "cuda float zp x=%a z=%a\n", x, zf);
  }

  // Bound cases from aten (s = 1, z = 0, [-128, 127]): ties, +-inf, NaN.
  bool t1_mask;
    const float t1_y = fq_per_tensor<Flavour::Cpu, false>(-128.5f, 1.f, 1.f, 0, -128.f, 127.f, t1_mask);
  CHECK(t1_y == -128.f && t1_mask, "-128.5 -> -128 in range\n");
  bool t2_mask;
    const float t2_y = fq_per_tensor<Flavour::Cpu, false>(127.5f, 1.f, 1.f, 0, -128.f, 127.f, t2_mask);
  CHECK(t2_y == 127.f && !t2_mask, "127.5 -> 127 out of range\n");
  bool t3_mask;
    const float t3_y = fq_per_tensor<Flavour::Cpu, false>(NAN, 1.f, 1.f, 0, -128.f, 127.f, t3_mask);
  CHECK(t3_y == -128.f && !t3_mask, "NaN -> qmin\n");
  bool t4_mask;
    const float t4_y = fq_per_channel_int_zp<Flavour::Cuda, false>(-INFINITY, 1.f, 1.f, -3, -128, 127, t4_mask);
  CHECK(t4_y == 130.f && !t4_mask, "cuda -inf with z=-3 wraps to qmax\n");
  bool t5_mask;
    const float t5_y = fq_per_channel_int_zp<Flavour::Cpu, false>(INFINITY, 1.f, 1.f, 0, -128, 127, t5_mask);
  CHECK(t5_y == -128.f && !t5_mask, "cpu per-channel +inf -> qmin\n");

  // Learnable zero points (aten): forward rne then clamp; per-tensor backward trunc(clamp(zp + 0.5)).
  const float zps[] = {2.5f, -0.6f, -3.7f, 0.5f, -200.f};
  const float fwd[] = {2.f, -1.f, -4.f, 0.f, -128.f}, bwd[] = {3.f, 0.f, -3.f, 1.f, -128.f};
  for (int i = 0; i < 5; ++i) {
    CHECK(forward_zero_point(zps[i], -128.f, 127.f) == fwd[i], "forward_zero_point(%g)\n", zps[i]);
    CHECK(backward_zero_point(zps[i], -128.f, 127.f, ZpRule::TorchPerTensor) == bwd[i], "zb(%g)\n", zps[i]);
    CHECK(backward_zero_point(zps[i], -128.f, 127.f, ZpRule::Torch) == fwd[i], "zb torch(%g)\n", zps[i]);
  }
  // Learnable backward, Cuda flavour: the float fast path against the int64 definition of the level.
  for (int i = 0; i < 1000000; ++i) {
    const float x = edge(rng);
    const float s = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, static_cast<int>(rng() % 16) - 8);
    const float inv = 1.0f / s;
    const int64_t qmin = -static_cast<int64_t>(rng() % (1u << 22)), qmax = rng() % (1u << 22);
    const float zb = static_cast<float>(qmin + static_cast<int64_t>(rng() % static_cast<uint64_t>(qmax - qmin + 1)));
    float ds, dz;
    const float dx = learnable_grad<Flavour::Cuda>(x, 1.0f, s, inv, zb, float(qmin), float(qmax), 1.0f,
                                                   ZpRule::Torch, false, ds, dz);
    const int64_t q = wrapping_add(to_int64_cuda(std::nearbyint(x * inv)), static_cast<int64_t>(zb));
    const bool inside = qmin <= q && q <= qmax;
    CHECK(dx == (inside ? 1.0f : 0.0f), "learnable cuda level: x=%a s=%a zb=%g\n", x, s, zb);
    CHECK((dz == 0.0f) == inside, "learnable cuda dz: x=%a\n", x);
  }

  return report();
}
