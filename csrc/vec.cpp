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

AP_HOT void dot_rows_multi(const float* __restrict X, int64_t rows, int64_t D,
                           const float* __restrict V, int64_t nv, float* __restrict out,
                           int64_t ldo) {
  // rows in blocks that stay in cache while every group of 4 rows of V streams past them
  constexpr int64_t kRowBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kRowBlock) {
    const int64_t i1 = std::min(rows, i0 + kRowBlock);
    int64_t c = 0;
    for (; c + 4 <= nv; c += 4) {
      const float* v = V + c * D;
      for (int64_t i = i0; i < i1; ++i)
        dot4(X + i * D, v, v + D, v + 2 * D, v + 3 * D, D, out + i * ldo + c);
    }
    for (; c < nv; ++c)
      for (int64_t i = i0; i < i1; ++i) out[i * ldo + c] = dot(X + i * D, V + c * D, D);
  }
}

AP_HOT void sign_sketch(const float* __restrict X, int64_t m, int64_t D,
                        const float* __restrict signs, int64_t dp, float* __restrict Q) {
  std::fill(Q, Q + dp * D, 0.f);
  for (int64_t i = 0; i < m; ++i) {
    const float* __restrict x = X + i * D;
    for (int64_t c = 0; c < dp; ++c) {
      float* __restrict q = Q + c * D;
      if (signs[c * m + i] > 0.f)
        for (int64_t k = 0; k < D; ++k) q[k] += x[k];
      else
        for (int64_t k = 0; k < D; ++k) q[k] -= x[k];
    }
  }
}

}  // namespace adaptive_prune_cpu
