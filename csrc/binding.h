// pybind11 glue shared by the op files: the op registry and the numpy array types.
//
// Every op file defines its kernel on raw buffers and registers one binding with
// AP_REGISTER_OP(name, fn): module.cpp runs the registry when Python imports
// adaptive_prune._core, so adding an op is adding one .cpp file (setup.py globs csrc/*.cpp).
//
// Calling convention (adaptive_prune/backends/cpp.py relies on it): `_core.<op>(*args,
// num_threads, **knobs)` takes the public op's arguments in order, tensors as C-contiguous
// numpy arrays (float32 tokens and scores, int64 offsets and indices, bool masks; float64 for
// the float64 logic of allocate_budgets and pareto_select), None for absent optional tensors,
// lists of ints, str and float as is; `num_threads` and the knobs are keyword-only. It returns
// new numpy arrays (a tuple for several outputs). Outputs are allocated with the GIL held; the
// kernel runs with the GIL released. Inconsistent sizes raise std::invalid_argument
// (ValueError) naming the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <utility>
#include <vector>

#include "common.h"

namespace adaptive_prune_cpu {

namespace py = pybind11;

// numpy arrays as the bindings take them, in C order (a non-contiguous array is copied).
// Floating arrays of another float dtype are converted by numpy; integer and bool arrays must
// have their exact dtype (a float array of offsets or an int mask is a TypeError naming the
// argument, not a silent cast).
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style>;
using Bool = py::array_t<bool, py::array::c_style>;

struct OpBinding {
  const char* name;
  const char* knobs;  // comma-separated keyword-only knobs besides num_threads ("" if none)
  void (*bind)(py::module_&);
};

inline std::vector<OpBinding>& op_registry() {
  static std::vector<OpBinding> ops;
  return ops;
}

struct RegisterOp {
  RegisterOp(const char* name, const char* knobs, void (*bind)(py::module_&)) {
    op_registry().push_back({name, knobs, bind});
  }
};

#define AP_CONCAT_(a, b) a##b
#define AP_CONCAT(a, b) AP_CONCAT_(a, b)
// AP_REGISTER_OP(name, knobs, [](py::module_& m) { m.def(name, ...); });
#define AP_REGISTER_OP(name, knobs, bind) \
  static const ::adaptive_prune_cpu::RegisterOp AP_CONCAT(ap_register_, __LINE__)(name, knobs, bind)

// rows x cols of a 2-D float array (checked)
inline std::pair<int64_t, int64_t> shape2(const F32& a, const char* name) {
  check(a.ndim() == 2, name, " must be 2-D [rows, D], got ", a.ndim(), " dimensions");
  return {static_cast<int64_t>(a.shape(0)), static_cast<int64_t>(a.shape(1))};
}

// length of a 1-D array (checked)
template <typename A>
inline int64_t len1(const A& a, const char* name) {
  check(a.ndim() == 1, name, " must be 1-D, got ", a.ndim(), " dimensions");
  return static_cast<int64_t>(a.shape(0));
}

inline void check_threads(int64_t num_threads) {
  check(num_threads >= 1, "num_threads must be >= 1, got ", num_threads);
}

}  // namespace adaptive_prune_cpu
