// Pareto selection (reference.pareto_select): keep exactly k[r] points of every segment.
//
// Both objectives (gain, alignment) are maximised; points are in greedy order (position =
// tie-break). i dominates j when it is >= on both and > on one; equal points share a front.
// Whole non-dominated fronts are taken while they fit; the overflowing front is cut by NSGA-II
// crowding distance (descending), ties to the earlier position. float64 comparisons.
//
// Fronts in O(K log K) instead of the reference's O(K^2): the front of a point is the length
// of the longest dominance chain ending at it (non-dominated sorting peels exactly these
// levels). Visiting points by (f1 desc, f2 desc), every earlier point has f1 >= f1(j), so it
// dominates j iff its f2 >= f2(j) and it is not an exact copy of j. The largest f2 of each
// level never increases with the level (a point of level L+1 has a dominator in level L), so
// front(j) = number of levels whose largest f2 is >= f2(j): a binary search. Copies of a point
// are visited together and share its front.
#include "binding.h"

namespace adaptive_prune_cpu {
namespace {

std::vector<int64_t> fronts_2d(const double* f1, const double* f2, int64_t n) {
  std::vector<int64_t> ord(static_cast<size_t>(n));
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) {
    if (f1[a] != f1[b]) return f1[a] > f1[b];
    return f2[a] > f2[b];
  });
  std::vector<int64_t> front(static_cast<size_t>(n), 0);
  std::vector<double> top;  // largest f2 of every level so far (non-increasing)
  int64_t s = 0;
  while (s < n) {
    int64_t e = s + 1;  // [s, e): copies of the same point
    while (e < n && f1[ord[e]] == f1[ord[s]] && f2[ord[e]] == f2[ord[s]]) ++e;
    const double v = f2[ord[s]];
    // first level whose largest f2 is < v (top is non-increasing)
    const int64_t lvl =
        std::upper_bound(top.begin(), top.end(), v, [](double x, double t) { return x > t; }) -
        top.begin();
    for (int64_t t = s; t < e; ++t) front[ord[t]] = lvl;
    if (lvl == static_cast<int64_t>(top.size()))
      top.push_back(v);
    else
      top[lvl] = std::max(top[lvl], v);
    s = e;
  }
  return front;
}

// crowding distance of the members (positions) of one front, as reference.crowding_distance
std::vector<double> crowding(const std::vector<int64_t>& mem, const double* f1, const double* f2) {
  const size_t n = mem.size();
  std::vector<double> dist(n, 0.0);
  if (n <= 2) {
    std::fill(dist.begin(), dist.end(), kInf);
    return dist;
  }
  std::vector<size_t> srt(n);
  for (const double* f : {f1, f2}) {
    std::iota(srt.begin(), srt.end(), 0);
    std::sort(srt.begin(), srt.end(), [&](size_t a, size_t b) {
      const double fa = f[mem[a]], fb = f[mem[b]];
      return fa != fb ? fa < fb : mem[a] < mem[b];
    });
    const double lo = f[mem[srt[0]]], hi = f[mem[srt[n - 1]]];
    dist[srt[0]] = dist[srt[n - 1]] = std::numeric_limits<double>::infinity();
    if (hi - lo <= 0) continue;
    for (size_t p = 1; p + 1 < n; ++p)
      dist[srt[p]] += (f[mem[srt[p + 1]]] - f[mem[srt[p - 1]]]) / (hi - lo);
  }
  return dist;
}

py::array_t<bool> pareto_select_py(const F64& gains, const F64& align, const I64& offsets,
                                   const std::vector<int64_t>& k, int64_t num_threads) {
  const int64_t K = len1(gains, "gains");
  check(align.ndim() == 1 && align.shape(0) == K, "align must be [K] like gains, got ",
        align.ndim(), " dimensions of ", align.ndim() ? align.shape(0) : 0);
  const std::vector<int64_t> so = read_offsets(offsets.data(), len1(offsets, "offsets"),
                                               "offsets", K, "K (points)");
  const int64_t S = static_cast<int64_t>(so.size()) - 1;
  check(static_cast<int64_t>(k.size()) == S, "k must have one entry per segment (", S, "), got ",
        k.size());
  check_threads(num_threads);
  const double* g = gains.data();
  const double* a = align.data();
  py::array_t<bool> keep_a(K);
  bool* kp = keep_a.mutable_data();
  {
  py::gil_scoped_release release;
  std::fill(kp, kp + K, false);
  std::vector<double> cost(static_cast<size_t>(S));
  for (int64_t r = 0; r < S; ++r) cost[r] = double(so[r + 1] - so[r]);
  parallel_items(cost, num_threads, [&](int64_t r) {
    const int64_t s0 = so[r], n = so[r + 1] - so[r], kr = k[r];
    if (kr <= 0 || n == 0) return;
    const std::vector<int64_t> front = fronts_2d(g + s0, a + s0, n);
    const int64_t levels = *std::max_element(front.begin(), front.end()) + 1;
    std::vector<std::vector<int64_t>> members(static_cast<size_t>(levels));
    for (int64_t i = 0; i < n; ++i) members[front[i]].push_back(i);  // position order
    int64_t taken = 0;
    for (int64_t lvl = 0; lvl < levels && taken < kr; ++lvl) {
      const std::vector<int64_t>& mem = members[lvl];
      const int64_t sz = static_cast<int64_t>(mem.size());
      if (taken + sz <= kr) {
        for (int64_t i : mem) kp[s0 + i] = true;
        taken += sz;
        continue;
      }
      const std::vector<double> cd = crowding(mem, g + s0, a + s0);
      std::vector<size_t> idx(mem.size());
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return cd[x] > cd[y]; });
      for (int64_t t = 0; t < kr - taken; ++t) kp[s0 + mem[idx[t]]] = true;
      taken = kr;
    }
  });
  }
  return keep_a;
}

}  // namespace

AP_REGISTER_OP("pareto_select", "", [](py::module_& m) {
  m.def("pareto_select", &pareto_select_py, py::arg("gains"), py::arg("align"),
        py::arg("offsets"), py::arg("k"), py::kw_only(), py::arg("num_threads"),
        "Keep mask [K] bool with exactly k[r] points of every segment (float64 logic)");
});

}  // namespace adaptive_prune_cpu
