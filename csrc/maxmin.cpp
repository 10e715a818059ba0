// Max-min greedy engine (see maxmin.h for the maths of the exact pruning).
#include "maxmin.h"

namespace adaptive_prune_cpu {
namespace {

// Slack of both tests, on the cosine-distance scale: covers the fp32 rounding of p (a GEMM
// over D), of the orthonormality of Q, of the unit norms and of the bounds themselves; skipped
// rows are at least this much farther than their acc.
constexpr float kMargin = 1e-4f;
// Added to |e_i|^2 = |x_i|^2 - |p_i|^2 before the square root: the rounding of this difference
// can only inflate |e_i|.
constexpr float kResidualFloor = 1e-4f;
constexpr int64_t kLeaf = 64;
constexpr int64_t kWindow = 64;  // picks between two checks of the tests' pass rate

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// max of a[0:n): 16 independent lanes (an element-wise max vectorises without fast-math),
// then the lanes; any order gives the same maximum
AP_INLINE float block_max(const float* __restrict a, int64_t n) {
  float mx[16];
  for (int l = 0; l < 16; ++l) mx[l] = -kInf;
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    for (int l = 0; l < 16; ++l) mx[l] = a[k + l] > mx[l] ? a[k + l] : mx[l];
  for (int l = 0; k + l < n; ++l) mx[l] = a[k + l] > mx[l] ? a[k + l] : mx[l];
  float bm = -kInf;
  for (int l = 0; l < 16; ++l) bm = mx[l] > bm ? mx[l] : bm;
  return bm;
}

// One leaf (positions [s, s + n)) against pick j: the row test, then exact distances for the
// rows that pass it. dp == 0: every unpicked row is refined. Returns the rows refined.
AP_HOT int64_t visit_leaf(const float* __restrict X, int64_t D, const int64_t* __restrict perm,
                          const float* __restrict xj, float* __restrict acc, int64_t s,
                          int64_t n, int64_t m, const float* __restrict pT, int64_t dp,
                          const float* __restrict pj, const float* __restrict r, float rj) {
  float* __restrict a = acc + s;
  int64_t cnt = 0;
  if (dp == 0) {
    for (int64_t l = 0; l < n; ++l) {
      if (a[l] > -kInf) {
        const float d = 1.f - dot(X + perm[s + l] * D, xj, D);
        a[l] = d < a[l] ? d : a[l];
        ++cnt;
      }
    }
    return cnt;
  }
  const float thr = 1.f - kMargin;  // refine iff acc + ub > 1 - margin
  float ub[kLeaf];
  for (int64_t l = 0; l < n; ++l) ub[l] = r[s + l] * rj;
  for (int64_t c = 0; c < dp; ++c) {
    const float* __restrict row = pT + c * m + s;
    const float pc = pj[c];
    for (int64_t l = 0; l < n; ++l) ub[l] += row[l] * pc;
  }
  int any = 0;
  for (int64_t l = 0; l < n; ++l) any |= (a[l] + ub[l] > thr);
  if (!any) return 0;
  for (int64_t l = 0; l < n; ++l) {
    if (a[l] + ub[l] > thr) {
      const float d = 1.f - dot(X + perm[s + l] * D, xj, D);
      if (d < a[l]) a[l] = d;
      ++cnt;
    }
  }
  return cnt;
}

// Several picks at once: every unpicked row of [s, s + n) gets the min over all of them,
// reading the row once.
AP_HOT int64_t visit_leaf_many(const float* __restrict X, int64_t D,
                               const int64_t* __restrict perm, const float* const* xs,
                               int64_t nj, float* __restrict acc, int64_t s, int64_t n) {
  int64_t cnt = 0;
  for (int64_t l = s; l < s + n; ++l) {
    float a = acc[l];
    if (!(a > -kInf)) continue;
    const float* xi = X + perm[l] * D;
    for (int64_t t = 0; t < nj; ++t) {
      const float d = 1.f - dot(xi, xs[t], D);
      a = d < a ? d : a;
    }
    acc[l] = a;
    cnt += nj;
  }
  return cnt;
}

// lower bound of |p_j - c| - rho for a leaf, in projection space
AP_HOT float leaf_gap(const float* __restrict pj, const float* __restrict centre, int64_t dp,
                      float radius) {
  float s2 = 0.f;
  for (int64_t c = 0; c < dp; ++c) {
    const float t = pj[c] - centre[c];
    s2 += t * t;
  }
  return std::sqrt(s2) - radius;
}

// k-d split of positions [s, e) of perm on the projections p [dp, m] (original row order):
// halves along the axis of largest spread until a range holds at most kLeaf rows.
void kd_split(std::vector<int64_t>& perm, int64_t s, int64_t e, const float* p, int64_t dp,
              int64_t m, std::vector<int64_t>& bounds) {
  if (e - s <= kLeaf) {
    bounds.push_back(e);
    return;
  }
  int64_t axis = 0;
  float spread = -1.f;
  for (int64_t c = 0; c < dp; ++c) {
    float lo = kInf, hi = -kInf;
    for (int64_t l = s; l < e; ++l) {
      const float v = p[c * m + perm[l]];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    if (hi - lo > spread) {
      spread = hi - lo;
      axis = c;
    }
  }
  const float* key = p + axis * m;
  std::sort(perm.begin() + s, perm.begin() + e, [key](int64_t a, int64_t b) {
    return key[a] != key[b] ? key[a] < key[b] : a < b;
  });
  const int64_t h = s + (e - s) / 2;
  kd_split(perm, s, h, p, dp, m, bounds);
  kd_split(perm, h, e, p, dp, m, bounds);
}

}  // namespace

int64_t choose_proj_dim(int64_t proj_dim, int64_t m, int64_t picks, int64_t D) {
  if (proj_dim == 0) return 0;
  if (proj_dim > 0) return std::min({proj_dim, D, kMaxProjDim});
  if (picks <= 16 || m <= 64) return 0;
  // large runs take a sharper (bigger) sketch: wide rows make each refined distance dear, and
  // on one 60,000-token image of tiled real tokens (D = 1024) 16 dims let most rows through
  // (global_greedy 83 s, dense after the first windows) where 32 skipped them (2.7 s)
  const bool large = static_cast<double>(picks) * static_cast<double>(m) >= 4.0e6;
  return std::min<int64_t>(large ? 32 : 16, D);
}

MaxMin::MaxMin(const float* X, int64_t m, int64_t D, int64_t dp)
    : X_(X), m_(m), D_(D), dp_(std::min<int64_t>(std::max<int64_t>(dp, 0), kMaxProjDim)) {
  if (m_ == 0) dp_ = 0;
  perm_.resize(static_cast<size_t>(m_));
  std::iota(perm_.begin(), perm_.end(), 0);
  acc_.assign(static_cast<size_t>(m_), kInf);
  if (dp_ > 0) build_projection();
  build_leaves();
  inv_.resize(static_cast<size_t>(m_));
  for (int64_t l = 0; l < m_; ++l) inv_[perm_[l]] = l;
}

void MaxMin::build_projection() {
  // Sketch Z = G X with G [dp, m] random signs (fixed seed: reproducible; another sketch would
  // change the speed, not the result), then orthonormal rows by Gram-Schmidt applied twice
  // (CGS2). Rows numerically in the span of the previous ones become zero, which keeps Q^T Q
  // a projector.
  FloatBuf g(static_cast<size_t>(dp_ * m_));
  for (int64_t c = 0; c < dp_; ++c)
    for (int64_t i = 0; i < m_; ++i)
      g[c * m_ + i] = (splitmix64(static_cast<uint64_t>(c * m_ + i)) >> 63) ? 1.f : -1.f;
  FloatBuf q(static_cast<size_t>(dp_ * D_));  // [dp, D]
  sign_sketch(X_, m_, D_, g.data(), dp_, q.data());
  float* qp = q.data();
  for (int64_t c = 0; c < dp_; ++c) {
    float* v = qp + c * D_;
    const float n0 = std::sqrt(dot(v, v, D_));
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t c2 = 0; c2 < c; ++c2) {
        const float* u = qp + c2 * D_;
        const float h = dot(u, v, D_);
        for (int64_t k = 0; k < D_; ++k) v[k] -= h * u[k];
      }
    }
    const float n1 = std::sqrt(dot(v, v, D_));
    if (!(n1 > 1e-3f * n0) || !(n1 > 0.f)) {
      std::fill(v, v + D_, 0.f);
      continue;
    }
    for (int64_t k = 0; k < D_; ++k) v[k] /= n1;
  }
  // p_i = Q x_i for every row, then transposed to [dp, m] (original row order)
  FloatBuf p(static_cast<size_t>(m_ * dp_));
  dot_rows_multi(X_, m_, D_, qp, dp_, p.data(), dp_);
  pT_.resize(static_cast<size_t>(dp_ * m_));
  for (int64_t i = 0; i < m_; ++i)
    for (int64_t c = 0; c < dp_; ++c) pT_[c * m_ + i] = p[i * dp_ + c];
  r_.resize(static_cast<size_t>(m_));
  for (int64_t i = 0; i < m_; ++i) {
    double p2 = 0.0;
    for (int64_t c = 0; c < dp_; ++c) p2 += double(pT_[c * m_ + i]) * double(pT_[c * m_ + i]);
    const double x2 = dot(X_ + i * D_, X_ + i * D_, D_);
    r_[i] = static_cast<float>(std::sqrt(std::max(x2 - p2, 0.0) + kResidualFloor));
  }
}

void MaxMin::build_leaves() {
  leaf_.assign(1, 0);
  if (dp_ > 0) {
    kd_split(perm_, 0, m_, pT_.data(), dp_, m_, leaf_);
    // projections and residuals in leaf order
    FloatBuf pl(pT_.size()), rl(r_.size());
    for (int64_t c = 0; c < dp_; ++c)
      for (int64_t l = 0; l < m_; ++l) pl[c * m_ + l] = pT_[c * m_ + perm_[l]];
    for (int64_t l = 0; l < m_; ++l) rl[l] = r_[perm_[l]];
    pT_.swap(pl);
    r_.swap(rl);
  } else {
    for (int64_t s = kLeaf; s < m_; s += kLeaf) leaf_.push_back(s);
    if (m_ > 0) leaf_.push_back(m_);
  }
  const int64_t nb = static_cast<int64_t>(leaf_.size()) - 1;
  centre_.assign(static_cast<size_t>(nb * dp_), 0.f);
  radius_.assign(static_cast<size_t>(nb), kInf);
  amax_.assign(static_cast<size_t>(nb), m_ > 0 ? kInf : -kInf);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t s = leaf_[b], e = leaf_[b + 1];
    if (dp_ == 0) continue;
    float* cb = centre_.data() + b * dp_;
    for (int64_t c = 0; c < dp_; ++c) {
      double sum = 0.0;
      for (int64_t l = s; l < e; ++l) sum += pT_[c * m_ + l];
      cb[c] = static_cast<float>(sum / double(e - s));
    }
    double rad = 0.0;
    for (int64_t l = s; l < e; ++l) {
      double d2 = 0.0;
      for (int64_t c = 0; c < dp_; ++c) {
        const double t = double(pT_[c * m_ + l]) - double(cb[c]);
        d2 += t * t;
      }
      rad = std::max(rad, d2);
    }
    radius_[b] = static_cast<float>(std::sqrt(rad) * (1.0 + 1e-5) + 1e-5);
  }
}

void MaxMin::leaf_max(int64_t b) {
  amax_[b] = block_max(acc_.data() + leaf_[b], leaf_[b + 1] - leaf_[b]);
}

float MaxMin::max_acc() const {
  float best = -kInf;
  for (const float v : amax_) best = v > best ? v : best;
  return best;
}

int64_t MaxMin::first_at_least(float thr) const {
  // only leaves whose max reaches thr hold candidates; picked rows are -inf (< any thr here)
  const int64_t nb = static_cast<int64_t>(amax_.size());
  int64_t best = -1;
  for (int64_t b = 0; b < nb; ++b) {
    if (!(amax_[b] >= thr) || !(amax_[b] > -kInf)) continue;
    for (int64_t l = leaf_[b]; l < leaf_[b + 1]; ++l)
      if (acc_[l] >= thr && acc_[l] > -kInf && (best < 0 || perm_[l] < best)) best = perm_[l];
  }
  return best;
}

int64_t MaxMin::argmax() const {
  const float top = max_acc();
  if (!(top > -kInf)) return -1;
  return first_at_least(top - kPickTie);
}

int64_t MaxMin::pick(int64_t j) {
  take(j);
  return argmax();
}

void MaxMin::take(int64_t j) {
  const int64_t jl = inv_[j];
  acc_[jl] = -kInf;
  const float* xj = X_ + j * D_;
  const int64_t nb = static_cast<int64_t>(leaf_.size()) - 1;
  float pj[kMaxProjDim];
  for (int64_t c = 0; c < dp_; ++c) pj[c] = pT_[c * m_ + jl];
  const float rj = dp_ > 0 ? r_[jl] : 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    if (!(amax_[b] > -kInf)) continue;
    const int64_t s = leaf_[b], e = leaf_[b + 1];
    const bool holds_j = s <= jl && jl < e;
    if (dp_ > 0 && !holds_j) {
      const float gap = leaf_gap(pj, centre_.data() + b * dp_, dp_, radius_[b]);
      if (gap > 0.f && 0.5f * gap * gap - kMargin >= amax_[b]) continue;
    }
    const int64_t got = visit_leaf(X_, D_, perm_.data(), xj, acc_.data(), s, e - s, m_,
                                   pT_.data(), dp_, pj, r_.data(), rj);
    refined_ += got;
    window_refined_ += got;
    window_tested_ += e - s;
    leaf_max(b);
  }
  // Fallback: where the tests let most rows through (near-isotropic data, whose distances are
  // all alike), they cost more than they save; continue dense (same result, see maxmin.h).
  if (dp_ > 0 && ++window_picks_ == kWindow) {
    if (2 * window_refined_ > window_tested_) to_dense();
    window_picks_ = window_refined_ = window_tested_ = 0;
  }
}

void MaxMin::to_dense() {
  // back to row order and consecutive leaves: dense passes then stream through X
  FloatBuf acc(static_cast<size_t>(m_));
  for (int64_t l = 0; l < m_; ++l) acc[perm_[l]] = acc_[l];
  acc_.swap(acc);
  std::iota(perm_.begin(), perm_.end(), 0);
  std::iota(inv_.begin(), inv_.end(), 0);
  dp_ = 0;
  pT_.clear();
  r_.clear();
  build_leaves();
  for (int64_t b = 0; b + 1 < static_cast<int64_t>(leaf_.size()); ++b) leaf_max(b);
}

int64_t MaxMin::pick_many(const std::vector<int64_t>& js) {
  std::vector<const float*> xs;
  for (int64_t j : js) {
    acc_[inv_[j]] = -kInf;
    xs.push_back(X_ + j * D_);
  }
  const int64_t nb = static_cast<int64_t>(leaf_.size()) - 1;
  for (int64_t b = 0; b < nb; ++b) {
    refined_ += visit_leaf_many(X_, D_, perm_.data(), xs.data(),
                                static_cast<int64_t>(xs.size()), acc_.data(), leaf_[b],
                                leaf_[b + 1] - leaf_[b]);
    leaf_max(b);
  }
  return argmax();
}

}  // namespace adaptive_prune_cpu
