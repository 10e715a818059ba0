// Per-image budgets by water-filling + largest remainder (reference.allocate_budgets).
//
// Per request: b_k = mins_k + share of (total - sum mins) proportional to weights_k, capped at
// caps_k (cap, redistribute the excess, repeat), rounded by largest remainder with ties to the
// lower image index, so that sum b_k == total. float64 arithmetic in the reference's order of
// operations (sequential sums, (left * w) / wsum), hence bitwise the same shares.
#include "binding.h"

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

py::array_t<int64_t> allocate_budgets_py(const F64& weights, const I64& caps, const I64& mins,
                                         const I64& req_offsets, const I64& totals,
                                         int64_t num_threads) {
  check_threads(num_threads);
  const int64_t n = len1(weights, "weights");
  check(len1(caps, "caps") == n && len1(mins, "mins") == n,
        "caps and mins must have one entry per image (", n, ")");
  const std::vector<int64_t> ro = read_offsets(
      req_offsets.data(), len1(req_offsets, "req_offsets"), "req_offsets", n, "n (images)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  const int64_t nt = len1(totals, "totals");
  check(nt == R, "totals must have one entry per request (", R, "), got ", nt);
  py::array_t<int64_t> out(n);
  int64_t* b = out.mutable_data();
  const double* w = weights.data();
  const int64_t* cap = caps.data();
  const int64_t* mn = mins.data();
  const int64_t* tot = totals.data();
  {
    py::gil_scoped_release release;
    for (int64_t r = 0; r < R; ++r)
      allocate_one(w + ro[r], cap + ro[r], mn + ro[r], ro[r + 1] - ro[r], tot[r], b + ro[r]);
  }
  return out;
}

}  // namespace

AP_REGISTER_OP("allocate_budgets", "", [](py::module_& m) {
  m.def("allocate_budgets", &allocate_budgets_py, py::arg("weights"), py::arg("caps"),
        py::arg("mins"), py::arg("req_offsets"), py::arg("totals"), py::kw_only(),
        py::arg("num_threads"), "Per-image budgets b [n] int64 (float64 water-filling)");
});

}  // namespace adaptive_prune_cpu
