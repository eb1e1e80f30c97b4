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
void fused_observer_minmax(const ObserverParams& p, const ReduceBlocks& blocks, int64_t begin, int64_t end,
                           MinMax* partials);
}  // namespace avx2
#endif

void fused_observer_minmax(const ObserverParams& p, const ReduceBlocks& blocks, int64_t begin, int64_t end,
                           MinMax* partials) {
  QK_CPU_DISPATCH(fused_observer_minmax, p, blocks, begin, end, partials);
}

}  // namespace cpu
}  // namespace qkernels
