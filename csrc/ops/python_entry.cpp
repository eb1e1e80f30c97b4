// The Python module qkernels._C: the public functions' eager calls in one C++ call from Python.
//
//   fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max, backend, pack_mask)
//   fake_quantize_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max, backend, pack_mask)
//   fused_moving_avg_obs_fake_quant(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
//     averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant, qparams, eps,
//     symmetric_zero_point, backend, pack_mask)  (per tensor only)
//   fused_observer_update(the same but pack_mask) -> True, or None  (the observer step alone, any granularity)
//   fake_quantize_learnable(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
//     zero_point_rounding, backend)  (axis None: per tensor; group_size None: per channel)
//     -> Tensor, or None
//
// Same arguments as the public functions (qkernels/fake_quant.py, qkernels/fused_observer.py,
// qkernels/fake_quant_learnable.py's _call; keywords passed by position), plus `backend` (the use_backend() override,
// or None) and `pack_mask` (packed_masks()); the caller has ruled out torch.compile tracing. The call runs the native
// eager op of x's device (csrc/ops/<family>_glue.h: allocation, launch, autograd node) when it is plain eager (no
// torch-function or dispatch mode, no functorch transform, plain tensors or parameters), asks for the native backend of
// x's device and is valid: every argument of the type the spec expects, and every check of the Python module passing.
// Anything else returns None, and the caller takes the Python path, which raises the errors (with their messages),
// chooses other backends and converts other argument types. So these predicates may only be stricter than the Python
// checks, never looser: the tests run every bad input through this entry and without it.
//
// Why: parsing the arguments of a registered op from Python, and the Python checks, cost several times the C++
// work of a small call (benchmarks/NOTES.md, host time).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/Version.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <Python.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

#include "glue.h"

namespace qkernels {
namespace {

constexpr int64_t kMaxKernelQuantBound = int64_t{1} << 22;  // qkernels.backends.MAX_KERNEL_QUANT_BOUND

// ---------------------------------------------------------------------------------------------------------------
// Arguments: Python objects -> C++ values, or nothing when the object is not of the expected type.
// ---------------------------------------------------------------------------------------------------------------
// Exactly torch.Tensor or nn.Parameter (which disables __torch_function__); other subclasses take the Python path.
const at::Tensor* plain_tensor(PyObject* o) {
  return THPVariable_CheckExact(o) ? &THPVariable_Unpack(o) : nullptr;
}

std::optional<int64_t> python_int(PyObject* o) {
  if (!PyLong_CheckExact(o)) return std::nullopt;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return std::nullopt;
  }
  return v;
}

// float(scale) of fake_quant.py for a Python float or int.
std::optional<double> python_float(PyObject* o) {
  if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
  if (!PyLong_CheckExact(o)) return std::nullopt;
  const double v = PyLong_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return std::nullopt;
  }
  return v;
}

// An axis of a dim-D tensor, in [0, dim), or nothing when it is outside [-dim, dim).
std::optional<int64_t> wrapped_axis(int64_t axis, int64_t dim) {
  if (axis < -dim || axis >= dim) return std::nullopt;
  return axis < 0 ? axis + dim : axis;
}

// ---------------------------------------------------------------------------------------------------------------
// When the native eager op may run the call (as qkernels/_shared.py's _plain_eager and qkernels/backends.py's select).
// ---------------------------------------------------------------------------------------------------------------
bool plain_eager() {
  return !at::impl::torch_function_mode_enabled() && c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

// The backend asked for: the override, else QKERNELS_BACKEND (os.environ writes reach the C environment), else
// "auto"; trimmed and lowercased as backends.requested() does for ASCII names (others fall back to Python).
std::string requested_backend(PyObject* override_name) {
  const char* raw = nullptr;
  if (override_name != Py_None) {
    if (!PyUnicode_Check(override_name)) return "";
    raw = PyUnicode_AsUTF8(override_name);
    if (raw == nullptr) {
      PyErr_Clear();
      return "";
    }
    if (*raw == '\0') raw = nullptr;  // `_override.get() or env`: an empty override reads the environment
  }
  if (raw == nullptr) raw = std::getenv("QKERNELS_BACKEND");
  std::string name;
  for (const char* c = raw ? raw : ""; *c != '\0'; ++c) {
    if (!std::isspace(static_cast<unsigned char>(*c))) name += static_cast<char>(std::tolower(*c));
    else if (!name.empty()) name += ' ';  // inner space: no valid name; trailing spaces are trimmed below
  }
  while (!name.empty() && name.back() == ' ') name.pop_back();
  return name.empty() ? "auto" : name;
}

// The native backend of x's device is the one chosen (auto picks it first on CPU and CUDA tensors whenever it is
// loaded and the kernels take the call) and the kernels take the call: float32/float16/bfloat16, |bounds| <= 2^22.
bool native_backend_chosen(PyObject* override_name, const at::Tensor& x, int64_t quant_min, int64_t quant_max) {
  if (!(x.is_cpu() || x.is_cuda())) return false;  // (meta and other devices: the reference backend)
  if (x.layout() != at::kStrided || x.is_nested()) return false;
  const at::ScalarType t = x.scalar_type();
  if (!(t == at::kFloat || t == at::kHalf || t == at::kBFloat16)) return false;
  if (std::llabs(quant_min) > kMaxKernelQuantBound || std::llabs(quant_max) > kMaxKernelQuantBound) return false;
  const std::string name = requested_backend(override_name);
  return name == "auto" || (name == "cpu" && x.is_cpu()) || (name == "cuda" && x.is_cuda());
}

// qkernels/fake_quant.py's _values_checkable: qparam values are read where that costs no device sync, or everywhere
// with QKERNELS_CHECK_VALUES=1 (then CUDA qparams take the Python path, which reads them).
enum class Values { Check, Skip, Python };

Values values_rule(const at::Tensor& t) {
  if (t.is_cpu()) return Values::Check;
  const char* v = std::getenv("QKERNELS_CHECK_VALUES");
  return v != nullptr && std::string(v) == "1" ? Values::Python : Values::Skip;
}

// Every value of a CPU tensor, as double, passes `ok`.
template <typename Pred>
bool all_values(const at::Tensor& tensor, Pred ok) {
  const at::Tensor t = tensor.dim() > 1 ? tensor.contiguous() : tensor;
  const int64_t n = t.numel(), step = t.dim() == 1 ? t.stride(0) : 1;
  bool pass = true;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kInt, t.scalar_type(), "all_values", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n && pass; ++i) pass = ok(static_cast<double>(p[i * step]));
  });
  return pass;
}

bool positive_finite(double v) { return 0.0 < v && v < INFINITY; }

// Every value of t passes `ok` where its values are checked (values_rule).
template <typename Pred>
bool values_pass(const at::Tensor& t, Pred ok) {
  switch (values_rule(t)) {
    case Values::Check: return all_values(t, ok);
    case Values::Skip: return true;
    default: return false;
  }
}

// Scale values pass _shared.py's _check_scale_tensor_values; zero points its per-channel range check, and the
// learnable ops' NaN check (fake_quant_learnable.py's _check).
bool scale_values_pass(const at::Tensor& scale) { return values_pass(scale, positive_finite); }

bool zero_point_values_pass(const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max) {
  return zero_point.is_floating_point() ||
         values_pass(zero_point, [&](double v) { return quant_min <= v && v <= quant_max; });
}

bool learnable_zero_point_values_pass(const at::Tensor& zero_point) {
  return !zero_point.is_floating_point() || values_pass(zero_point, [](double v) { return !std::isnan(v); });
}

// Qparam tensors on x's device, of no gradient (fake_quant.py's _check_qparams_not_differentiable raises otherwise).
bool qparam_tensors_usable(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point) {
  const bool grad = at::GradMode::is_enabled() && (scale.requires_grad() || zero_point.requires_grad());
  return !grad && scale.device() == x.device() && zero_point.device() == x.device();
}

// ---------------------------------------------------------------------------------------------------------------
// The device's eager ops (csrc/ops/<family>_glue.h), found once their library is loaded: qkernels._C_cuda loads on the
// first call that the Python path sends to the cuda backend.
// ---------------------------------------------------------------------------------------------------------------
template <typename Sig>
class EagerOp {
 public:
  explicit EagerOp(const char* name) : name_(name) {}

  const c10::TypedOperatorHandle<Sig>* get() {
    if (const auto* h = handle_.load(std::memory_order_acquire)) return h;
    const std::optional<c10::OperatorHandle> op = c10::Dispatcher::singleton().findOp({name_, ""});
    if (!op) return nullptr;
    auto* h = new c10::TypedOperatorHandle<Sig>(op->typed<Sig>());  // kept for the process's lifetime
    const c10::TypedOperatorHandle<Sig>* expected = nullptr;
    if (!handle_.compare_exchange_strong(expected, h, std::memory_order_acq_rel)) {
      delete h;  // another thread stored the same handle first
      return expected;
    }
    return h;
  }

 private:
  const char* name_;
  std::atomic<const c10::TypedOperatorHandle<Sig>*> handle_{nullptr};
};

using PerTensorEager = at::Tensor(const at::Tensor&, double, int64_t, const std::optional<at::Tensor>&,
                                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
                                  bool, bool);
using PerChannelEager = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                                   bool, bool, bool);

template <typename Sig>
const c10::TypedOperatorHandle<Sig>* eager_op(const at::Tensor& x, EagerOp<Sig>& cpu, EagerOp<Sig>& cuda) {
  return x.is_cuda() ? cuda.get() : cpu.get();
}

EagerOp<PerTensorEager> per_tensor_cpu{"qkernels::_fake_quant_per_tensor_eager_cpu"};
EagerOp<PerTensorEager> per_tensor_cuda{"qkernels::_fake_quant_per_tensor_eager_cuda"};
EagerOp<PerChannelEager> per_channel_cpu{"qkernels::_fake_quant_per_channel_eager_cpu"};
EagerOp<PerChannelEager> per_channel_cuda{"qkernels::_fake_quant_per_channel_eager_cuda"};

// The mask request of fake_quant.py's _mask_request: a mask when x needs a gradient, packed inside packed_masks().
struct MaskRequest {
  bool need, pack;
};

MaskRequest mask_request(const at::Tensor& x, PyObject* pack_mask) {
  const bool need = x.requires_grad() && at::GradMode::is_enabled();
  return {need, need && pack_mask == Py_True};
}

// Runs the op without the GIL (as torch's own bindings do) and hands the output to Python.
template <typename Call>
PyObject* run(Call call) {
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = call();
  }
  return THPVariable_Wrap(std::move(out));
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points (METH_FASTCALL: no argument tuple is built).
// ---------------------------------------------------------------------------------------------------------------
// Python-number qparams: ops.py's _check_per_tensor_scalar.
PyObject* per_tensor_numbers(const at::Tensor& x, PyObject* const* args) {
  const std::optional<double> scale = python_float(args[1]);
  const std::optional<int64_t> zero_point = python_int(args[2]), quant_min = python_int(args[3]),
                               quant_max = python_int(args[4]);
  if (!scale || !zero_point || !quant_min || !quant_max) Py_RETURN_NONE;
  const int64_t lo = *quant_min, hi = *quant_max;
  if (!(lo <= *zero_point && *zero_point <= hi && positive_finite(*scale))) Py_RETURN_NONE;
  if (!native_backend_chosen(args[5], x, lo, hi)) Py_RETURN_NONE;
  const auto* op = eager_op(x, per_tensor_cpu, per_tensor_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  const MaskRequest m = mask_request(x, args[6]);
  return run([&] {
    return op->call(x, *scale, *zero_point, std::nullopt, std::nullopt, std::nullopt, lo, hi, m.need, m.pack);
  });
}

// One-element tensor qparams: ops.py's _check_per_tensor_tensor (no enable flag).
PyObject* per_tensor_tensors(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                             PyObject* const* args) {
  const std::optional<int64_t> quant_min = python_int(args[3]), quant_max = python_int(args[4]);
  if (!quant_min || !quant_max || *quant_min > *quant_max) Py_RETURN_NONE;
  const at::ScalarType zt = zero_point.scalar_type();
  if (!qparam_tensors_usable(x, scale, zero_point) || scale.numel() != 1 || zero_point.numel() != 1 ||
      !scale.is_floating_point() || zero_point.is_complex() || zt == at::kBool) {
    Py_RETURN_NONE;
  }
  if (!native_backend_chosen(args[5], x, *quant_min, *quant_max) || !scale_values_pass(scale)) Py_RETURN_NONE;
  const auto* op = eager_op(x, per_tensor_cpu, per_tensor_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  const MaskRequest m = mask_request(x, args[6]);
  return run([&] {
    return op->call(x, 0.0, 0, scale, zero_point, std::nullopt, *quant_min, *quant_max, m.need, m.pack);
  });
}

// (x, scale, zero_point, quant_min, quant_max, backend, pack_mask)
PyObject* fake_quantize_per_tensor_affine(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7 || !plain_eager()) Py_RETURN_NONE;
  const at::Tensor* x = plain_tensor(args[0]);
  if (x == nullptr || !x->is_floating_point()) Py_RETURN_NONE;
  const at::Tensor* scale = plain_tensor(args[1]);
  const at::Tensor* zero_point = plain_tensor(args[2]);
  if (scale != nullptr && zero_point != nullptr) return per_tensor_tensors(*x, *scale, *zero_point, args);
  if (THPVariable_Check(args[1]) || THPVariable_Check(args[2])) Py_RETURN_NONE;
  return per_tensor_numbers(*x, args);
  END_HANDLE_TH_ERRORS
}

// aten's CPU build fuses a float32 zero point's x * inv + z into one FMA when vectorized (CUDA always):
// qkernels.reference.fake_quant.uses_fma.
bool uses_fma(const at::Tensor& x, at::ScalarType zero_point_dtype) {
  static const bool vectorized = [] {
    const std::string capability = at::get_cpu_capability();
    return capability != "DEFAULT" && capability != "NO AVX";
  }();
  return x.is_cuda() || (zero_point_dtype == at::kFloat && vectorized);
}

// (x, scale, zero_point, axis, quant_min, quant_max, backend, pack_mask): ops.py's _check_per_channel.
PyObject* fake_quantize_per_channel_affine(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !plain_eager()) Py_RETURN_NONE;
  const at::Tensor* x = plain_tensor(args[0]);
  const at::Tensor* scale = plain_tensor(args[1]);
  const at::Tensor* zero_point = plain_tensor(args[2]);
  const std::optional<int64_t> axis = python_int(args[3]), quant_min = python_int(args[4]),
                               quant_max = python_int(args[5]);
  if (x == nullptr || scale == nullptr || zero_point == nullptr || !axis || !quant_min || !quant_max) {
    Py_RETURN_NONE;
  }
  const at::ScalarType st = scale->scalar_type(), zt = zero_point->scalar_type();
  const int64_t dim = x->dim(), lo = *quant_min, hi = *quant_max;
  if (!qparam_tensors_usable(*x, *scale, *zero_point) || !(st == at::kFloat || st == at::kBFloat16) ||
      !(zt == at::kInt || zt == at::kFloat || zt == at::kHalf) || scale->dim() != 1 || zero_point->dim() != 1 ||
      !wrapped_axis(*axis, dim) || scale->numel() != zero_point->numel() || scale->numel() != x->size(*axis) ||
      lo > hi) {
    Py_RETURN_NONE;
  }
  if (!native_backend_chosen(args[6], *x, lo, hi) || !zero_point_values_pass(*zero_point, lo, hi) ||
      !scale_values_pass(*scale)) {
    Py_RETURN_NONE;
  }
  const auto* op = eager_op(*x, per_channel_cpu, per_channel_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  const MaskRequest m = mask_request(*x, args[7]);
  const bool fma = uses_fma(*x, zero_point->scalar_type());
  return run([&] { return op->call(*x, *scale, *zero_point, *axis, lo, hi, fma, m.need, m.pack); });
  END_HANDLE_TH_ERRORS
}

// ---------------------------------------------------------------------------------------------------------------
// The fused observer: qkernels/fused_observer.py's _check with sized state, then its update launcher, or (per
// tensor) its one-call step, the device's _fused_observer_per_tensor_eager op. Empty inputs, state still to be
// sized, non-contiguous state and flags or modes given in other types take the Python path.
// ---------------------------------------------------------------------------------------------------------------
using ObserverUpdate = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                            at::Tensor&, at::Tensor&, double, int64_t, int64_t, int64_t, bool, int64_t, double, int64_t,
                            int64_t);
using ObserverPerTensorEager = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                          at::Tensor&, at::Tensor&, at::Tensor&, double, int64_t, int64_t, bool,
                                          int64_t, double, int64_t, bool, bool);

EagerOp<ObserverUpdate> observer_update_cpu{"qkernels::_fused_observer_update_cpu"};
EagerOp<ObserverUpdate> observer_update_cuda{"qkernels::_fused_observer_update_cuda"};
EagerOp<ObserverPerTensorEager> observer_cpu{"qkernels::_fused_observer_per_tensor_eager_cpu"};
EagerOp<ObserverPerTensorEager> observer_cuda{"qkernels::_fused_observer_per_tensor_eager_cuda"};

// The flag dtypes the kernels read (fused_observer.py's _FLAG_DTYPES; fake_quant_glue.h's flag_of).
bool is_flag(const at::Tensor& flag) {
  switch (flag.scalar_type()) {
    case at::kBool: case at::kChar: case at::kByte: case at::kShort: case at::kUInt16: case at::kInt:
    case at::kUInt32: case at::kLong: case at::kUInt64: case at::kHalf: case at::kBFloat16: case at::kFloat:
    case at::kDouble:
      return flag.numel() == 1;
    default:
      return false;
  }
}

// The QParamsMode of fused_observer.py's qparams: "fused" Fused, "observer" Observer.
std::optional<int64_t> qparams_mode(PyObject* o) {
  if (!PyUnicode_CheckExact(o)) return std::nullopt;
  if (PyUnicode_CompareWithASCIIString(o, "fused") == 0) return static_cast<int64_t>(QParamsMode::Fused);
  if (PyUnicode_CompareWithASCIIString(o, "observer") == 0) return static_cast<int64_t>(QParamsMode::Observer);
  return std::nullopt;
}

// The observer arguments args[0..16]: (x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
// averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant, qparams, eps,
// symmetric_zero_point, backend), converted when the native backend may run them.
struct ObserverCall {
  at::Tensor x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point;
  double averaging_const, eps;
  int64_t quant_min, quant_max, axis, mode, symmetric_zero_point;
  bool per_row, symmetric;
};

std::optional<ObserverCall> observer_call(PyObject* const* args) {
  if (!plain_eager() || !PyBool_Check(args[11]) || !PyBool_Check(args[12])) return std::nullopt;
  const at::Tensor* t[7];  // x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point
  for (int i = 0; i < 7; ++i) {
    t[i] = plain_tensor(args[i]);
    if (t[i] == nullptr || t[i]->device() != t[0]->device()) return std::nullopt;
  }
  const at::Tensor& x = *t[0];
  const std::optional<double> averaging_const = python_float(args[7]), eps = python_float(args[14]);
  const std::optional<int64_t> quant_min = python_int(args[8]), quant_max = python_int(args[9]),
                               ch_axis = python_int(args[10]), mode = qparams_mode(args[13]),
                               symmetric_zero_point = python_int(args[15]);
  if (!averaging_const || !eps || !quant_min || !quant_max || !ch_axis || !mode || !symmetric_zero_point ||
      x.numel() == 0 || !x.is_floating_point() || *quant_min > *quant_max) {
    return std::nullopt;
  }
  const bool per_row = args[11] == Py_True;
  const int64_t dim = x.dim();
  const std::optional<int64_t> axis = per_row ? wrapped_axis(*ch_axis, dim) : std::optional<int64_t>(-1);
  if (!axis) return std::nullopt;
  const int64_t channels = per_row ? x.size(*axis) : 1;
  const at::ScalarType zt = t[6]->scalar_type();
  if (!is_flag(*t[1]) || !is_flag(*t[2]) || t[3]->scalar_type() != at::kFloat || t[4]->scalar_type() != at::kFloat ||
      t[5]->scalar_type() != at::kFloat || !(zt == at::kInt || zt == at::kLong) ||
      !qparam_tensors_usable(x, *t[5], *t[6]) || !native_backend_chosen(args[16], x, *quant_min, *quant_max)) {
    return std::nullopt;
  }
  for (int i = 3; i < 7; ++i) {
    if (t[i]->numel() != channels || !t[i]->is_contiguous()) return std::nullopt;  // (Python sizes or copies)
  }
  ObserverCall c{x, *t[1], *t[2], *t[3], *t[4], *t[5], *t[6], *averaging_const, *eps, *quant_min, *quant_max,
                 *axis, *mode, *symmetric_zero_point, per_row, args[12] == Py_True};
  return c;
}

// (the arguments of observer_call) -> True, or None: fused_observer.py's observer_update, sized state.
PyObject* fused_observer_update(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  std::optional<ObserverCall> c;
  if (nargs != 17 || !(c = observer_call(args))) Py_RETURN_NONE;
  const auto* op = eager_op(c->x, observer_update_cpu, observer_update_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  {
    pybind11::gil_scoped_release no_gil;
    const at::NoGradGuard no_grad;
    // The kernels walk x in storage order as [outer, channels, inner] (as fused_observer.py's _update_impl).
    const at::Tensor x = c->x.is_non_overlapping_and_dense() ? c->x.detach() : c->x.contiguous();
    // Elements between consecutive channels of x; per tensor, all of them.
    const int64_t inner = c->per_row ? glue::inner_stride(x, c->axis) : x.numel();
    op->call(x, c->observer_on, c->fake_quant_on, c->running_min, c->running_max, c->scale, c->zero_point,
             c->averaging_const, c->quant_min, c->quant_max, inner, c->symmetric, c->mode, c->eps,
             c->symmetric_zero_point, glue::flavour_of(x));
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

// (the arguments of observer_call, pack_mask) -> Tensor, or None: fused_moving_avg_obs_fake_quant per tensor.
PyObject* fused_moving_avg_obs_fake_quant(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  std::optional<ObserverCall> c;  // (per channel: the Python path's update and per-channel calls)
  if (nargs != 18 || args[11] != Py_False || !(c = observer_call(args))) Py_RETURN_NONE;
  const auto* op = eager_op(c->x, observer_cpu, observer_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  const MaskRequest m = mask_request(c->x, args[17]);
  return run([&] {
    return op->call(c->x, c->observer_on, c->fake_quant_on, c->running_min, c->running_max, c->scale, c->zero_point,
                    c->averaging_const, c->quant_min, c->quant_max, c->symmetric, c->mode, c->eps,
                    c->symmetric_zero_point, m.need, m.pack);
  });
  END_HANDLE_TH_ERRORS
}

// ---------------------------------------------------------------------------------------------------------------
// The learnable op: qkernels/fake_quant_learnable.py's _check and its one-call eager op, the device's
// _fake_quant_learnable_forward_eager. Empty inputs take the Python path.
// ---------------------------------------------------------------------------------------------------------------
using LearnableEager = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                  std::optional<int64_t>, int64_t, int64_t, double, int64_t, bool, bool);

EagerOp<LearnableEager> learnable_cpu{"qkernels::_fake_quant_learnable_forward_eager_cpu"};
EagerOp<LearnableEager> learnable_cuda{"qkernels::_fake_quant_learnable_forward_eager_cuda"};

// None, or a Python int (nullopt inside an optional: the object is neither).
std::optional<std::optional<int64_t>> optional_int(PyObject* o) {
  if (o == Py_None) return std::optional<int64_t>();
  const std::optional<int64_t> v = python_int(o);
  if (!v) return std::nullopt;
  return v;
}

// Scale and zero point shaped for the granularity (learnable.py's _check; qparam_shape of its reference).
bool learnable_qparams_fit(const at::Tensor& x, const at::Tensor& scale, std::optional<int64_t> axis,
                           std::optional<int64_t> group_size) {
  if (!axis) return scale.numel() == 1;
  const int64_t dim = x.dim();
  const std::optional<int64_t> wrapped = wrapped_axis(*axis, dim);
  if (!wrapped) return false;
  const int64_t a = *wrapped, size = x.size(a);
  if (!group_size) return scale.dim() == 1 && scale.numel() == size;
  if (*group_size < 1 || size % *group_size != 0 || scale.dim() != dim) return false;
  for (int64_t d = 0; d < dim; ++d) {
    if (scale.size(d) != (d == a ? size / *group_size : x.size(d))) return false;
  }
  return true;
}

// The ZpRule of learnable.py's _rule: "consistent" Consistent; "torch" TorchPerTensor per tensor, else Torch.
std::optional<int64_t> zero_point_rule(PyObject* o, bool per_tensor) {
  if (!PyUnicode_CheckExact(o)) return std::nullopt;
  if (PyUnicode_CompareWithASCIIString(o, "consistent") == 0) return static_cast<int64_t>(ZpRule::Consistent);
  if (PyUnicode_CompareWithASCIIString(o, "torch") == 0) {
    return static_cast<int64_t>(per_tensor ? ZpRule::TorchPerTensor : ZpRule::Torch);
  }
  return std::nullopt;
}

// (x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding, backend)
PyObject* fake_quantize_learnable(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10 || !plain_eager()) Py_RETURN_NONE;
  const at::Tensor* x = plain_tensor(args[0]);
  const at::Tensor* scale = plain_tensor(args[1]);
  const at::Tensor* zero_point = plain_tensor(args[2]);
  const auto axis = optional_int(args[3]), group_size = optional_int(args[4]);
  const std::optional<int64_t> quant_min = python_int(args[5]), quant_max = python_int(args[6]);
  const std::optional<double> grad_factor = python_float(args[7]);
  if (x == nullptr || scale == nullptr || zero_point == nullptr || !axis || !group_size || !quant_min ||
      !quant_max || !grad_factor || x->numel() == 0) {
    Py_RETURN_NONE;
  }
  const std::optional<int64_t> rule = zero_point_rule(args[8], !*axis);
  const at::ScalarType zt = zero_point->scalar_type();
  const int64_t lo = *quant_min, hi = *quant_max;
  if (!rule || !std::isfinite(*grad_factor) || !(lo <= 0 && 0 <= hi) || !scale->is_floating_point() ||
      zero_point->is_complex() || zt == at::kBool || scale->sizes() != zero_point->sizes() ||
      scale->device() != x->device() || zero_point->device() != x->device() ||
      (!*axis && *group_size) || !learnable_qparams_fit(*x, *scale, *axis, *group_size)) {
    Py_RETURN_NONE;
  }
  if (!native_backend_chosen(args[9], *x, lo, hi) || !scale_values_pass(*scale) ||
      !learnable_zero_point_values_pass(*zero_point)) {
    Py_RETURN_NONE;
  }
  const auto* op = eager_op(*x, learnable_cpu, learnable_cuda);
  if (op == nullptr) Py_RETURN_NONE;
  const bool need = at::GradMode::is_enabled() &&
                    (x->requires_grad() || scale->requires_grad() || zero_point->requires_grad());
  const bool fma = uses_fma(*x, at::kFloat);  // (learnable.py: the float32 rule)
  return run([&] {
    return op->call(*x, *scale, *zero_point, *axis, *group_size, lo, hi, *grad_factor, *rule, fma, need);
  });
  END_HANDLE_TH_ERRORS
}

// (METH_FASTCALL functions are stored as PyCFunction, the signature CPython casts them back from.)
PyMethodDef methods[] = {
    {"fake_quantize_per_tensor_affine", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                            fake_quantize_per_tensor_affine)),
     METH_FASTCALL, "qkernels.fake_quantize_per_tensor_affine in plain eager mode, or None (python_entry.cpp)"},
    {"fake_quantize_per_channel_affine", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                             fake_quantize_per_channel_affine)),
     METH_FASTCALL, "qkernels.fake_quantize_per_channel_affine in plain eager mode, or None (python_entry.cpp)"},
    {"fused_moving_avg_obs_fake_quant", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                            fused_moving_avg_obs_fake_quant)),
     METH_FASTCALL, "qkernels.fused_moving_avg_obs_fake_quant per tensor in plain eager mode, or None"},
    {"fused_observer_update", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fused_observer_update)),
     METH_FASTCALL, "qkernels.fused_observer.observer_update in plain eager mode: True, or None (python_entry.cpp)"},
    {"fake_quantize_learnable", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fake_quantize_learnable)),
     METH_FASTCALL, "qkernels' learnable fake quantization in plain eager mode, or None (python_entry.cpp)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "qkernels._C",
                          "qkernels' CPU kernels (registered ops) and the eager entry points of the public functions",
                          -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace
}  // namespace qkernels

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&qkernels::module_def); }
