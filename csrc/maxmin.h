// Exact max-min (farthest-point) greedy on cosine distance, with exact pruning.
//
// The greedy keeps, for every row i, acc[i] = min over picked rows j of d(i, j), with
// d(i, j) = 1 - x_i . x_j on unit rows, and picks argmax_i acc[i] (ties to the lower index).
// Picking j needs d(i, j) only for the rows where d(i, j) < acc[i]; on real tokens that is a
// few rows per pick (near neighbours of j), so computing the whole row of j is wasted work.
// Two exact tests skip the rest; both only ever skip rows whose acc provably cannot change.
// The pick is the band rule of common.h: M = max acc over the unpicked rows, then the lowest
// row index with acc >= M - kPickTie (the leaves hold their max; only leaves whose max reaches
// the band are scanned).
//
// Projection: Q [dp, D] has orthonormal rows (an orthonormalised random sketch of the rows,
// a randomised range finder), p_i = Q x_i and e_i = x_i - Q^T p_i (|e_i| = sqrt(|x_i|^2 -
// |p_i|^2)).
//
// 1. Row test: x_i . x_j = p_i . p_j + e_i . e_j <= p_i . p_j + |e_i| |e_j| =: ub(i, j), so
//    d(i, j) >= 1 - ub(i, j); row i is refined (d(i, j) computed in full with `dot`) only when
//    1 - ub(i, j) - margin < acc[i].
// 2. Leaf test: rows are grouped into leaves of <= 64 rows that are close in projection space
//    (a k-d split of the p_i). Q is a contraction, so |x_i - x_j| >= |p_i - p_j| >= |p_j -
//    c_b| - rho_b for every row i of leaf b (centre c_b, radius rho_b), and d = |x_i - x_j|^2 / 2
//    on unit rows. A leaf whose lower bound is at least its largest acc (minus the margin) is
//    skipped whole: the work per pick follows the rows near the pick, not the pool size.
//
// Where the tests let most rows through (near-isotropic data: all distances alike), the
// engine drops them after a window of 64 picks and continues dense.
//
// The margin (1e-4 on the cosine scale) and an inflation of |e_i| and rho_b absorb the fp32
// rounding of p, Q and of the bounds. The quality of Q only changes how many rows are refined,
// never the result: the pruned greedy produces bitwise the same acc, picks and gains as the
// dense one (dp = 0), because both compute every distance they use with the same `dot`.
#pragma once

#include "common.h"

namespace adaptive_prune_cpu {

constexpr int64_t kMaxProjDim = 64;

// Projection size used when the caller asks for "auto" (-1): dense (0) when there are too few
// picks or rows to repay the sketch, else 16 dims, 32 for large runs (picks x rows >= 4e6).
// Measured on real tokens (16 x 576, every pool row picked): 16 best at D = 1024 (16/24/32/48:
// 159/156/167/190 ms), 32 at D = 3584 (505/402/390/391 ms); more dims refine fewer rows but
// cost more per row test.
int64_t choose_proj_dim(int64_t proj_dim, int64_t m, int64_t picks, int64_t D);

class MaxMin {
 public:
  // X: [m, D] unit rows in fp32, contiguous, alive while the object is used. dp = 0: dense
  // (every unpicked row is refined at every pick); dp > 0: projection tests with dp dims.
  MaxMin(const float* X, int64_t m, int64_t D, int64_t dp);

  // Marks row j picked, lowers acc by its distances and returns the next pick (argmax()), or
  // -1 when every row is picked. Indices are rows of X.
  int64_t pick(int64_t j);

  // Marks row j picked and lowers acc by its distances (no argmax).
  void take(int64_t j);

  // Marks all rows js picked at once (same acc as picking them one by one: min is exact) and
  // returns the next pick like pick.
  int64_t pick_many(const std::vector<int64_t>& js);

  // The band rule: first_at_least(max_acc() - kPickTie), -1 if every row is picked.
  int64_t argmax() const;

  // Largest acc over the unpicked rows (-inf if none).
  float max_acc() const;

  // Lowest row index among the unpicked rows with acc >= thr, -1 if none.
  int64_t first_at_least(float thr) const;

  float acc(int64_t i) const { return acc_[inv_[i]]; }
  int64_t refined() const { return refined_; }

 private:
  void build_projection();
  void build_leaves();
  void leaf_max(int64_t b);  // recomputes amax_[b]
  void to_dense();           // drops the tests (and the leaf order) for the rest of the run

  const float* X_;
  int64_t m_, D_, dp_;
  // everything below is in leaf order: position l holds row perm_[l] of X
  std::vector<int64_t> perm_, inv_;
  FloatBuf acc_;  // +inf before the first pick, -inf once picked
  FloatBuf pT_;   // [dp, m] projections, transposed
  FloatBuf r_;    // [m] inflated residual norms |e_i|
  std::vector<int64_t> leaf_;   // [nb + 1] leaf boundaries
  FloatBuf centre_;   // [nb, dp]
  FloatBuf radius_;   // [nb] (+inf in dense mode: never skipped)
  FloatBuf amax_;     // [nb] largest acc of the leaf
  int64_t refined_ = 0;
  int64_t window_picks_ = 0, window_refined_ = 0, window_tested_ = 0;
};

}  // namespace adaptive_prune_cpu
