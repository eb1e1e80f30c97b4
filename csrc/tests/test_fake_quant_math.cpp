// Host test of qkernels/fake_quant_math.h: the rounding, conversion and division helpers against their
// plain definitions, and the float fast paths against the exact (wide zero point) paths they replace.
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "qkernels/fake_quant_math.h"

using namespace qkernels;

static int failures = 0;
#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      if (++failures <= 20) std::printf(__VA_ARGS__);     \
    }                                                     \
  } while (0)

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
    // x86 conversion: in range -> truncation of the integral value, else INT64_MIN.
    const bool in = want >= -9.223372036854775808e18f && want < 9.223372036854775808e18f;
    CHECK(to_int64_x86(want) == (in ? static_cast<int64_t>(want) : INT64_MIN), "to_int64_x86(%a)\n", want);
    const int64_t c = to_int64_cuda(want);
    const int64_t cw = std::isnan(want) ? INT64_MIN : (want >= 9.223372036854775808e18f ? INT64_MAX
                                                        : (want < -9.223372036854775808e18f ? INT64_MIN
                                                                                              : static_cast<int64_t>(want)));
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
    const FqOut a = fq_per_tensor<Flavour::Cpu, false>(x, scale, inv, z, float(lo), float(hi));
    const FqOut b = fq_per_tensor<Flavour::Cpu, true>(x, scale, inv, z, float(lo), float(hi));
    CHECK(bits(a.y) == bits(b.y) && a.mask == b.mask, "per_tensor fast/wide x=%a z=%lld\n", x, (long long)z);
    const FqOut c = fq_per_channel_int_zp<Flavour::Cpu, false>(x, scale, inv, z, lo, hi);
    const FqOut e = fq_per_channel_int_zp<Flavour::Cpu, true>(x, scale, inv, z, lo, hi);
    CHECK(bits(c.y) == bits(e.y) && c.mask == e.mask, "per_channel fast/wide x=%a z=%lld\n", x, (long long)z);
    // Cuda per-channel int zero point: the float mask of the rounded value matches the int64 definition.
    const float r = std::nearbyint(x * inv);
    const FqOut g = fq_per_channel_int_zp<Flavour::Cuda, false>(x, scale, inv, z, lo, hi);
    const int64_t q = wrapping_add(to_int64_cuda(r), z);
    CHECK(g.mask == (lo <= q && q <= hi), "cuda per_channel mask x=%a z=%lld\n", x, (long long)z);
  }

  // Bound cases from aten (s = 1, z = 0, [-128, 127]): ties, +-inf, NaN.
  const FqOut t1 = fq_per_tensor<Flavour::Cpu, false>(-128.5f, 1.f, 1.f, 0, -128.f, 127.f);
  CHECK(t1.y == -128.f && t1.mask, "-128.5 -> -128 in range\n");
  const FqOut t2 = fq_per_tensor<Flavour::Cpu, false>(127.5f, 1.f, 1.f, 0, -128.f, 127.f);
  CHECK(t2.y == 127.f && !t2.mask, "127.5 -> 127 out of range\n");
  const FqOut t3 = fq_per_tensor<Flavour::Cpu, false>(NAN, 1.f, 1.f, 0, -128.f, 127.f);
  CHECK(t3.y == -128.f && !t3.mask, "NaN -> qmin\n");
  const FqOut t4 = fq_per_channel_int_zp<Flavour::Cuda, false>(-INFINITY, 1.f, 1.f, -3, -128, 127);
  CHECK(t4.y == 130.f && !t4.mask, "cuda -inf with z=-3 wraps to qmax\n");
  const FqOut t5 = fq_per_channel_int_zp<Flavour::Cpu, false>(INFINITY, 1.f, 1.f, 0, -128, 127);
  CHECK(t5.y == -128.f && !t5.mask, "cpu per-channel +inf -> qmin\n");

  std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
