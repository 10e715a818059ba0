// Stage 2 filter: max-min greedy over every request's pool (reference.global_greedy), parallel
// over requests, inside groups of similar images.
//
// Request r owns pool positions pool_offsets[r]:pool_offsets[r+1] (rows pool[...] of vision);
// group g owns group_offsets[g]:group_offsets[g+1] (every request offset is a group offset).
// Tokens of different groups never cover each other (distance +inf), so the chain of a request
// is the merge by gain of one max-min chain per group (one MaxMin per group; at every step the
// group whose next pick has the largest running minimum, ties to the lower group, i.e. the
// lower pool position): the work per pick is one group's rows.
// Its output starts with its reserved positions in pool order (gain +inf), followed by greedy
// picks (argmax over unpicked of the min cosine distance to the picked set, ties to the lower
// pool position) until num_picks[r] entries; each pick's gain is that distance when picked.
//
// The reference computes the row of every pick against the whole pool (P x B1 x D, or a full
// B1 x B1 similarity); this kernel runs the exact projection-filtered greedy of maxmin.h,
// which computes only the distances that can lower a running minimum.
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <torch/library.h>

#include <memory>

#include "maxmin.h"

namespace adaptive_prune_cpu {
namespace {

// The unit pool rows [K, D] live in a buffer kept per calling thread between calls (up to
// 256 MiB): a fresh allocation of this size is new memory from the OS every call, and its page
// faults cost more than a tenth of the op (17 ms of ~160 ms for 9216 x 1024 rows here).
at::Tensor pool_workspace(int64_t K, int64_t D) {
  constexpr int64_t kKeepBytes = int64_t(256) << 20;
  const int64_t need = K * D;
  if (need * int64_t(sizeof(float)) > kKeepBytes) return at::empty({K, D}, at::kFloat);
  static thread_local at::Tensor ws;
  if (!ws.defined() || ws.numel() < need) ws = at::empty({need}, at::kFloat);
  return ws.narrow(0, 0, need).view({K, D});
}

std::tuple<at::Tensor, at::Tensor> global_greedy_cpu(const at::Tensor& vision,
                                                     const at::Tensor& pool,
                                                     const at::Tensor& pool_offsets,
                                                     const at::Tensor& reserved,
                                                     at::IntArrayRef num_picks, double eps,
                                                     const c10::optional<at::Tensor>& group_offsets,
                                                     int64_t proj_dim) {
  check_tokens(vision, "vision");
  const int64_t N = vision.size(0), D = vision.size(1);
  const std::vector<int64_t> rows = to_vec(pool, "pool");
  const int64_t K = static_cast<int64_t>(rows.size());
  for (int64_t i = 0; i < K; ++i)
    TORCH_CHECK_VALUE(rows[i] >= 0 && rows[i] < N, "pool[", i, "] = ", rows[i],
                      " is not a row of vision (N = ", N, ")");
  const std::vector<int64_t> po = read_offsets(pool_offsets, "pool_offsets", K, "K (pool size)");
  const int64_t R = static_cast<int64_t>(po.size()) - 1;
  const std::vector<int64_t> go =
      group_offsets.has_value()
          ? read_offsets(*group_offsets, "group_offsets", K, "K (pool size)")
          : po;
  for (int64_t r = 0; r <= R; ++r)
    TORCH_CHECK_VALUE(std::binary_search(go.begin(), go.end(), po[r]), "pool_offsets[", r,
                      "] = ", po[r], " is not a group offset: groups must not straddle requests");
  check_cpu(reserved, "reserved");
  TORCH_CHECK_TYPE(reserved.scalar_type() == at::kBool, "reserved must be bool, got ",
                   reserved.scalar_type());
  TORCH_CHECK_VALUE(reserved.dim() == 1 && reserved.size(0) == K,
                    "reserved must be [K] = [", K, "], got shape ", reserved.sizes());
  TORCH_CHECK_VALUE(static_cast<int64_t>(num_picks.size()) == R,
                    "num_picks must have one entry per request (", R, "), got ",
                    num_picks.size());
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  TORCH_CHECK_VALUE(proj_dim >= -1, "proj_dim must be -1 (auto), 0 (dense) or > 0, got ",
                    proj_dim);
  std::vector<int64_t> out_off(static_cast<size_t>(R + 1), 0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t P = num_picks[r], size = po[r + 1] - po[r];
    TORCH_CHECK_VALUE(P >= 0 && P <= size, "num_picks[", r, "] = ", P,
                      " must be in [0, pool size of request ", r, " = ", size, "]");
    out_off[r + 1] = out_off[r] + P;
  }
  const at::Tensor res_c = reserved.contiguous();
  const bool* rsv = res_c.data_ptr<bool>();

  at::Tensor order = at::empty({out_off[R]}, vision.options().dtype(at::kLong));
  at::Tensor gains = at::empty({out_off[R]}, vision.options().dtype(at::kFloat));
  int64_t* o = order.data_ptr<int64_t>();
  float* g = gains.data_ptr<float>();

  // unit fp32 rows of the pool (parallel over rows), only for requests that run the greedy
  std::vector<char> runs(static_cast<size_t>(R), 0);
  for (int64_t r = 0; r < R; ++r) {
    int64_t nres = 0;
    for (int64_t i = po[r]; i < po[r + 1]; ++i) nres += rsv[i];
    runs[r] = num_picks[r] > nres;
  }
  at::Tensor X;
  float* xp = nullptr;
  if (std::any_of(runs.begin(), runs.end(), [](char c) { return c != 0; })) {
    at::Tensor idx = at::empty({K}, vision.options().dtype(at::kLong));
    std::copy(rows.begin(), rows.end(), idx.data_ptr<int64_t>());
    X = pool_workspace(K, D);
    if (vision.scalar_type() == at::kFloat)
      at::index_select_out(X, vision, 0, idx);
    else
      X.copy_(vision.index_select(0, idx));
    xp = X.data_ptr<float>();
    const float e = static_cast<float>(eps);
    at::parallel_for(0, K, 16, [&](int64_t b, int64_t end) {
      normalize_rows(xp + b * D, end - b, D, e);
    });
  }

  std::vector<double> cost(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) cost[r] = double(num_picks[r]) * double(po[r + 1] - po[r]);
  parallel_items(cost, [&](int64_t r) {
    const int64_t a = po[r], m = po[r + 1] - po[r], P = num_picks[r];
    int64_t* out_o = o + out_off[r];
    float* out_g = g + out_off[r];
    int64_t t = 0;
    std::vector<int64_t> res;
    for (int64_t i = 0; i < m; ++i)
      if (rsv[a + i]) res.push_back(i);
    for (int64_t i : res) {
      if (t == P) break;
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
    std::vector<int64_t> head(static_cast<size_t>(G), -1);
    for (int64_t u = 0; u < G; ++u) {
      const int64_t b0 = gs[u], size = gs[u + 1] - gs[u];
      std::vector<int64_t> mine;
      for (int64_t i : res)
        if (i >= b0 && i < b0 + size) mine.push_back(i - b0);
      const int64_t picks = std::min(size, P);
      mm[u] = std::make_unique<MaxMin>(xp + (a + b0) * D, size, D,
                                       choose_proj_dim(proj_dim, size, picks, D));
      head[u] = mine.empty() ? mm[u]->argmax() : mm[u]->pick_many(mine);
    }
    for (; t < P; ++t) {
      int64_t best = -1;
      float bv = 0.f;
      for (int64_t u = 0; u < G; ++u) {
        if (head[u] < 0) continue;
        const float v = mm[u]->acc(head[u]);
        if (best < 0 || v > bv) best = u, bv = v;
      }
      out_o[t] = a + gs[best] + head[best];
      out_g[t] = bv;
      if (t + 1 < P) head[best] = mm[best]->pick(head[best]);
    }
  });
  return {order, gains};
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_prune_cpp, CPU, m) { m.impl("global_greedy", &global_greedy_cpu); }

}  // namespace adaptive_prune_cpu
