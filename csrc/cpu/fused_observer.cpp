// CPU fused observer entry points: the loops of fused_observer_impl.h built for baseline x86-64 (here) and for
// AVX2+FMA+F16C (fused_observer_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/fused_observer_kernels.h"

#define QK_CPU_ISA baseline
#include "fused_observer_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
void fused_observer_minmax(const ObserverParams& p, int64_t row_begin, int64_t row_end, float* lo, float* hi);
}  // namespace avx2
#endif

void fused_observer_minmax(const ObserverParams& p, int64_t row_begin, int64_t row_end, float* lo, float* hi) {
  QK_CPU_DISPATCH(fused_observer_minmax, p, row_begin, row_end, lo, hi);
}

}  // namespace cpu
}  // namespace qkernels
