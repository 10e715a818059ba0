// Per-image budgets by water-filling + largest remainder (reference.allocate_budgets).
//
// Per request: b_k = mins_k + share of (total - sum mins) proportional to weights_k, capped at
// caps_k (cap, redistribute the excess, repeat), rounded by largest remainder with ties to the
// lower image index, so that sum b_k == total. float64 arithmetic in the reference's order of
// operations (sequential sums, (left * w) / wsum), hence bitwise the same shares.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common.h"

namespace adaptive_prune_cpu {
namespace {

void allocate_one(const double* w, const int64_t* cap, const int64_t* mins, int64_t n,
                  int64_t total, int64_t* out) {
  int64_t sum_mins = 0;
  for (int64_t k = 0; k < n; ++k) sum_mins += mins[k];
  const int64_t rest = total - sum_mins;
  std::vector<int64_t> room(static_cast<size_t>(n));
  std::vector<double> share(static_cast<size_t>(n), 0.0);
  std::vector<int64_t> active;
  for (int64_t k = 0; k < n; ++k) {
    room[k] = cap[k] - mins[k];
    if (room[k] > 0 && w[k] > 0) active.push_back(k);
  }
  double left = static_cast<double>(rest);
  while (!active.empty() && left > 0) {
    double wsum = 0.0;
    for (int64_t k : active) wsum += w[k];
    std::vector<int64_t> over, keep;
    for (int64_t k : active) (left * w[k] / wsum >= double(room[k]) ? over : keep).push_back(k);
    if (over.empty()) {
      for (int64_t k : active) share[k] = left * w[k] / wsum;
      break;
    }
    for (int64_t k : over) {
      share[k] = static_cast<double>(room[k]);
      left -= static_cast<double>(room[k]);
    }
    active.swap(keep);
  }
  std::vector<int64_t> floors(static_cast<size_t>(n));
  int64_t sum_floors = 0;
  for (int64_t k = 0; k < n; ++k) {
    floors[k] = std::min(static_cast<int64_t>(std::floor(share[k] + 1e-9)), room[k]);
    sum_floors += floors[k];
  }
  const int64_t missing = rest - sum_floors;
  std::vector<int64_t> frac;
  for (int64_t k = 0; k < n; ++k)
    if (floors[k] < room[k]) frac.push_back(k);
  std::stable_sort(frac.begin(), frac.end(), [&](int64_t a, int64_t b) {
    const double fa = -(share[a] - double(floors[a])), fb = -(share[b] - double(floors[b]));
    return fa < fb;  // ties keep index order (stable)
  });
  const int64_t extra = std::min<int64_t>(std::max<int64_t>(missing, 0), frac.size());
  for (int64_t t = 0; t < extra; ++t) floors[frac[t]] += 1;
  for (int64_t k = 0; k < n; ++k) out[k] = mins[k] + floors[k];
}

at::Tensor allocate_budgets_cpu(const at::Tensor& weights, const at::Tensor& caps,
                                const at::Tensor& mins, const at::Tensor& req_offsets,
                                const at::Tensor& totals) {
  check_cpu(weights, "weights");
  TORCH_CHECK_VALUE(weights.dim() == 1, "weights must be 1-D [n], got shape ", weights.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weights.scalar_type()), "weights must be floating, got ",
                   weights.scalar_type());
  const int64_t n = weights.size(0);
  const std::vector<int64_t> cap = to_vec(caps, "caps"), mn = to_vec(mins, "mins");
  TORCH_CHECK_VALUE(static_cast<int64_t>(cap.size()) == n && static_cast<int64_t>(mn.size()) == n,
                    "caps and mins must have one entry per image (", n, ")");
  const std::vector<int64_t> ro = read_offsets(req_offsets, "req_offsets", n, "n (images)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  const std::vector<int64_t> tot = to_vec(totals, "totals");
  TORCH_CHECK_VALUE(static_cast<int64_t>(tot.size()) == R, "totals must have one entry per "
                    "request (", R, "), got ", tot.size());
  const at::Tensor wd = weights.to(at::kDouble).contiguous();
  const double* w = wd.data_ptr<double>();
  at::Tensor out = at::empty({n}, weights.options().dtype(at::kLong));
  int64_t* b = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    allocate_one(w + ro[r], cap.data() + ro[r], mn.data() + ro[r], ro[r + 1] - ro[r], tot[r],
                 b + ro[r]);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_prune_cpp, CPU, m) {
  m.impl("allocate_budgets", &allocate_budgets_cpu);
}

}  // namespace adaptive_prune_cpu
