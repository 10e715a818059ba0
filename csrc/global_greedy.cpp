// Stage 2 filter: max-min greedy over every request's pool (reference.global_greedy), parallel
// over requests, inside groups of similar images.
//
// Request r owns pool positions pool_offsets[r]:pool_offsets[r+1] (rows pool[...] of vision);
// group g owns group_offsets[g]:group_offsets[g+1] (every request offset is a group offset;
// None: one group per request). Tokens of different groups never cover each other (distance
// +inf), so the chain of a request is the merge by gain of one max-min chain per group (one
// MaxMin per group): the work per pick is one group's rows. The pick is the band rule of
// common.h over the whole pool: M = the largest running minimum over the groups, then the
// lowest pool position with acc >= M - kPickTie, which lies in the first group (pool order)
// whose max reaches that threshold.
// Its output starts with its reserved positions in pool order (gain +inf), followed by greedy
// picks (argmax over unpicked of the min cosine distance to the picked set, ties to the lower
// pool position) until num_picks[r] entries; each pick's gain is that distance when picked.
// dist [K]: every pool position's distance to the nearest chain entry of its request in its own
// group (the MaxMin running minimum once the last pick is applied too), 0 on the chain, +inf
// where the group has no chain entry (all of a request with num_picks = 0).
//
// The reference computes the row of every pick against the whole pool (P x B1 x D, or a full
// B1 x B1 similarity); this kernel runs the exact projection-filtered greedy of maxmin.h,
// which computes only the distances that can lower a running minimum.
#include <algorithm>
#include <memory>

#include "binding.h"
#include "maxmin.h"

namespace adaptive_prune_cpu {
namespace {

py::tuple global_greedy_py(const F32& vision, const I64& pool, const I64& pool_offsets,
                           const Bool& reserved, const std::vector<int64_t>& num_picks,
                           double eps, const py::object& group_offsets, int64_t num_threads,
                           int64_t proj_dim) {
  const auto [N, D] = shape2(vision, "vision");
  const int64_t K = len1(pool, "pool");
  const int64_t* rows = pool.data();
  check_rows(rows, K, N, "pool");
  const std::vector<int64_t> po =
      read_offsets(pool_offsets.data(), len1(pool_offsets, "pool_offsets"), "pool_offsets", K,
                   "K (pool size)");
  const int64_t R = static_cast<int64_t>(po.size()) - 1;
  std::vector<int64_t> go = po;
  if (!group_offsets.is_none()) {
    const I64 ga = group_offsets.cast<I64>();
    go = read_offsets(ga.data(), len1(ga, "group_offsets"), "group_offsets", K, "K (pool size)");
    for (int64_t r = 0; r <= R; ++r)
      check(std::binary_search(go.begin(), go.end(), po[r]), "pool_offsets[", r, "] = ", po[r],
            " is not a group offset: groups must not straddle requests");
  }
  check(reserved.ndim() == 1 && reserved.shape(0) == K, "reserved must be [K] = [", K,
        "], got ", reserved.ndim(), " dimensions of ", reserved.ndim() ? reserved.shape(0) : 0);
  check(static_cast<int64_t>(num_picks.size()) == R,
        "num_picks must have one entry per request (", R, "), got ", num_picks.size());
  check(eps > 0, "eps must be > 0, got ", eps);
  check(proj_dim >= -1, "proj_dim must be -1 (auto), 0 (dense) or > 0, got ", proj_dim);
  check_threads(num_threads);
  std::vector<int64_t> out_off(static_cast<size_t>(R + 1), 0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t P = num_picks[r], size = po[r + 1] - po[r];
    check(P >= 0 && P <= size, "num_picks[", r, "] = ", P,
          " must be in [0, pool size of request ", r, " = ", size, "]");
    out_off[r + 1] = out_off[r] + P;
  }
  const bool* rsv = reserved.data();
  const float* x = vision.data();

  py::array_t<int64_t> order_a(out_off[R]);
  py::array_t<float> gains_a(out_off[R]);
  py::array_t<float> dist_a(K);
  int64_t* o = order_a.mutable_data();
  float* g = gains_a.mutable_data();
  float* dist = dist_a.mutable_data();
  {
    py::gil_scoped_release release;
    std::fill(dist, dist + K, kInf);
    // unit fp32 rows of the pool (parallel over rows), for every request with a chain: dist
    // needs the distances to the reserved entries even where no greedy pick follows
    std::vector<char> runs(static_cast<size_t>(R), 0);
    for (int64_t r = 0; r < R; ++r) runs[r] = num_picks[r] > 0 && po[r + 1] > po[r];
    FloatBuf own;
    float* xp = nullptr;
    if (std::any_of(runs.begin(), runs.end(), [](char c) { return c != 0; })) {
      xp = pool_workspace(K, D, own);
      const float e = static_cast<float>(eps);
      parallel_chunks(K, 16, num_threads, [&](int64_t b, int64_t end) {
        for (int64_t i = b; i < end; ++i)
          std::copy(x + rows[i] * D, x + (rows[i] + 1) * D, xp + i * D);
        normalize_rows(xp + b * D, end - b, D, e);
      });
    }

    std::vector<double> cost(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) cost[r] = double(num_picks[r]) * double(po[r + 1] - po[r]);
    parallel_items(cost, num_threads, [&](int64_t r) {
      const int64_t a = po[r], m = po[r + 1] - po[r], P = num_picks[r];
      int64_t* out_o = o + out_off[r];
      float* out_g = g + out_off[r];
      int64_t t = 0;
      std::vector<int64_t> res;
      for (int64_t i = 0; i < m && static_cast<int64_t>(res.size()) < P; ++i)
        if (rsv[a + i]) res.push_back(i);  // the reserved entries of the chain
      for (int64_t i : res) {
        out_o[t] = a + i;
        out_g[t] = kInf;
        ++t;
      }
      if (!runs[r]) return;
      // this request's groups: [gs[u], gs[u+1]) local positions
      std::vector<int64_t> gs;
      for (int64_t v : go)
        if (v >= a && v <= a + m && (gs.empty() || v != gs.back())) gs.push_back(v - a);
      const int64_t G = static_cast<int64_t>(gs.size()) - 1;
      std::vector<std::unique_ptr<MaxMin>> mm(static_cast<size_t>(G));
      for (int64_t u = 0; u < G; ++u) {
        const int64_t b0 = gs[u], size = gs[u + 1] - gs[u];
        std::vector<int64_t> mine;
        for (int64_t i : res)
          if (i >= b0 && i < b0 + size) mine.push_back(i - b0);
        mm[u] = std::make_unique<MaxMin>(xp + (a + b0) * D, size, D,
                                         choose_proj_dim(proj_dim, size, std::min(size, P), D));
        if (!mine.empty()) mm[u]->pick_many(mine);
      }
      std::vector<float> top(static_cast<size_t>(G));
      for (int64_t u = 0; u < G; ++u) top[u] = mm[u]->max_acc();
      for (; t < P; ++t) {
        const float M = *std::max_element(top.begin(), top.end());
        const float thr = M - kPickTie;  // M = +inf: exactly the +inf rows
        int64_t u = 0;
        while (u + 1 < G && !(top[u] >= thr)) ++u;
        int64_t j = mm[u]->first_at_least(thr);
        if (j < 0) j = mm[u]->argmax();  // (NaN scores only)
        out_o[t] = a + gs[u] + j;
        out_g[t] = mm[u]->acc(j);
        mm[u]->take(j);  // the last pick too: dist is the minimum over the whole chain
        if (t + 1 < P) top[u] = mm[u]->max_acc();
      }
      for (int64_t u = 0; u < G; ++u) {  // picked rows hold -inf: they are the chain (0)
        float* dg = dist + a + gs[u];
        for (int64_t i = 0, size = gs[u + 1] - gs[u]; i < size; ++i) {
          const float v = mm[u]->acc(i);
          dg[i] = v == -kInf ? 0.0f : v;
        }
      }
    });
  }
  return py::make_tuple(order_a, gains_a, dist_a);
}

}  // namespace

AP_REGISTER_OP("global_greedy", "proj_dim", [](py::module_& m) {
  m.def("global_greedy", &global_greedy_py, py::arg("vision"), py::arg("pool"),
        py::arg("pool_offsets"), py::arg("reserved"), py::arg("num_picks"), py::arg("eps"),
        py::arg("group_offsets") = py::none(), py::kw_only(), py::arg("num_threads"),
        py::arg("proj_dim") = -1,
        "Stage 2 filter: (order [sum P] int64 pool positions, gains [sum P] float32, dist [K] "
        "float32 distance to the chain). "
        "proj_dim: -1 auto, 0 dense, > 0 projection dims (speed only, never the result)");
});

}  // namespace adaptive_prune_cpu
