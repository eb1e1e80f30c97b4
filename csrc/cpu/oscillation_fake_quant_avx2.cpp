// The CPU oscillation fake-quant loops built for AVX2+FMA+F16C (selected at run time by oscillation_fake_quant.cpp).
// Every header is parsed before the target pragma, so only the loops below are compiled for this instruction set;
// the math header's functions are force-inlined into them (no FMA contraction: -ffp-contract=off). The loops run
// 8 lanes of intrinsics (oscillation_fake_quant_avx2.h, QK_OSCILLATION_AVX2).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "qkernels/oscillation_fake_quant_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define QK_CPU_ISA avx2
#define QK_OSCILLATION_AVX2 1
#include "oscillation_fake_quant_impl.h"
#endif
