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
// The pass over the tokens runs in parallel over images and never materialises the unit rows
// (with text and fp16/bf16 tokens it does: the attention is one [M_r, N_r] product per request,
// taken on the raw fp32 tokens and divided by their norms otherwise).
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common.h"

namespace adaptive_prune_cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> budget_scores_cpu(
    const at::Tensor& vision, const at::Tensor& cu_seqlens, const at::Tensor& req_offsets,
    const std::optional<at::Tensor>& text, const std::optional<at::Tensor>& text_offsets,
    double sigma, double tau_a, double eps) {
  check_tokens(vision, "vision");
  const int64_t N = vision.size(0), D = vision.size(1);
  const std::vector<int64_t> cu = read_offsets(cu_seqlens, "cu_seqlens", N, "N (rows of vision)");
  const int64_t n = static_cast<int64_t>(cu.size()) - 1;
  const std::vector<int64_t> ro = read_offsets(req_offsets, "req_offsets", n, "n (images)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  TORCH_CHECK_VALUE(sigma > 0, "sigma must be > 0, got ", sigma);
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  const bool has_text = text.has_value() && text_offsets.has_value();
  std::vector<int64_t> to;
  if (has_text) {
    check_tokens(*text, "text");
    TORCH_CHECK_VALUE(text->size(1) == D, "text has width ", text->size(1), " but vision has ",
                      D);
    to = read_offsets(*text_offsets, "text_offsets", text->size(0), "M (rows of text)");
    TORCH_CHECK_VALUE(static_cast<int64_t>(to.size()) == R + 1, "text_offsets must have R + 1 = ",
                      R + 1, " entries, got ", to.size());
  }
  bool need_att = false;
  for (int64_t r = 0; has_text && r < R; ++r)
    need_att |= to[r + 1] > to[r] && cu[ro[r + 1]] > cu[ro[r]];

  const at::Tensor x = vision.contiguous();
  const auto fopt = vision.options().dtype(at::kFloat);
  at::Tensor s = at::zeros({n, D}, fopt);
  at::Tensor sq = at::zeros({n}, fopt);
  // For the attention: the norms of every token (fp32 tokens then need no unit copy: the
  // logits are t . x_i / |x_i|), or the unit rows themselves for fp16/bf16 tokens.
  const bool raw_ok = x.scalar_type() == at::kFloat;
  at::Tensor norms = need_att ? at::empty({N}, fopt) : at::Tensor();
  at::Tensor units = need_att && !raw_ok ? at::empty({N, D}, fopt) : at::Tensor();
  float* sp = s.data_ptr<float>();
  float* sqp = sq.data_ptr<float>();
  float* np_ = need_att ? norms.data_ptr<float>() : nullptr;
  const float e = static_cast<float>(eps);
  std::vector<double> cost(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) cost[k] = double(cu[k + 1] - cu[k]);
  parallel_items(cost, [&](int64_t k) {
    const int64_t a = cu[k], m = cu[k + 1] - cu[k];
    if (m == 0) return;
    // fp32 rows of the image: a per-row copy of fp32 tokens (the input is never modified), one
    // vectorised ATen conversion for fp16/bf16
    at::Tensor blk;
    if (!raw_ok) {
      blk = units.defined() ? units.narrow(0, a, m) : at::empty({m, D}, fopt);
      blk.copy_(x.narrow(0, a, m));
    }
    std::vector<float> row(static_cast<size_t>(D));
    const float* src = raw_ok ? x.data_ptr<float>() + a * D : nullptr;
    float* sk = sp + k * D;
    float sqk = 0.f;
    for (int64_t i = 0; i < m; ++i) {
      float* u = raw_ok ? row.data() : blk.data_ptr<float>() + i * D;
      if (raw_ok) std::copy(src + i * D, src + (i + 1) * D, u);
      unit_accumulate(u, D, e, sk, &sqk, np_ ? np_ + a + i : nullptr);
    }
    sqp[k] = sqk;
  });

  at::Tensor d_intra = at::empty({n}, fopt), mult = at::zeros({n}, fopt);
  at::Tensor att = at::zeros({n}, fopt), d_inter = at::zeros({R}, fopt);
  float* di = d_intra.data_ptr<float>();
  float* mp = mult.data_ptr<float>();
  float* ap = att.data_ptr<float>();
  float* dp = d_inter.data_ptr<float>();
  std::vector<float> mu(static_cast<size_t>(n * D));
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
    at::Tensor t = text->to(at::kFloat).contiguous();
    for (int64_t r = 0; r < R; ++r) {
      const int64_t k0 = ro[r], k1 = ro[r + 1];
      if (to[r + 1] == to[r] || cu[k1] == cu[k0]) continue;
      at::Tensor th = t.narrow(0, to[r], to[r + 1] - to[r]).clone();
      float* tp = th.data_ptr<float>();
      normalize_rows(tp, th.size(0), D, e);
      const int64_t a = cu[k0], n_r = cu[k1] - cu[k0];
      at::Tensor logits;  // [M_r, N_r] = tau_a * cos(t, x_i)
      if (raw_ok) {
        logits = at::mm(th, x.narrow(0, a, n_r).t());
        logits.div_(norms.narrow(0, a, n_r).unsqueeze(0)).mul_(tau_a);
      } else {
        logits = at::mm(th, units.narrow(0, a, n_r).t()).mul_(tau_a);
      }
      at::Tensor p = at::softmax(logits, -1);
      for (int64_t k = k0; k < k1; ++k) {
        if (cu[k + 1] == cu[k]) continue;
        ap[k] = p.narrow(1, cu[k] - a, cu[k + 1] - cu[k]).sum(1).mean().item<float>();
      }
    }
  }
  return {d_intra, mult, att, d_inter};
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_prune_cpp, CPU, m) { m.impl("budget_scores", &budget_scores_cpu); }

}  // namespace adaptive_prune_cpu
