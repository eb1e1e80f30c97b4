// QK_HOST_DEVICE: a function of the torch-free headers that both nvcc's device code and the host compiler build.
#pragma once

#if defined(__CUDACC__)
#define QK_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced: without it GCC leaves some of these calls out of line in the AVX2 builds (`#pragma GCC target` in
// csrc/cpu/*_avx2.cpp), and those loops are then not vectorized.
#define QK_HOST_DEVICE inline __attribute__((always_inline))
#else
#define QK_HOST_DEVICE inline
#endif
