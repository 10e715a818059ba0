// Row kernels shared by the ops, compiled once per ISA level (AP_HOT, see common.h): every
// loop that touches D-long rows goes through here, so it runs with the widest vectors the CPU
// has. All sums use the fixed-order `dot` of common.h: same bits on every ISA.
#include "common.h"

namespace adaptive_prune_cpu {

AP_HOT void normalize_rows(float* x, int64_t rows, int64_t D, float eps) {
  for (int64_t i = 0; i < rows; ++i) normalize_inplace(x + i * D, D, eps);
}

AP_HOT void unit_accumulate(float* __restrict u, int64_t D, float eps, float* __restrict s,
                            float* sq, float* norm) {
  const float ss = dot(u, u, D);
  const float nrm = std::max(std::sqrt(ss), eps);
  for (int64_t c = 0; c < D; ++c) {
    const float v = u[c] / nrm;
    u[c] = v;
    s[c] += v;
  }
  *sq += ss / (nrm * nrm);  // |x / max(|x|, eps)|^2
  if (norm) *norm = nrm;
}

AP_HOT void dot_rows(const float* __restrict X, int64_t rows, int64_t D,
                     const float* __restrict v, float* __restrict out) {
  for (int64_t i = 0; i < rows; ++i) out[i] = dot(X + i * D, v, D);
}

}  // namespace adaptive_prune_cpu
