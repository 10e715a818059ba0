// Stage 3 coverage refinement (ops/refine_medoids.py is the spec): `steps` k-medoids steps per
// group of the kept pool positions that never raise the group's k-centre radius.
//
// Group g owns pool positions group_offsets[g]:group_offsets[g+1] (rows pool[...] of vision,
// unit rows x̂). One step on a group with kept set S:
//   1. assignment: c(i) = argmax_{j in S} x̂_i . x̂_j (ties to the lower position; a kept
//      position is its own centre), d_i = 1 - x̂_i . x̂_c(i) (0 when kept), R = max d_i;
//   2. medoids: cost of member c of cluster j = n_j - x̂_c . s_j (s_j the members' sum); the
//      cheapest candidate (same image as j, j itself or not kept; the lowest position within
//      TIE n_j of the cheapest) replaces a movable j when it costs less than j's cost minus
//      TIE n_j and the cluster's radius around it is at most R - TIE. Moves apply at once.
//
// The assignment is the expensive part (dense: m x |S| x D per group). It is an exact nearest-
// centre search with the projection bound of maxmin.h: with Q [dp, D] orthonormal rows (a
// range finder of the group's initial centres), p_i = Q x̂_i and the residual e_i = x̂_i -
// Q^T p_i, x̂_i . x̂_j <= p_i . p_j + |e_i| |e_j| =: ub(i, j). Row i takes the centre of largest
// ub first (its exact dot is the best so far), then computes the exact dot only for the
// centres whose ub reaches the best so far minus a margin (1e-4, which covers the fp32
// rounding of p, Q and the bound). A skipped centre provably has a smaller dot, so the result
// is the dense argmax (dp = 0) bit for bit: every exact dot is the fixed-order `dot`. On real
// tokens about 1-2 % of the (row, centre) pairs pass the bound at dp = 16.
//
// Work: the projection of the group's rows (m x D x dp, once per call), m x |S| x dp for the
// bounds and one dot of D per passing pair; the medoid step is O(m D). Parallel over chunks
// of rows (assignment) and over groups (medoids); every value is computed by one thread in a
// fixed order, so the result does not depend on the thread count.
#include "binding.h"

namespace adaptive_prune_cpu {
namespace {

constexpr float kTie = 1e-5f;     // TIE of the spec (cosine scale, per cluster member)
constexpr float kMargin = 1e-4f;  // slack of the bound test (see above)
constexpr float kResidualFloor = 1e-4f;  // added to |e|^2 before the root: inflates |e| only
constexpr int64_t kMaxDp = 64;
constexpr int64_t kRowGrain = 32;

inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Projection dims: dense for small searches (the bound does not repay the projection), else 8.
// Measured on real tokens (16 x 576, keep 25 %, text; loaded 2-core VM, projection + search
// ms): D = 1024: dp 8 ~19, 16 ~27, 32 ~48; D = 3584: dp 8 ~84, 16 ~110, 32 ~170: the
// projection of every row (m x D x dp) costs more than the sharper bound saves.
int64_t choose_dp(int64_t proj_dim, int64_t m, int64_t c, int64_t D) {
  if (proj_dim == 0) return 0;
  if (proj_dim > 0) return std::min({proj_dim, D, kMaxDp});
  if (c <= 8 || m <= 64 || D <= 64) return 0;
  return std::min<int64_t>(8, D);
}

// One group's state across the steps.
struct Group {
  int64_t a = 0, m = 0, dp = 0;
  bool active = true;
  FloatBuf pT;  // [dp, m] projections of the group's rows, transposed
  FloatBuf r;   // [m] inflated residual norms
  // the current step: centres (local positions, ascending), their projections [dp, c] and
  // residuals, the slot (centre index) of every position
  std::vector<int64_t> centres;
  FloatBuf pc, rc;
  std::vector<int64_t> slot;
  std::vector<float> dist;
};

// Q [dp, D] from a sign sketch of the rows X [n, D], orthonormalised twice (CGS2); rows that
// fall (numerically) in the span of earlier ones become zero, so Q^T Q stays a projector.
void range_finder(const float* X, int64_t n, int64_t D, int64_t dp, float* Q) {
  FloatBuf signs(static_cast<size_t>(dp * n));
  for (int64_t c = 0; c < dp; ++c)
    for (int64_t i = 0; i < n; ++i)
      signs[c * n + i] = (mix64(static_cast<uint64_t>(c * n + i)) >> 63) ? 1.f : -1.f;
  sign_sketch(X, n, D, signs.data(), dp, Q);
  for (int64_t c = 0; c < dp; ++c) {
    float* v = Q + c * D;
    const float n0 = std::sqrt(dot(v, v, D));
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t c2 = 0; c2 < c; ++c2) {
        const float* u = Q + c2 * D;
        const float h = dot(u, v, D);
        for (int64_t k = 0; k < D; ++k) v[k] -= h * u[k];
      }
    const float n1 = std::sqrt(dot(v, v, D));
    if (!(n1 > 1e-3f * n0) || !(n1 > 0.f)) {
      std::fill(v, v + D, 0.f);
      continue;
    }
    for (int64_t k = 0; k < D; ++k) v[k] /= n1;
  }
}

// projections and residual norms of a group's rows (xg [m, D] unit rows)
void project_group(Group& G, const float* xg, int64_t D) {
  const int64_t m = G.m, dp = G.dp;
  if (dp == 0) return;
  // sketch of the initial centres (spread over the group: max-min picks), all rows if few
  FloatBuf src;
  int64_t n = static_cast<int64_t>(G.centres.size());
  const float* sx = xg;
  if (n >= 2 * dp) {
    src.resize(static_cast<size_t>(n * D));
    for (int64_t s = 0; s < n; ++s)
      std::copy(xg + G.centres[s] * D, xg + (G.centres[s] + 1) * D, src.data() + s * D);
    sx = src.data();
  } else {
    n = m;
  }
  FloatBuf Q(static_cast<size_t>(dp * D));
  range_finder(sx, n, D, dp, Q.data());
  FloatBuf p(static_cast<size_t>(m * dp));
  dot_rows_multi(xg, m, D, Q.data(), dp, p.data(), dp);
  G.pT.resize(static_cast<size_t>(dp * m));
  G.r.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    double p2 = 0.0;
    for (int64_t c = 0; c < dp; ++c) {
      G.pT[c * m + i] = p[i * dp + c];
      p2 += double(p[i * dp + c]) * double(p[i * dp + c]);
    }
    const double x2 = dot(xg + i * D, xg + i * D, D);
    G.r[i] = static_cast<float>(std::sqrt(std::max(x2 - p2, 0.0) + kResidualFloor));
  }
}

// nearest centre of row i (local position) of group G: (slot, exact dot); ub: scratch [c]
AP_HOT std::pair<int64_t, float> nearest(const Group& G, const float* xg, int64_t D, int64_t i,
                                         float* __restrict ub) {
  const int64_t c = static_cast<int64_t>(G.centres.size());
  const float* xi = xg + i * D;
  const int64_t* cs = G.centres.data();
  if (G.dp == 0) {
    int64_t bs = 0;
    float best = dot(xi, xg + cs[0] * D, D);
    for (int64_t s = 1; s < c; ++s) {
      const float v = dot(xi, xg + cs[s] * D, D);
      if (v > best) best = v, bs = s;  // ties: the first (lower) position stays
    }
    return {bs, best};
  }
  const int64_t dp = G.dp;
  const float ri = G.r[i];
  const float* __restrict rc = G.rc.data();
  for (int64_t s = 0; s < c; ++s) ub[s] = ri * rc[s];
  for (int64_t k = 0; k < dp; ++k) {
    const float pk = G.pT[k * G.m + i];
    const float* __restrict row = G.pc.data() + k * c;
    for (int64_t s = 0; s < c; ++s) ub[s] += pk * row[s];
  }
  int64_t s0 = 0;
  for (int64_t s = 1; s < c; ++s)
    if (ub[s] > ub[s0]) s0 = s;
  float best = dot(xi, xg + cs[s0] * D, D);
  int64_t bs = s0;
  for (int64_t s = 0; s < c; ++s) {
    if (s == s0 || ub[s] < best - kMargin) continue;
    const float v = dot(xi, xg + cs[s] * D, D);
    if (v > best || (v == best && s < bs)) best = v, bs = s;
  }
  return {bs, best};
}

// The medoid half of a step on one group (assignment done); updates keep/movable (local
// views) and returns whether anything moved.
bool medoid_step(Group& G, const float* xg, int64_t D, const int64_t* img, bool* keep,
                 bool* movable) {
  const int64_t m = G.m, c = static_cast<int64_t>(G.centres.size());
  const std::vector<int64_t>& cs = G.centres;
  float R = 0.f;
  for (int64_t i = 0; i < m; ++i) R = std::max(R, G.dist[i]);
  std::vector<float> size(static_cast<size_t>(c), 0.f);
  FloatBuf total(static_cast<size_t>(c * D), 0.f);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = G.slot[i];
    size[s] += 1.f;
    float* t = total.data() + s * D;
    const float* xi = xg + i * D;
    for (int64_t k = 0; k < D; ++k) t[k] += xi[k];
  }
  std::vector<float> cost(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = G.slot[i];
    cost[i] = size[s] - dot(xg + i * D, total.data() + s * D, D);
  }
  // cheapest candidate per cluster, then the lowest position within the tie band
  std::vector<float> low(static_cast<size_t>(c), kInf);
  auto ok = [&](int64_t i) {
    const int64_t j = cs[G.slot[i]];
    return img[i] == img[j] && (!keep[i] || i == j) && movable[j];
  };
  for (int64_t i = 0; i < m; ++i)
    if (ok(i)) low[G.slot[i]] = std::min(low[G.slot[i]], cost[i]);
  std::vector<int64_t> choice(static_cast<size_t>(c), m);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = G.slot[i];
    if (choice[s] == m && ok(i) && cost[i] <= low[s] + kTie * size[s]) choice[s] = i;
  }
  std::vector<char> better(static_cast<size_t>(c), 0);
  bool any = false;
  for (int64_t s = 0; s < c; ++s) {
    better[s] = choice[s] < m && low[s] < cost[cs[s]] - kTie * size[s];
    any |= better[s] != 0;
  }
  if (!any) return false;
  std::vector<float> radius(static_cast<size_t>(c), 0.f);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = G.slot[i];
    if (!better[s] || i == choice[s]) continue;
    radius[s] = std::max(radius[s], 1.f - dot(xg + i * D, xg + choice[s] * D, D));
  }
  bool moved = false;
  for (int64_t s = 0; s < c; ++s) {
    if (!better[s] || !(radius[s] <= R - kTie)) continue;
    keep[cs[s]] = false;
    keep[choice[s]] = true;
    movable[choice[s]] = true;  // a moved centre stays movable at its new position
    moved = true;
  }
  return moved;
}

py::array_t<bool> refine_medoids_py(const F32& vision, const I64& pool, const I64& group_offsets,
                                    const I64& image, const Bool& keep, const Bool& movable,
                                    int64_t steps, double eps, int64_t num_threads,
                                    int64_t proj_dim) {
  const auto [N, D] = shape2(vision, "vision");
  const int64_t K = len1(pool, "pool");
  const int64_t* rows = pool.data();
  check_rows(rows, K, N, "pool");
  const std::vector<int64_t> go =
      read_offsets(group_offsets.data(), len1(group_offsets, "group_offsets"), "group_offsets",
                   K, "K (pool size)");
  check(len1(image, "image") == K, "image must be [K] = [", K, "]");
  check(len1(keep, "keep") == K, "keep must be [K] = [", K, "]");
  check(len1(movable, "movable") == K, "movable must be [K] = [", K, "]");
  check(steps >= 0, "steps must be >= 0, got ", steps);
  check(eps > 0, "eps must be > 0, got ", eps);
  check(proj_dim >= -1, "proj_dim must be -1 (auto), 0 (dense) or > 0, got ", proj_dim);
  check_threads(num_threads);
  const int64_t NG = static_cast<int64_t>(go.size()) - 1;
  py::array_t<bool> out_a(K);
  bool* out = out_a.mutable_data();
  const bool* kin = keep.data();
  const int64_t* img = image.data();
  const float* x = vision.data();
  {
    py::gil_scoped_release release;
    std::copy(kin, kin + K, out);
    std::vector<char> mov(movable.data(), movable.data() + K);  // bool storage, updated
    bool* mv = reinterpret_cast<bool*>(mov.data());
    std::vector<Group> groups(static_cast<size_t>(NG));
    std::vector<int64_t> work;  // groups that run the refinement
    for (int64_t g = 0; g < NG; ++g) {
      groups[g].a = go[g];
      groups[g].m = go[g + 1] - go[g];
      if (groups[g].m > 0 && steps > 0) work.push_back(g);
    }
    if (work.empty()) return out_a;
    // unit pool rows of the groups that run (fp32, the reference's normalize)
    FloatBuf own;
    float* const xp = pool_workspace(K, D, own);
    const float e = static_cast<float>(eps);
    parallel_chunks(K, 16, num_threads, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i)
        std::copy(x + rows[i] * D, x + (rows[i] + 1) * D, xp + i * D);
      normalize_rows(xp + b * D, end - b, D, e);
    });
    std::vector<int64_t> group_of(static_cast<size_t>(K), -1);
    for (int64_t g : work)
      for (int64_t i = go[g]; i < go[g + 1]; ++i) group_of[i] = g;

    for (int64_t step = 0; step < steps; ++step) {
      // centres of every active group (a group with no or only kept positions stops)
      std::vector<int64_t> live;
      int64_t cmax = 0;
      for (int64_t g : work) {
        Group& G = groups[g];
        if (!G.active) continue;
        G.centres.clear();
        for (int64_t i = 0; i < G.m; ++i)
          if (out[G.a + i]) G.centres.push_back(i);
        const int64_t c = static_cast<int64_t>(G.centres.size());
        if (c == 0 || c == G.m) {
          G.active = false;
          continue;
        }
        if (step == 0) G.dp = choose_dp(proj_dim, G.m, c, D);
        live.push_back(g);
        cmax = std::max(cmax, c);
      }
      if (live.empty()) break;
      if (step == 0) {
        std::vector<double> cost;
        for (int64_t g : live) cost.push_back(double(groups[g].m));
        parallel_items(cost, num_threads, [&](int64_t t) {
          Group& G = groups[live[t]];
          project_group(G, xp + G.a * D, D);
        });
      }
      for (int64_t g : live) {
        Group& G = groups[g];
        const int64_t c = static_cast<int64_t>(G.centres.size()), dp = G.dp;
        G.pc.resize(static_cast<size_t>(dp * c));
        G.rc.resize(static_cast<size_t>(dp ? c : 0));
        for (int64_t s = 0; s < c && dp; ++s) {
          for (int64_t k = 0; k < dp; ++k) G.pc[k * c + s] = G.pT[k * G.m + G.centres[s]];
          G.rc[s] = G.r[G.centres[s]];
        }
        G.slot.assign(static_cast<size_t>(G.m), -1);
        G.dist.assign(static_cast<size_t>(G.m), 0.f);
        for (int64_t s = 0; s < c; ++s) G.slot[G.centres[s]] = s;
      }
      // 1. assignment: chunks of rows of the live groups, in parallel
      std::vector<std::pair<int64_t, int64_t>> chunks;  // (group, first local row)
      for (int64_t g : live)
        for (int64_t b = 0; b < groups[g].m; b += kRowGrain) chunks.emplace_back(g, b);
      std::vector<double> ccost;
      for (const auto& [g, b] : chunks)
        ccost.push_back(double(groups[g].centres.size()) * double(groups[g].dp ? 1 : D));
      parallel_items(ccost, num_threads, [&](int64_t t) {
        const auto [g, b] = chunks[t];
        Group& G = groups[g];
        const float* xg = xp + G.a * D;
        FloatBuf ub(static_cast<size_t>(std::max<int64_t>(cmax, 1)));
        const int64_t end = std::min(G.m, b + kRowGrain);
        for (int64_t i = b; i < end; ++i) {
          if (out[G.a + i]) continue;  // its own centre, distance 0
          const auto [s, best] = nearest(G, xg, D, i, ub.data());
          G.slot[i] = s;
          G.dist[i] = 1.f - best;
        }
      });
      // 2. medoid moves, per group in parallel
      std::vector<double> gcost;
      for (int64_t g : live) gcost.push_back(double(groups[g].m));
      std::vector<char> moved(live.size(), 0);
      parallel_items(gcost, num_threads, [&](int64_t t) {
        Group& G = groups[live[t]];
        moved[t] = medoid_step(G, xp + G.a * D, D, img + G.a, out + G.a, mv + G.a);
      });
      for (size_t t = 0; t < live.size(); ++t)
        if (!moved[t]) groups[live[t]].active = false;  // a step without a move is final
    }
  }
  return out_a;
}

}  // namespace

AP_REGISTER_OP("refine_medoids", "proj_dim", [](py::module_& m) {
  m.def("refine_medoids", &refine_medoids_py, py::arg("vision"), py::arg("pool"),
        py::arg("group_offsets"), py::arg("image"), py::arg("keep"), py::arg("movable"),
        py::arg("steps"), py::arg("eps"), py::kw_only(), py::arg("num_threads"),
        py::arg("proj_dim") = -1,
        "Stage 3 refinement: keep [K] bool after `steps` k-medoids steps per group. "
        "proj_dim: -1 auto, 0 dense, > 0 projection dims of the exact nearest-centre search "
        "(speed only, never the result)");
});

}  // namespace adaptive_prune_cpu
