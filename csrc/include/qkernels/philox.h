// Counter-based random numbers, torch-free and host+device: Philox4x32-R (Salmon et al. 2011, Random123) and the
// per-element convention of qkernels' random draws. The spec is qkernels/reference/philox.py; the Triton twin is
// triton_kernels/_philox.py. All three give the same bits (tests/test_philox.py; csrc/tests/test_philox.cpp holds
// Random123's known-answer vectors).
//
// Philox4x32: counter (c0, c1, c2, c3), key (k0, k1), all uint32. Each round maps
//   c0, c1, c2, c3 <- hi(M1 * c2) ^ c1 ^ k0, lo(M1 * c2), hi(M0 * c0) ^ c3 ^ k1, lo(M0 * c0)
// (hi/lo: upper/lower 32 bits of the 64-bit product), then bumps the key by (W0, W1) mod 2^32. Random123's
// philox4x32_R, at::Philox4_32 and Triton's tl.philox, word for word.
//
// Element convention (philox_element): a call's key is the int64 pair [seed, offset] drawn on the device by
// qkernels.reference.philox.draw_key and read by the kernel from device memory (no host sync; CUDA-graph safe).
// Element i (its linear index, whatever thread handles it) gets the four words at counter (i_lo, i_hi,
// offset_lo, offset_hi) and key (seed_lo, seed_hi), so a draw never depends on the launch configuration.
#pragma once

#include <cstdint>

#include "qkernels/host_device.h"

namespace qkernels {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key bumps (Weyl sequence)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// The four output words of one counter.
struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

// Upper 32 bits of the 64-bit product a * b.
QK_HOST_DEVICE uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32-Rounds of counter (c0, c1, c2, c3) under key (k0, k1).
template <int Rounds = 10>
QK_HOST_DEVICE PhiloxWords philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)  // device pass only: the host compiler of a .cu file warns on the pragma
#pragma unroll
#endif
  for (int r = 0; r < Rounds; ++r) {
    const uint32_t hi0 = philox_mulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = philox_mulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return PhiloxWords{c0, c1, c2, c3};
}

// The four words of element `index` of a call keyed by (seed, offset) (the element convention above).
template <int Rounds = 10>
QK_HOST_DEVICE PhiloxWords philox_element(int64_t seed, int64_t offset, int64_t index) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset), i = static_cast<uint64_t>(index);
  return philox4x32<Rounds>(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), static_cast<uint32_t>(o),
                            static_cast<uint32_t>(o >> 32), static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
}

}  // namespace qkernels
