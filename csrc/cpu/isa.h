// Run-time choice of a CPU loop's instruction-set build. Each family compiles its loops (csrc/cpu/F_impl.h)
// twice: for baseline x86-64 in csrc/cpu/F.cpp (namespace baseline) and for AVX2+FMA+F16C in F_avx2.cpp
// (namespace avx2, under `#pragma GCC target`); QK_CPU_DISPATCH(fn, args...) calls the build the running CPU
// supports, decided once per process; QK_CPU_ENTRY defines a family's usual entry point around it.
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
#define QK_CPU_DECLARE_AVX2(ret, fn, Params)          \
  namespace avx2 {                                      \
  ret fn(const Params& p, int64_t begin, int64_t end); \
  }
#else
#define QK_CPU_DISPATCH(fn, ...) baseline::fn(__VA_ARGS__)
#define QK_CPU_DECLARE_AVX2(ret, fn, Params)
#endif

// QK_CPU_ENTRY(ret, fn, Params) defines the entry point `ret fn(const Params& p, int64_t begin, int64_t end)` of
// loops built per instruction set (baseline:: here, avx2:: in the family's _avx2.cpp): it declares the AVX2
// build's and calls the one the running CPU supports.
#define QK_CPU_ENTRY(ret, fn, Params)                    \
  QK_CPU_DECLARE_AVX2(ret, fn, Params)                   \
  ret fn(const Params& p, int64_t begin, int64_t end) {  \
    return QK_CPU_DISPATCH(fn, p, begin, end);           \
  }

}  // namespace cpu
}  // namespace qkernels
