// Stage 1: greedy pick order inside every image (reference.greedy_select), parallel over
// images.
//
// rank[i] = step at which token i was picked inside its image, -1 if unpicked. Image k picks
// min(budgets[k], m_k) tokens: first argmax_i x_i . mu_k (mu_k = normalised sum of the unit
// rows), then "maxmin": argmax over unpicked rows of min over picked of (1 - x_i . x_j), or
// "maxsum": argmax of the sum of those distances. Every argmax is the band rule of common.h
// (band_argmax: the lowest index within kPickTie of the largest score; max-sum: kPickTie * t
// after t picks, one rounding per summed distance). fp32 compute.
//
// maxmin runs the exact projection-filtered greedy of maxmin.h: on real tokens it computes a
// few distances per pick instead of the image's [m, m] similarity block.
#include "binding.h"
#include "maxmin.h"

namespace adaptive_prune_cpu {
namespace {

void select_image(const float* X, int64_t m, int64_t D, int64_t b, bool maxmin, double eps,
                  int64_t proj_dim, int64_t* rank) {
  // first pick: the token most aligned with the image's normalised mean direction
  FloatBuf mu(static_cast<size_t>(D), 0.f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < D; ++k) mu[k] += X[i * D + k];
  const float ns = std::max(std::sqrt(dot(mu.data(), mu.data(), D)), static_cast<float>(eps));
  for (int64_t k = 0; k < D; ++k) mu[k] /= ns;
  FloatBuf score(static_cast<size_t>(m));
  dot_rows(X, m, D, mu.data(), score.data());
  int64_t j = band_argmax(score.data(), m, nullptr, kPickTie);
  if (maxmin) {
    MaxMin mm(X, m, D, choose_proj_dim(proj_dim, m, b, D));
    for (int64_t step = 0; step < b; ++step) {
      rank[j] = step;
      if (step + 1 < b) j = mm.pick(j);
    }
    return;
  }
  // maxsum: acc[i] = sum over picked j of (1 - x_i . x_j), accumulated in pick order
  FloatBuf acc(static_cast<size_t>(m)), row(static_cast<size_t>(m));
  std::vector<char> picked(static_cast<size_t>(m), 0);
  dot_rows(X, m, D, X + j * D, row.data());
  for (int64_t i = 0; i < m; ++i) acc[i] = 1.f - row[i];
  for (int64_t step = 0; step < b; ++step) {
    if (step > 0) {
      // acc sums `step` distances: the band scales with them
      j = band_argmax(acc.data(), m, picked.data(), kPickTie * static_cast<float>(step));
      dot_rows(X, m, D, X + j * D, row.data());
      for (int64_t i = 0; i < m; ++i)
        if (!picked[i] && i != j) acc[i] = acc[i] + (1.f - row[i]);
    }
    picked[j] = 1;
    rank[j] = step;
  }
}

py::array_t<int64_t> greedy_select_py(const F32& vision, const I64& cu_seqlens,
                                      const I64& budgets, const std::string& mode, double eps,
                                      int64_t num_threads, int64_t proj_dim) {
  const auto [N, D] = shape2(vision, "vision");
  const std::vector<int64_t> cu = read_offsets(cu_seqlens.data(), len1(cu_seqlens, "cu_seqlens"),
                                               "cu_seqlens", N, "N (rows of vision)");
  const int64_t n = static_cast<int64_t>(cu.size()) - 1;
  const int64_t nb = len1(budgets, "budgets");
  check(nb == n, "budgets must have one entry per image (", n, "), got ", nb);
  check(mode == "maxmin" || mode == "maxsum", "mode must be 'maxmin' or 'maxsum', got '", mode,
        "'");
  check(eps > 0, "eps must be > 0, got ", eps);
  check(proj_dim >= -1, "proj_dim must be -1 (auto), 0 (dense) or > 0, got ", proj_dim);
  check_threads(num_threads);
  const bool maxmin = mode == "maxmin";
  py::array_t<int64_t> rank_a(N);
  int64_t* rk = rank_a.mutable_data();
  const float* x = vision.data();
  const int64_t* bud = budgets.data();
  {
    py::gil_scoped_release release;
    std::fill(rk, rk + N, int64_t(-1));
    std::vector<double> cost(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      const double m = double(cu[k + 1] - cu[k]);
      cost[k] = m * (std::min<double>(double(bud[k]), m) + double(D) / 64.0);
    }
    parallel_items(cost, num_threads, [&](int64_t k) {
      const int64_t a = cu[k], m = cu[k + 1] - cu[k];
      const int64_t b = std::min(bud[k], m);
      if (b <= 0) return;
      // the image's rows as unit fp32 rows (a fresh buffer: never aliases the input)
      FloatBuf X(x + a * D, x + (a + m) * D);
      normalize_rows(X.data(), m, D, static_cast<float>(eps));
      select_image(X.data(), m, D, b, maxmin, eps, proj_dim, rk + a);
    });
  }
  return rank_a;
}

}  // namespace

AP_REGISTER_OP("greedy_select", "proj_dim", [](py::module_& m) {
  m.def("greedy_select", &greedy_select_py, py::arg("vision"), py::arg("cu_seqlens"),
        py::arg("budgets"), py::arg("mode"), py::arg("eps"), py::kw_only(),
        py::arg("num_threads"), py::arg("proj_dim") = -1,
        "Stage 1: rank [N] int64, the pick step of each token in its image (-1: unpicked). "
        "proj_dim: -1 auto, 0 dense, > 0 projection dims (speed only, never the result)");
});

}  // namespace adaptive_prune_cpu
