// Text alignment of selected tokens (reference.token_alignment), parallel over rows.
//
// a[j] = mean (reduce="mean") or max over the request's text rows t of cos(x_i, t), i =
// rows[j], for the rows of every request with text; 0 for requests without text. fp32.
// The selected rows are gathered and normalised in fixed chunks of 256 (never one big copy)
// and multiplied with the request's unit text rows with the fixed-order `dot`, chunk by chunk
// (parallel over the chunks of all requests); mean = fp32 sum in text order / M.
#include "binding.h"

namespace adaptive_prune_cpu {
namespace {

constexpr int64_t kChunk = 256;

py::array_t<float> token_alignment_py(const F32& vision, const I64& rows, const I64& row_offsets,
                                      const F32& text, const I64& text_offsets,
                                      const std::string& reduce, double eps,
                                      int64_t num_threads) {
  const auto [N, D] = shape2(vision, "vision");
  const auto [M, Dt] = shape2(text, "text");
  check(Dt == D, "text has width ", Dt, " but vision has ", D);
  const int64_t K = len1(rows, "rows");
  const int64_t* idx = rows.data();
  check_rows(idx, K, N, "rows");
  const std::vector<int64_t> ro = read_offsets(
      row_offsets.data(), len1(row_offsets, "row_offsets"), "row_offsets", K, "K (rows)");
  const std::vector<int64_t> to =
      read_offsets(text_offsets.data(), len1(text_offsets, "text_offsets"), "text_offsets", M,
                   "M (rows of text)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  check(static_cast<int64_t>(to.size()) == R + 1, "text_offsets must have R + 1 = ", R + 1,
        " entries (one request per row_offsets segment), got ", to.size());
  check(reduce == "mean" || reduce == "max", "reduce must be 'mean' or 'max', got '", reduce,
        "'");
  check(eps > 0, "eps must be > 0, got ", eps);
  check_threads(num_threads);
  const bool mean = reduce == "mean";
  const float e = static_cast<float>(eps);
  py::array_t<float> out_a(K);
  float* op = out_a.mutable_data();
  const float* x = vision.data();
  const float* tx = text.data();
  {
    py::gil_scoped_release release;
    std::fill(op, op + K, 0.f);
    FloatBuf th(tx, tx + M * D);  // unit text rows, fp32
    normalize_rows(th.data(), M, D, e);
    // work items: fixed chunks of kChunk rows of every request with text (same products
    // whatever the thread count)
    std::vector<std::pair<int64_t, int64_t>> items;  // (request, first row)
    for (int64_t r = 0; r < R; ++r) {
      if (ro[r + 1] == ro[r] || to[r + 1] == to[r]) continue;
      for (int64_t b = ro[r]; b < ro[r + 1]; b += kChunk) items.emplace_back(r, b);
    }
    std::vector<double> cost(items.size(), 1.0);
    parallel_items(cost, num_threads, [&](int64_t it) {
      const auto [r, b] = items[it];
      const int64_t end = std::min(ro[r + 1], b + kChunk), n = end - b;
      const int64_t Mr = to[r + 1] - to[r];
      FloatBuf u(static_cast<size_t>(n * D));
      for (int64_t i = 0; i < n; ++i)
        std::copy(x + idx[b + i] * D, x + (idx[b + i] + 1) * D, u.data() + i * D);
      normalize_rows(u.data(), n, D, e);
      FloatBuf sim(static_cast<size_t>(n * Mr));  // [n, Mr]
      dot_rows_multi(u.data(), n, D, th.data() + to[r] * D, Mr, sim.data(), Mr);
      for (int64_t i = 0; i < n; ++i) {
        const float* si = sim.data() + i * Mr;
        float a;
        if (mean) {
          a = 0.f;
          for (int64_t t = 0; t < Mr; ++t) a += si[t];
          a /= float(Mr);
        } else {
          a = -kInf;
          for (int64_t t = 0; t < Mr; ++t) a = si[t] > a || std::isnan(si[t]) ? si[t] : a;
        }
        op[b + i] = a;
      }
    });
  }
  return out_a;
}

}  // namespace

AP_REGISTER_OP("token_alignment", "", [](py::module_& m) {
  m.def("token_alignment", &token_alignment_py, py::arg("vision"), py::arg("rows"),
        py::arg("row_offsets"), py::arg("text"), py::arg("text_offsets"), py::arg("reduce"),
        py::arg("eps"), py::kw_only(), py::arg("num_threads"),
        "a [K] float32: mean/max cosine of vision[rows] to the request's text rows");
});

}  // namespace adaptive_prune_cpu
