// The Python module adaptive_prune._core: binds every op of the registry (binding.h).
#include "binding.h"

#ifndef AP_ISA_CLONES
#if defined(AP_HOT_CLONES)
#define AP_ISA_CLONES "x86-64-v4 (AVX-512), x86-64-v3 (AVX2), baseline (chosen at load time)"
#else
#define AP_ISA_CLONES "baseline of the build"
#endif
#endif

PYBIND11_MODULE(_core, m) {
  namespace apc = adaptive_prune_cpu;
  m.doc() =
      "C++ CPU kernels of adaptive_prune on raw buffers (numpy in, numpy out); "
      "adaptive_prune.backends.cpp wraps them as the ops' CPU implementations";
  pybind11::dict knobs;
  for (const apc::OpBinding& op : apc::op_registry()) {
    op.bind(m);
    pybind11::list names;
    std::string k = op.knobs;
    size_t s = 0;
    while (s < k.size()) {
      size_t e = k.find(',', s);
      if (e == std::string::npos) e = k.size();
      if (e > s) names.append(k.substr(s, e - s));
      s = e + 1;
    }
    knobs[op.name] = pybind11::tuple(names);
  }
  m.attr("KNOBS") = knobs;  // op -> keyword-only knobs besides num_threads
  m.attr("ISA") = AP_ISA_CLONES;
  m.attr("PICK_TIE") = apc::kPickTie;  // the greedy's pick tie band (common.h)
#if defined(__clang__)
  m.attr("COMPILER") = "clang " __clang_version__;
#elif defined(__GNUC__)
  m.attr("COMPILER") = "gcc " __VERSION__;
#elif defined(_MSC_VER)
  m.attr("COMPILER") = "msvc";
#else
  m.attr("COMPILER") = "unknown";
#endif
}
