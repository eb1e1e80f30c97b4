// Run-time choice of a CPU loop's instruction-set build. Each family compiles its loops (csrc/cpu/F_impl.h)
// twice: for baseline x86-64 in csrc/cpu/F.cpp (namespace baseline) and for AVX2+FMA+F16C in F_avx2.cpp
// (namespace avx2, under `#pragma GCC target`); QK_CPU_DISPATCH(fn, args...) calls the build the running CPU
// supports, decided once per process.
#pragma once

namespace qkernels {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__)
#define QK_CPU_HAS_AVX2_BUILD 1
inline bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}
#define QK_CPU_DISPATCH(fn, ...) (::qkernels::cpu::has_avx2() ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define QK_CPU_DISPATCH(fn, ...) baseline::fn(__VA_ARGS__)
#endif

}  // namespace cpu
}  // namespace qkernels
