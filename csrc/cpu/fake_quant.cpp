// CPU fake-quant entry points: the loops of fake_quant_impl.h built for baseline x86-64 (here) and for
// AVX2+FMA+F16C (fake_quant_avx2.cpp), chosen once from the running CPU.
#include "qkernels/fake_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "fake_quant_impl.h"
#undef QK_CPU_ISA

namespace qkernels {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__)
namespace avx2 {
void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end);
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end);
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end);
}  // namespace avx2

static bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}
#define QK_CPU_DISPATCH(fn, ...) (has_avx2() ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define QK_CPU_DISPATCH(fn, ...) baseline::fn(__VA_ARGS__)
#endif

void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(fake_quant_per_tensor, p, begin, end);
}
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(fake_quant_per_channel, p, begin, end);
}
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(fake_quant_backward, p, begin, end);
}

}  // namespace cpu
}  // namespace qkernels
