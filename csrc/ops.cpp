// Schemas of the C++ ops and the Python module init of `adaptive_prune._C`.
//
// The ops live in their own namespace, `adaptive_prune_cpp`, so that they never clash with the
// public `adaptive_prune::*` ops (Python `torch.library.custom_op`s whose default is the
// pure-PyTorch reference). `adaptive_prune/_ext.py` registers their fake kernels and routes the
// public ops' CPU kernels to them; docs/cpp.md explains the design. Each kernel registers its
// CPU implementation in its own file under cpu/.
//
// The module is a bare `PyInit__C` (no pybind11), so the extension builds against the Python
// limited API (one abi3 .so for every CPython >= 3.10): importing it runs the static
// registrations below.
#include <Python.h>
#include <torch/library.h>

#ifndef ADAPTIVE_PRUNE_TORCH_VERSION
#define ADAPTIVE_PRUNE_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(adaptive_prune_cpp, m) {
  m.def(
      "budget_scores(Tensor vision, Tensor cu_seqlens, Tensor req_offsets, Tensor? text, "
      "Tensor? text_offsets, float sigma, float tau_a, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "allocate_budgets(Tensor weights, Tensor caps, Tensor mins, Tensor req_offsets, "
      "Tensor totals) -> Tensor");
  // proj_dim: -1 = auto, 0 = dense (no projection filter), > 0 = filter with that many dims.
  // It changes the speed only, never the result.
  m.def(
      "greedy_select(Tensor vision, Tensor cu_seqlens, Tensor budgets, str mode, float eps, "
      "int proj_dim=-1) -> Tensor");
  m.def(
      "global_greedy(Tensor vision, Tensor pool, Tensor pool_offsets, Tensor reserved, "
      "int[] num_picks, float eps, Tensor? group_offsets=None, int proj_dim=-1) -> (Tensor, Tensor)");
  m.def(
      "token_alignment(Tensor vision, Tensor rows, Tensor row_offsets, Tensor text, "
      "Tensor text_offsets, str reduce, float eps) -> Tensor");
  m.def("pareto_select(Tensor gains, Tensor align, Tensor offsets, int[] k) -> Tensor");
}

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "C++ CPU kernels of adaptive_prune (ops in torch.ops.adaptive_prune_cpp)",
      -1,
      nullptr,
  };
  PyObject* mod = PyModule_Create(&module_def);
  if (mod != nullptr &&
      PyModule_AddStringConstant(mod, "torch_version", ADAPTIVE_PRUNE_TORCH_VERSION) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
}
