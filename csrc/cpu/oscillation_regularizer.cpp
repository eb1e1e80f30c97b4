// CPU oscillation regularizer entry points: the loops of oscillation_regularizer_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (oscillation_regularizer_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/oscillation_regularizer_kernels.h"

#define QK_CPU_ISA baseline
#include "oscillation_regularizer_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
void oscillation_regularizer_amax(const RegularizerParams& p, int64_t begin, int64_t end);
void oscillation_regularizer_sums(const RegularizerParams& p, int64_t begin, int64_t end);
void oscillation_regularizer_backward(const RegularizerParams& p, int64_t begin, int64_t end);
}  // namespace avx2
#endif

void oscillation_regularizer_amax(const RegularizerParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(oscillation_regularizer_amax, p, begin, end);
}

void oscillation_regularizer_sums(const RegularizerParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(oscillation_regularizer_sums, p, begin, end);
}

void oscillation_regularizer_backward(const RegularizerParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(oscillation_regularizer_backward, p, begin, end);
}

}  // namespace cpu
}  // namespace qkernels
