// The CPU oscillation regularizer loops built for AVX2+FMA+F16C (selected at run time by
// oscillation_regularizer.cpp). Every header is parsed before the target pragma, so only the loops below are
// compiled for this instruction set; the math headers' functions are force-inlined into them (no FMA contraction:
// -ffp-contract=off).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "qkernels/oscillation_regularizer_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define QK_CPU_ISA avx2
#include "oscillation_regularizer_impl.h"
#endif
