// Shared helpers of the CPU kernels: argument checks, offsets, the fp32 dot product every
// kernel uses, row normalisation, per-item parallelism on std::threads.
//
// No torch header anywhere in csrc/: the kernels work on raw buffers (const float*, int64_t*,
// sizes), so the extension builds with only a C++ compiler, the Python headers and pybind11.
//
// Determinism: `dot` accumulates in 32 fixed lanes (lane = element index mod
// 32) and reduce the lanes in a fixed tree. The source fixes the order of every addition, the
// build forbids FMA contraction (-ffp-contract=off) and fast-math, so the result is bitwise
// the same whatever vector width the compiler picks (SSE2, AVX2 or AVX-512 clone, or NEON):
// same input, same output, on any thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Function multi-versioning for the hot loops on x86-64 Linux (GCC >= 12 / clang >= 14): one
// clone per ISA level, chosen once at load time by the dynamic linker (ifunc). Elsewhere the
// baseline ISA of the build is used.
#if defined(__x86_64__) && defined(__linux__) && !defined(ADAPTIVE_PRUNE_NO_CLONES) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12) ||                    \
     (defined(__clang__) && __clang_major__ >= 14))
#define AP_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define AP_HOT_CLONES 1
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

// The greedy's pick tie band on the cosine scale (docs/METHOD.md, "Ties"; the same constant as
// ops/_common.py PICK_TIE and kernels/_common.py PICK_TIE, exposed as _core.PICK_TIE): every
// greedy step takes M = the largest score among the candidates and picks the LOWEST index
// among the candidates with score >= M - band (band = kPickTie; max-sum: kPickTie * t after t
// picks), so scores that only rounding orders pick the same candidate on every backend.
constexpr float kPickTie = 1e-5f;

// The band rule over s[0:m), skipping the rows with skip[i] != 0 (nullptr: none): the lowest
// index with s[i] >= max - band, or -1 when every row is skipped. M = +inf keeps exactly the
// +inf rows.
inline int64_t band_argmax(const float* s, int64_t m, const char* skip, float band) {
  float top = -kInf;
  bool any = false;
  for (int64_t i = 0; i < m; ++i)
    if (!skip || !skip[i]) {
      if (!any || s[i] > top) top = s[i];
      any = true;
    }
  if (!any) return -1;
  const float thr = top - band;
  for (int64_t i = 0; i < m; ++i)
    if ((!skip || !skip[i]) && s[i] >= thr) return i;
  for (int64_t i = 0; i < m; ++i)  // NaN scores: no band, the first candidate
    if (!skip || !skip[i]) return i;
  return -1;
}

// --------------------------------------------------------------------------------------------
// 64-byte aligned buffers: row loops over unaligned buffers split a vector load across two
// cache lines at every step (AVX-512), which slows the greedy loops measurably (docs/cpp.md)
// --------------------------------------------------------------------------------------------
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::size_t kAlign = 64;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    void* p = ::operator new(n * sizeof(T), std::align_val_t(kAlign));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t(kAlign)); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const noexcept {
    return false;
  }
};
using FloatBuf = std::vector<float, AlignedAllocator<float>>;

// Scratch of [K, D] floats (the unit pool rows of global_greedy and refine_medoids) kept per
// calling thread between calls up to 256 MiB: a fresh allocation of this size is new memory
// from the OS every call, and its page faults and zeroing cost a tenth of the op on large pools
// (docs/cpp.md). Larger needs go to `own`, freed with it. The ops of one thread run one at a
// time, so they share the buffer.
inline float* pool_workspace(int64_t K, int64_t D, FloatBuf& own) {
  constexpr int64_t kKeepBytes = int64_t(256) << 20;
  const int64_t need = K * D;
  if (need * int64_t(sizeof(float)) > kKeepBytes) {
    own.resize(static_cast<size_t>(need));
    return own.data();
  }
  static thread_local FloatBuf ws;
  if (static_cast<int64_t>(ws.size()) < need) ws.resize(static_cast<size_t>(need));
  return ws.data();
}

// --------------------------------------------------------------------------------------------
// argument checks: std::invalid_argument, a ValueError on the Python side
// --------------------------------------------------------------------------------------------
template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw std::invalid_argument(os.str());
}

template <typename... Args>
inline void check(bool ok, const Args&... args) {
  if (!ok) fail(args...);
}

// every rows[i] (i < K) indexes a row of vision ([0, N)); `name` is the argument's name
inline void check_rows(const int64_t* rows, int64_t K, int64_t N, const char* name) {
  for (int64_t i = 0; i < K; ++i)
    check(rows[i] >= 0 && rows[i] < N, name, "[", i, "] = ", rows[i],
          " is not a row of vision (N = ", N, ")");
}

// offsets v[0..size) = [0, ..., total]: start at 0, non-decreasing, end at `total`
inline std::vector<int64_t> read_offsets(const int64_t* p, int64_t size, const char* name,
                                         int64_t total, const char* total_name) {
  check(size >= 1, name, " needs at least one entry [0, ...]");
  std::vector<int64_t> v(p, p + size);
  check(v[0] == 0, name, " must start at 0, got ", v[0]);
  for (size_t i = 0; i + 1 < v.size(); ++i)
    check(v[i + 1] >= v[i], name, " must be non-decreasing, but ", name, "[", i + 1,
          "] = ", v[i + 1], " < ", name, "[", i, "] = ", v[i]);
  check(v.back() == total, name, " must end at ", total_name, " = ", total, ", got ", v.back());
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

// o[v] = dot(a, b[v], n) for v < 4, each with its own 32 lanes in the order of `dot` (so
// bitwise the same as four calls), reading a once
AP_INLINE void dot4(const float* __restrict a, const float* __restrict b0,
                    const float* __restrict b1, const float* __restrict b2,
                    const float* __restrict b3, int64_t n, float* __restrict o) {
  float c0[kLanes] = {0.f}, c1[kLanes] = {0.f}, c2[kLanes] = {0.f}, c3[kLanes] = {0.f};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float x = a[k + l];
      c0[l] += x * b0[k + l];
      c1[l] += x * b1[k + l];
      c2[l] += x * b2[k + l];
      c3[l] += x * b3[k + l];
    }
  for (int l = 0; k + l < n; ++l) {
    const float x = a[k + l];
    c0[l] += x * b0[k + l];
    c1[l] += x * b1[k + l];
    c2[l] += x * b2[k + l];
    c3[l] += x * b3[k + l];
  }
  o[0] = reduce_lanes(c0);
  o[1] = reduce_lanes(c1);
  o[2] = reduce_lanes(c2);
  o[3] = reduce_lanes(c3);
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
// out[i * ldo + c] = dot(X[i], V[c]) for the rows of X [rows, D] and V [nv, D] (a small
// matrix product with the fixed summation order of `dot`)
void dot_rows_multi(const float* X, int64_t rows, int64_t D, const float* V, int64_t nv,
                    float* out, int64_t ldo);
// Q[c] = sum_i sign(c, i) X[i] for c < dp (sign: bit c * m + i of the sketch), Q [dp, D]
void sign_sketch(const float* X, int64_t m, int64_t D, const float* signs, int64_t dp,
                 float* Q);

// --------------------------------------------------------------------------------------------
// parallelism: std::threads, one item at a time per thread
// --------------------------------------------------------------------------------------------
// Runs work(k) for k in [0, n) on up to `nthreads` threads (the caller's thread is one of
// them), most expensive first (cost[k]), one item at a time per thread (dynamic scheduling).
// Every item is computed by exactly one thread with no shared accumulation, so the result does
// not depend on the thread count. The threads live for one call: the ops are coarse (one item
// is an image, a request or a chunk of rows), so starting them costs nothing measurable, and
// no thread pool competes with torch's when the op is idle. The first exception thrown by an
// item is rethrown here after every thread has stopped.
template <typename F>
inline void parallel_items(const std::vector<double>& cost, int64_t nthreads, F&& work) {
  const int64_t n = static_cast<int64_t>(cost.size());
  if (n == 0) return;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, n));
  if (nt == 1) {
    for (int64_t k : order) work(k);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&]() {
    int64_t i;
    while ((i = next.fetch_add(1)) < n) {
      try {
        work(order[i]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(nt - 1));
  for (int64_t t = 1; t < nt; ++t) threads.emplace_back(run);
  run();
  for (std::thread& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

// parallel_items over the fixed chunks [b, min(b + grain, n)) of [0, n): work(b, e)
template <typename F>
inline void parallel_chunks(int64_t n, int64_t grain, int64_t nthreads, F&& work) {
  if (n <= 0) return;
  const int64_t chunks = (n + grain - 1) / grain;
  std::vector<double> cost(static_cast<size_t>(chunks), 1.0);
  parallel_items(cost, nthreads, [&](int64_t c) { work(c * grain, std::min(n, (c + 1) * grain)); });
}

}  // namespace adaptive_prune_cpu
