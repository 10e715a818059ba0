// Stage 0: per-image redundancy scores from one pass over the tokens (reference.budget_scores).
//
// Returns (d_intra [n], mult [n], att [n], d_inter [R]) in fp32:
//   s_k = sum of the unit rows of image k (accumulated in token order), sq_k = sum |x_i|^2,
//   D_intra(k) = 1 - (|s_k|^2 - sq_k) / (m_k (m_k - 1)), 0 when m_k <= 1;
//   mu_k = s_k / max(|s_k|, eps), C_kl = mu_k . mu_l inside a request;
//   mult_k = sum over nonempty l of exp(-(1 - C_kl) / sigma), 0 for empty images;
//   D_inter(r) = mean of 1 - C_kl over ordered pairs of nonempty images, 0 with fewer than 2;
//   att_k = share of image k in softmax_i(tau_a cos(t, x_i)) over the request's tokens,
//           averaged over its text rows t (0 without text).
// The pass over the tokens runs in parallel over images and never materialises the unit rows.
// The attention logits tau_a * (t . x_i) / |x_i| (unit text rows t, raw tokens x_i) are the
// fixed-order `dot` of common.h, computed in parallel over fixed chunks of tokens; the softmax
// runs per text row in fp32 (max, exp, sum, times 1/sum), parallel over text rows.
#include "binding.h"

namespace adaptive_prune_cpu {
namespace {

constexpr int64_t kAttChunk = 256;  // tokens per work item of the attention logits

py::tuple budget_scores_py(const F32& vision, const I64& cu_seqlens, const I64& req_offsets,
                           const std::optional<F32>& text, const std::optional<I64>& text_offsets,
                           double sigma, double tau_a, double eps, int64_t num_threads) {
  const auto [N, D] = shape2(vision, "vision");
  const std::vector<int64_t> cu = read_offsets(cu_seqlens.data(), len1(cu_seqlens, "cu_seqlens"),
                                               "cu_seqlens", N, "N (rows of vision)");
  const int64_t n = static_cast<int64_t>(cu.size()) - 1;
  const std::vector<int64_t> ro = read_offsets(
      req_offsets.data(), len1(req_offsets, "req_offsets"), "req_offsets", n, "n (images)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  check(sigma > 0, "sigma must be > 0, got ", sigma);
  check(eps > 0, "eps must be > 0, got ", eps);
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
  bool need_att = false;
  for (int64_t r = 0; has_text && r < R; ++r)
    need_att |= to[r + 1] > to[r] && cu[ro[r + 1]] > cu[ro[r]];

  py::array_t<float> d_intra_a(n), mult_a(n), att_a(n), d_inter_a(R);
  float* di = d_intra_a.mutable_data();
  float* mp = mult_a.mutable_data();
  float* ap = att_a.mutable_data();
  float* dp = d_inter_a.mutable_data();
  const float* x = vision.data();
  const float* tx = has_text ? text->data() : nullptr;
  {
    py::gil_scoped_release release;
    FloatBuf s(static_cast<size_t>(n * D), 0.f), sq(static_cast<size_t>(n), 0.f);
    // the norms of every token, for the attention (logits t . x_i / |x_i|: no unit copy)
    FloatBuf norms(need_att ? static_cast<size_t>(N) : 0);
    float* sp = s.data();
    float* sqp = sq.data();
    float* np_ = need_att ? norms.data() : nullptr;
    const float e = static_cast<float>(eps);
    std::vector<double> cost(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) cost[k] = double(cu[k + 1] - cu[k]);
    parallel_items(cost, num_threads, [&](int64_t k) {
      const int64_t a = cu[k], m = cu[k + 1] - cu[k];
      if (m == 0) return;
      FloatBuf row(static_cast<size_t>(D));  // a copy: the input is never modified
      const float* src = x + a * D;
      float* sk = sp + k * D;
      float sqk = 0.f;
      for (int64_t i = 0; i < m; ++i) {
        std::copy(src + i * D, src + (i + 1) * D, row.data());
        unit_accumulate(row.data(), D, e, sk, &sqk, np_ ? np_ + a + i : nullptr);
      }
      sqp[k] = sqk;
    });

    std::fill(mp, mp + n, 0.f);
    std::fill(ap, ap + n, 0.f);
    std::fill(dp, dp + R, 0.f);
    FloatBuf mu(static_cast<size_t>(n * D));
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
          const float c = dot(mu.data() + k * D, mu.data() + l * D, D);
          w += std::exp(-(1.f - c) / sig);
          if (live_k && l != k) inter += 1.f - c;
        }
        mp[k] = live_k ? w : 0.f;
      }
      if (nl >= 2) dp[r] = inter / float(nl * (nl - 1));
    }
    if (need_att) {
      const float tau = static_cast<float>(tau_a);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t k0 = ro[r], k1 = ro[r + 1], Mr = to[r + 1] - to[r];
        if (Mr == 0 || cu[k1] == cu[k0]) continue;
        FloatBuf th(tx + to[r] * D, tx + to[r + 1] * D);  // unit text rows [Mr, D]
        normalize_rows(th.data(), Mr, D, e);
        const int64_t a = cu[k0], n_r = cu[k1] - cu[k0];
        // logits [n_r, Mr] = tau_a * (x_i . t) / |x_i|, token-major
        FloatBuf lg(static_cast<size_t>(n_r * Mr));
        parallel_chunks(n_r, kAttChunk, num_threads, [&](int64_t b, int64_t end) {
          dot_rows_multi(x + (a + b) * D, end - b, D, th.data(), Mr, lg.data() + b * Mr, Mr);
          for (int64_t i = b; i < end; ++i) {
            const float nrm = np_[a + i];
            for (int64_t t = 0; t < Mr; ++t) lg[i * Mr + t] = lg[i * Mr + t] / nrm * tau;
          }
        });
        // softmax of every text row over the request's tokens, summed per image
        FloatBuf share(static_cast<size_t>(Mr * (k1 - k0)), 0.f);
        std::vector<double> tcost(static_cast<size_t>(Mr), 1.0);
        parallel_items(tcost, num_threads, [&](int64_t t) {
          float mx = -kInf;
          for (int64_t i = 0; i < n_r; ++i) mx = std::max(mx, lg[i * Mr + t]);
          FloatBuf ex(static_cast<size_t>(n_r));
          float z = 0.f;
          for (int64_t i = 0; i < n_r; ++i) {
            ex[i] = std::exp(lg[i * Mr + t] - mx);
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
  }
  return py::make_tuple(d_intra_a, mult_a, att_a, d_inter_a);
}

}  // namespace

AP_REGISTER_OP("budget_scores", "", [](py::module_& m) {
  m.def("budget_scores", &budget_scores_py, py::arg("vision"), py::arg("cu_seqlens"),
        py::arg("req_offsets"), py::arg("text").none(true), py::arg("text_offsets").none(true),
        py::arg("sigma"), py::arg("tau_a"), py::arg("eps"), py::kw_only(),
        py::arg("num_threads"),
        "Stage 0: (d_intra [n], mult [n], att [n], d_inter [R]) float32");
});

}  // namespace adaptive_prune_cpu
