// Stage 0: per-image redundancy scores and per-token text alignment from one pass over the
// tokens (reference.budget_scores).
//
// Returns (d_intra [n], mult [n], att [n], d_inter [R], mu [n, D], a [N]) in fp32:
//   s_k = sum of the unit rows of image k (accumulated in token order), sq_k = sum |x_i|^2,
//   D_intra(k) = 1 - (|s_k|^2 - sq_k) / (m_k (m_k - 1)), 0 when m_k <= 1;
//   mu_k = s_k / max(|s_k|, eps), C_kl = mu_k . mu_l inside a request;
//   mult_k = sum over nonempty l of exp(-(1 - C_kl) / sigma), 0 for empty images;
//   D_inter(r) = mean of 1 - C_kl over ordered pairs of nonempty images, 0 with fewer than 2;
//   att_k = share of image k in softmax_i(tau_a cos(t, x_i)) over the request's tokens,
//           averaged over its text rows t (0 without text);
//   a_i = mean (align="mean", fp32 sum in text order / M_r) or max of cos(x_i, t) over the
//         request's text rows (0 without text): bitwise token_alignment's value.
// The pass over the tokens runs in parallel over images and never materialises the unit rows
// of more than one chunk: every chunk of kAttChunk tokens of an image is copied, normalised
// (accumulating s_k, sq_k in token order) and, with text, multiplied with the request's unit
// text rows by the fixed-order `dot` (the cosines give both a_i and the logits tau_a cos);
// the softmax runs per text row in fp32 (max, exp, sum, times 1/sum), parallel over text rows.
#include "binding.h"

namespace adaptive_prune_cpu {
namespace {

constexpr int64_t kAttChunk = 256;  // tokens normalised (and multiplied with the text) at once

py::tuple budget_scores_py(const F32& vision, const I64& cu_seqlens, const I64& req_offsets,
                           const std::optional<F32>& text, const std::optional<I64>& text_offsets,
                           double sigma, double tau_a, double eps, const std::string& align,
                           int64_t num_threads) {
  const auto [N, D] = shape2(vision, "vision");
  const std::vector<int64_t> cu = read_offsets(cu_seqlens.data(), len1(cu_seqlens, "cu_seqlens"),
                                               "cu_seqlens", N, "N (rows of vision)");
  const int64_t n = static_cast<int64_t>(cu.size()) - 1;
  const std::vector<int64_t> ro = read_offsets(
      req_offsets.data(), len1(req_offsets, "req_offsets"), "req_offsets", n, "n (images)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  check(sigma > 0, "sigma must be > 0, got ", sigma);
  check(eps > 0, "eps must be > 0, got ", eps);
  check(align == "mean" || align == "max", "align must be 'mean' or 'max', got '", align, "'");
  check_threads(num_threads);
  const bool has_text = text.has_value() && text_offsets.has_value();
  std::vector<int64_t> to;
  int64_t M = 0;
  if (has_text) {
    const auto [rows_t, Dt] = shape2(*text, "text");
    check(Dt == D, "text has width ", Dt, " but vision has ", D);
    M = rows_t;
    to = read_offsets(text_offsets->data(), len1(*text_offsets, "text_offsets"), "text_offsets",
                      M, "M (rows of text)");
    check(static_cast<int64_t>(to.size()) == R + 1, "text_offsets must have R + 1 = ", R + 1,
          " entries, got ", to.size());
  }
  // the request of every image, its text rows, and where its tokens' cosines start in `lg`
  std::vector<int64_t> req(static_cast<size_t>(n)), lg_at(static_cast<size_t>(R) + 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t k = ro[r]; k < ro[r + 1]; ++k) req[k] = r;
    const int64_t Mr = has_text ? to[r + 1] - to[r] : 0;
    lg_at[r + 1] = lg_at[r] + (cu[ro[r + 1]] - cu[ro[r]]) * Mr;
  }
  const bool need_att = lg_at[R] > 0;
  const bool mean = align == "mean";

  py::array_t<float> d_intra_a(n), mult_a(n), att_a(n), d_inter_a(R), align_a(N);
  py::array_t<float> mu_a({n, D});
  float* di = d_intra_a.mutable_data();
  float* mp = mult_a.mutable_data();
  float* ap = att_a.mutable_data();
  float* dp = d_inter_a.mutable_data();
  float* al = align_a.mutable_data();
  const float* x = vision.data();
  const float* tx = has_text ? text->data() : nullptr;
  {
    py::gil_scoped_release release;
    FloatBuf s(static_cast<size_t>(n * D), 0.f), sq(static_cast<size_t>(n), 0.f);
    // unit text rows (all of them, as token_alignment) and the tokens' cosines to their
    // request's text rows, token-major per request [N_r, M_r] (tau_a times them: the logits)
    FloatBuf th(need_att ? static_cast<size_t>(M * D) : 0);
    if (need_att) {
      std::copy(tx, tx + M * D, th.data());
      normalize_rows(th.data(), M, D, static_cast<float>(eps));
    }
    FloatBuf lg(static_cast<size_t>(lg_at[R]));
    std::fill(al, al + N, 0.f);
    float* sp = s.data();
    float* sqp = sq.data();
    const float e = static_cast<float>(eps);
    const float tau = static_cast<float>(tau_a);
    std::vector<double> cost(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) cost[k] = double(cu[k + 1] - cu[k]);
    parallel_items(cost, num_threads, [&](int64_t k) {
      const int64_t a = cu[k], m = cu[k + 1] - cu[k];
      if (m == 0) return;
      const int64_t r = req[k], Mr = has_text ? to[r + 1] - to[r] : 0;
      FloatBuf u(static_cast<size_t>(std::min(m, kAttChunk) * D));  // a copy: input unchanged
      float* sk = sp + k * D;
      float sqk = 0.f;
      for (int64_t b = 0; b < m; b += kAttChunk) {
        const int64_t c = std::min(m - b, kAttChunk);
        std::copy(x + (a + b) * D, x + (a + b + c) * D, u.data());
        for (int64_t i = 0; i < c; ++i) unit_accumulate(u.data() + i * D, D, e, sk, &sqk, nullptr);
        if (Mr == 0) continue;
        float* cs = lg.data() + lg_at[r] + (a + b - cu[ro[r]]) * Mr;  // [c, Mr]
        dot_rows_multi(u.data(), c, D, th.data() + to[r] * D, Mr, cs, Mr);
        for (int64_t i = 0; i < c; ++i) {
          float* ci = cs + i * Mr;
          float v;
          if (mean) {
            v = 0.f;
            for (int64_t t = 0; t < Mr; ++t) v += ci[t];
            v /= float(Mr);
          } else {
            v = -kInf;
            for (int64_t t = 0; t < Mr; ++t) v = ci[t] > v || std::isnan(ci[t]) ? ci[t] : v;
          }
          al[a + b + i] = v;
          for (int64_t t = 0; t < Mr; ++t) ci[t] = ci[t] * tau;
        }
      }
      sqp[k] = sqk;
    });

    std::fill(mp, mp + n, 0.f);
    std::fill(ap, ap + n, 0.f);
    std::fill(dp, dp + R, 0.f);
    float* mu = mu_a.mutable_data();
    for (int64_t k = 0; k < n; ++k) {
      const float m = float(cu[k + 1] - cu[k]);
      const float pairs = m * (m - 1.f);
      const float ss = dot(sp + k * D, sp + k * D, D);
      di[k] = pairs > 0 ? 1.f - (ss - sqp[k]) / pairs : 0.f;
      const float ns = std::max(std::sqrt(ss), e);
      for (int64_t c = 0; c < D; ++c) mu[k * D + c] = sp[k * D + c] / ns;
    }
    const float sig = static_cast<float>(sigma);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t k0 = ro[r], k1 = ro[r + 1];
      int64_t nl = 0;
      float inter = 0.f;
      for (int64_t k = k0; k < k1; ++k) {
        const bool live_k = cu[k + 1] > cu[k];
        nl += live_k;
        float w = 0.f;
        for (int64_t l = k0; l < k1; ++l) {
          if (cu[l + 1] == cu[l]) continue;
          const float c = dot(mu + k * D, mu + l * D, D);
          w += std::exp(-(1.f - c) / sig);
          if (live_k && l != k) inter += 1.f - c;
        }
        mp[k] = live_k ? w : 0.f;
      }
      if (nl >= 2) dp[r] = inter / float(nl * (nl - 1));
    }
    for (int64_t r = 0; need_att && r < R; ++r) {
      const int64_t k0 = ro[r], k1 = ro[r + 1], Mr = to[r + 1] - to[r];
      if (lg_at[r + 1] == lg_at[r]) continue;
      const int64_t a = cu[k0], n_r = cu[k1] - cu[k0];
      const float* lr = lg.data() + lg_at[r];  // logits [n_r, Mr], token-major
      // softmax of every text row over the request's tokens, summed per image
      FloatBuf share(static_cast<size_t>(Mr * (k1 - k0)), 0.f);
      std::vector<double> tcost(static_cast<size_t>(Mr), 1.0);
      parallel_items(tcost, num_threads, [&](int64_t t) {
        float mx = -kInf;
        for (int64_t i = 0; i < n_r; ++i) mx = std::max(mx, lr[i * Mr + t]);
        FloatBuf ex(static_cast<size_t>(n_r));
        float z = 0.f;
        for (int64_t i = 0; i < n_r; ++i) {
          ex[i] = std::exp(lr[i * Mr + t] - mx);
          z += ex[i];
        }
        const float inv = 1.f / z;
        for (int64_t k = k0; k < k1; ++k) {
          float acc = 0.f;
          for (int64_t i = cu[k] - a; i < cu[k + 1] - a; ++i) acc += ex[i] * inv;
          share[t * (k1 - k0) + (k - k0)] = acc;
        }
      });
      for (int64_t k = k0; k < k1; ++k) {
        if (cu[k + 1] == cu[k]) continue;
        float acc = 0.f;
        for (int64_t t = 0; t < Mr; ++t) acc += share[t * (k1 - k0) + (k - k0)];
        ap[k] = acc / float(Mr);
      }
    }
  }
  return py::make_tuple(d_intra_a, mult_a, att_a, d_inter_a, mu_a, align_a);
}

}  // namespace

AP_REGISTER_OP("budget_scores", "", [](py::module_& m) {
  m.def("budget_scores", &budget_scores_py, py::arg("vision"), py::arg("cu_seqlens"),
        py::arg("req_offsets"), py::arg("text").none(true), py::arg("text_offsets").none(true),
        py::arg("sigma"), py::arg("tau_a"), py::arg("eps"), py::arg("align"), py::kw_only(),
        py::arg("num_threads"),
        "Stage 0: (d_intra [n], mult [n], att [n], d_inter [R], mu [n, D], a [N]) float32");
});

}  // namespace adaptive_prune_cpu
