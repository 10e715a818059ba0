// Stage 1: greedy pick order inside every image (reference.greedy_select), parallel over
// images.
//
// rank[i] = step at which token i was picked inside its image, -1 if unpicked. Image k picks
// min(budgets[k], m_k) tokens: first argmax_i x_i . mu_k (mu_k = normalised sum of the unit
// rows), then "maxmin": argmax over unpicked rows of min over picked of (1 - x_i . x_j), or
// "maxsum": argmax of the sum of those distances. Ties to the lower index. fp32 compute.
//
// maxmin runs the exact projection-filtered greedy of maxmin.h: on real tokens it computes a
// few distances per pick instead of the image's [m, m] similarity block.
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include "maxmin.h"

namespace adaptive_prune_cpu {
namespace {

// rows a..a+m of x as unit fp32 rows [m, D] (a fresh buffer: never aliases the input)
at::Tensor unit_rows(const at::Tensor& x, int64_t a, int64_t m, double eps) {
  const int64_t D = x.size(1);
  at::Tensor out = at::empty({m, D}, x.options().dtype(at::kFloat));
  out.copy_(x.narrow(0, a, m));
  float* p = out.data_ptr<float>();
  normalize_rows(p, m, D, static_cast<float>(eps));
  return out;
}

void select_image(const float* X, int64_t m, int64_t D, int64_t b, bool maxmin, double eps,
                  int64_t proj_dim, int64_t* rank) {
  // first pick: the token most aligned with the image's normalised mean direction
  std::vector<float> mu(static_cast<size_t>(D), 0.f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < D; ++k) mu[k] += X[i * D + k];
  const float ns = std::max(std::sqrt(dot(mu.data(), mu.data(), D)), static_cast<float>(eps));
  for (int64_t k = 0; k < D; ++k) mu[k] /= ns;
  std::vector<float> score(static_cast<size_t>(m));
  dot_rows(X, m, D, mu.data(), score.data());
  int64_t j = 0;
  float best = -kInf;
  for (int64_t i = 0; i < m; ++i) {
    if (score[i] > best) {
      best = score[i];
      j = i;
    }
  }
  if (maxmin) {
    MaxMin mm(X, m, D, choose_proj_dim(proj_dim, m, b, D));
    for (int64_t step = 0; step < b; ++step) {
      rank[j] = step;
      if (step + 1 < b) j = mm.pick(j);
    }
    return;
  }
  // maxsum: acc[i] = sum over picked j of (1 - x_i . x_j), accumulated in pick order
  std::vector<float> acc(static_cast<size_t>(m)), row(static_cast<size_t>(m));
  std::vector<char> picked(static_cast<size_t>(m), 0);
  dot_rows(X, m, D, X + j * D, row.data());
  for (int64_t i = 0; i < m; ++i) acc[i] = 1.f - row[i];
  for (int64_t step = 0; step < b; ++step) {
    if (step > 0) {
      float bv = -kInf;
      int64_t bi = -1;
      for (int64_t i = 0; i < m; ++i)
        if (!picked[i] && (bi < 0 || acc[i] > bv)) {
          bv = acc[i];
          bi = i;
        }
      j = bi;
      dot_rows(X, m, D, X + j * D, row.data());
      for (int64_t i = 0; i < m; ++i)
        if (!picked[i] && i != j) acc[i] = acc[i] + (1.f - row[i]);
    }
    picked[j] = 1;
    rank[j] = step;
  }
}

at::Tensor greedy_select_cpu(const at::Tensor& vision, const at::Tensor& cu_seqlens,
                             const at::Tensor& budgets, c10::string_view mode, double eps,
                             int64_t proj_dim) {
  check_tokens(vision, "vision");
  const int64_t N = vision.size(0), D = vision.size(1);
  const std::vector<int64_t> cu = read_offsets(cu_seqlens, "cu_seqlens", N, "N (rows of vision)");
  const int64_t n = static_cast<int64_t>(cu.size()) - 1;
  const std::vector<int64_t> bud = to_vec(budgets, "budgets");
  TORCH_CHECK_VALUE(static_cast<int64_t>(bud.size()) == n, "budgets must have one entry per "
                    "image (", n, "), got ", bud.size());
  TORCH_CHECK_VALUE(mode == "maxmin" || mode == "maxsum",
                    "mode must be 'maxmin' or 'maxsum', got '", std::string(mode), "'");
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  TORCH_CHECK_VALUE(proj_dim >= -1, "proj_dim must be -1 (auto), 0 (dense) or > 0, got ",
                    proj_dim);
  const bool maxmin = mode == "maxmin";
  const at::Tensor x = vision.contiguous();
  at::Tensor rank = at::full({N}, -1, vision.options().dtype(at::kLong));
  int64_t* rk = rank.data_ptr<int64_t>();
  std::vector<double> cost(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    const double m = double(cu[k + 1] - cu[k]);
    cost[k] = m * (std::min<double>(double(bud[k]), m) + double(D) / 64.0);
  }
  parallel_items(cost, [&](int64_t k) {
    const int64_t a = cu[k], m = cu[k + 1] - cu[k];
    const int64_t b = std::min(bud[k], m);
    if (b <= 0) return;
    at::Tensor X = unit_rows(x, a, m, eps);
    select_image(X.data_ptr<float>(), m, D, b, maxmin, eps, proj_dim, rk + a);
  });
  return rank;
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_prune_cpp, CPU, m) { m.impl("greedy_select", &greedy_select_cpu); }

}  // namespace adaptive_prune_cpu
