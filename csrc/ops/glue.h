// Torch glue shared by every family's private launcher ops (csrc/ops/<family>_{cpu,cuda}.cpp): tensors -> the
// POD params of the torch-free kernel interfaces (csrc/include/qkernels/<family>_kernels.h), and the
// registration of a family's ops. Argument checking of public inputs happens once, in Python (qkernels/) or in
// the C++ entry points that stand in for it (python_entry.cpp); the glue's checks are internal checks of what
// they hand over.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "qkernels/enums.h"

namespace qkernels {
namespace glue {

// Elements per at::parallel_for grain of the CPU launchers: waking the thread pool costs more than a smaller
// range of work.
constexpr int64_t kCpuGrain = 1 << 15;

inline int64_t flavour_of(const at::Tensor& x) {
  return static_cast<int64_t>(x.is_cuda() ? Flavour::Cuda : Flavour::Cpu);
}

// Elements between consecutive indices of `axis` in t's dense storage (as qkernels/_shared.py's _inner_stride): its
// stride, or every element when the axis has one index.
inline int64_t inner_stride(const at::Tensor& t, int64_t axis) {
  const int64_t size = t.size(axis);
  return size > 1 ? t.stride(axis) : std::max<int64_t>(1, t.numel() / std::max<int64_t>(1, size));
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, "qkernels: unsupported dtype ", t.scalar_type());
  }
}

// A mask is bool with the layout of `like`, or packed: uint8, contiguous, one bit per element.
inline bool mask_is_packed(const at::Tensor& mask, const at::Tensor& like) {
  if (mask.scalar_type() == at::kByte) {
    TORCH_CHECK(mask.is_contiguous() && mask.numel() == (like.numel() + 7) / 8,
                "qkernels: a packed mask is contiguous uint8 with one bit per element");
    return true;
  }
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.strides() == like.strides() && mask.sizes() == like.sizes(),
              "qkernels: mask must be bool with the sizes and strides of its tensor, or packed uint8");
  return false;
}

// x and out must share one dense layout; the kernels walk storage order.
inline void check_pair(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.strides() == x.strides() && out.sizes() == x.sizes(),
              "qkernels: out must match x in dtype, sizes and strides");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "qkernels: x must be dense");
}

}  // namespace glue
}  // namespace qkernels

// Implements a family's private launcher ops in library `ns` for device `dev` (cpu or cuda) on dispatch key `Key`:
// IMPLS(m, dev), a macro of the family's glue header. Their schemas are the family's launcher contract, defined
// once in Python (qkernels/<family>.py, LAUNCHERS; qkernels/_launchers.py), which torch checks these functions
// against.
#define QKERNELS_REGISTER_LAUNCHERS(ns, dev, Key, IMPLS) \
  TORCH_LIBRARY_IMPL(ns, Key, m) { IMPLS(m, dev); }

// Registers a family's eager forwards with their C++ autograd nodes (the opt-in fast path: ARCHITECTURE.md) for
// device `dev` as CompositeImplicitAutograd ops of library qkernels, so that the nodes see the inputs' autograd
// state: SCHEMAS(m, "dev") and IMPLS(m, dev) as above.
#define QKERNELS_REGISTER_EAGER(dev, SCHEMAS, IMPLS) \
  TORCH_LIBRARY_FRAGMENT(qkernels, m) { SCHEMAS(m, #dev); } \
  TORCH_LIBRARY_IMPL(qkernels, CompositeImplicitAutograd, m) { IMPLS(m, dev); }
