// Shared helpers of the CPU kernels: argument checks, offsets, the fp32 dot product every
// kernel uses, row normalisation, per-image parallelism.
//
// Determinism: `dot` accumulates in 32 fixed lanes (lane = element index mod
// 32) and reduce the lanes in a fixed tree. The source fixes the order of every addition, the
// build forbids FMA contraction (-ffp-contract=off) and fast-math, so the result is bitwise
// the same whatever vector width the compiler picks (SSE2, AVX2 or AVX-512 clone, or NEON):
// same input, same output, on any thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

// Function multi-versioning for the hot loops on x86-64 Linux (GCC >= 12 / clang >= 14): one
// clone per ISA level, chosen once at load time by the dynamic linker (ifunc). Elsewhere the
// baseline ISA of the build is used.
#if defined(__x86_64__) && defined(__linux__) && !defined(ADAPTIVE_PRUNE_NO_CLONES) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12) ||                    \
     (defined(__clang__) && __clang_major__ >= 14))
#define AP_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AP_HOT
#endif

// Small helpers are forced inline so that they are compiled into each ISA clone of their caller
// (an out-of-line copy would be built for the baseline ISA only).
#if defined(__GNUC__) || defined(__clang__)
#define AP_INLINE inline __attribute__((always_inline))
#else
#define AP_INLINE inline
#endif

namespace adaptive_prune_cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kLanes = 32;

// --------------------------------------------------------------------------------------------
// argument checks (ValueError / TypeError on the Python side)
// --------------------------------------------------------------------------------------------
inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
}

inline void check_tokens(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [rows, D], got shape ", t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, name,
                   " must be float32, float16 or bfloat16 (float64 is served by the reference), "
                   "got ",
                   dt);
}

inline bool is_index_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kLong || t.scalar_type() == at::kInt;
}

// 1-D int32/int64 CPU tensor -> host vector
inline std::vector<int64_t> to_vec(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_TYPE(is_index_dtype(t), name, " must be int32 or int64, got ", t.scalar_type());
  at::Tensor c = t.to(at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

// offsets [k+1]: start at 0, non-decreasing, end at `total`
inline std::vector<int64_t> read_offsets(const at::Tensor& t, const char* name, int64_t total,
                                         const char* total_name) {
  std::vector<int64_t> v = to_vec(t, name);
  TORCH_CHECK_VALUE(v.size() >= 1, name, " needs at least one entry [0, ...]");
  TORCH_CHECK_VALUE(v[0] == 0, name, " must start at 0, got ", v[0]);
  for (size_t i = 0; i + 1 < v.size(); ++i)
    TORCH_CHECK_VALUE(v[i + 1] >= v[i], name, " must be non-decreasing, but ", name, "[", i + 1,
                      "] = ", v[i + 1], " < ", name, "[", i, "] = ", v[i]);
  TORCH_CHECK_VALUE(v.back() == total, name, " must end at ", total_name, " = ", total, ", got ",
                    v.back());
  return v;
}

// --------------------------------------------------------------------------------------------
// arithmetic with a fixed summation order
// --------------------------------------------------------------------------------------------
AP_INLINE float reduce_lanes(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// sum_k a[k] * b[k] in fp32, 32 lanes, fixed order
AP_INLINE float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[kLanes] = {0.f};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[k + l] * b[k + l];
  for (int l = 0; k + l < n; ++l) acc[l] += a[k + l] * b[k + l];
  return reduce_lanes(acc);
}

// dst = x / max(||x||, eps) (division, like the reference), x already fp32 in dst
AP_INLINE void normalize_inplace(float* __restrict x, int64_t n, float eps) {
  const float nrm = std::max(std::sqrt(dot(x, x, n)), eps);
  for (int64_t k = 0; k < n; ++k) x[k] = x[k] / nrm;
}

// Row kernels compiled per ISA level (vec.cpp).
// x[i] = x[i] / max(|x[i]|, eps) for every row of x [rows, D]
void normalize_rows(float* x, int64_t rows, int64_t D, float eps);
// one token row u: u = u / max(|u|, eps), s += u, *sq += |u|^2, *norm = max(|u_in|, eps)
void unit_accumulate(float* u, int64_t D, float eps, float* s, float* sq, float* norm);
// out[i] = dot(X[i], v) for every row of X [rows, D]
void dot_rows(const float* X, int64_t rows, int64_t D, const float* v, float* out);

// Runs work(k) for k in [0, n) on the intra-op thread pool, most expensive first (cost[k]),
// one item at a time per thread (dynamic scheduling). Every item is computed by exactly one
// thread with no shared accumulation, so the result does not depend on the thread count.
template <typename F>
inline void parallel_items(const std::vector<double>& cost, F&& work) {
  const int64_t n = static_cast<int64_t>(cost.size());
  if (n == 0) return;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), n);
  if (nt <= 1 || at::in_parallel_region()) {
    for (int64_t k : order) work(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t i;
      while ((i = next.fetch_add(1)) < n) work(order[i]);
    }
  });
}

}  // namespace adaptive_prune_cpu
