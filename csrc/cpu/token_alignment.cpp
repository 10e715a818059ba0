// Text alignment of selected tokens (reference.token_alignment), parallel over rows.
//
// a[j] = mean (reduce="mean") or max over the request's text rows t of cos(x_i, t), i =
// rows[j], for the rows of every request with text; 0 for requests without text. fp32.
// The selected rows are gathered and normalised in fixed chunks of 256 (never one big copy)
// and multiplied with the request's unit text rows by ATen (BLAS), chunk by chunk.
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common.h"

namespace adaptive_prune_cpu {
namespace {

constexpr int64_t kChunk = 256;

at::Tensor token_alignment_cpu(const at::Tensor& vision, const at::Tensor& rows,
                               const at::Tensor& row_offsets, const at::Tensor& text,
                               const at::Tensor& text_offsets, c10::string_view reduce,
                               double eps) {
  check_tokens(vision, "vision");
  check_tokens(text, "text");
  const int64_t N = vision.size(0), D = vision.size(1);
  TORCH_CHECK_VALUE(text.size(1) == D, "text has width ", text.size(1), " but vision has ", D);
  const std::vector<int64_t> idx = to_vec(rows, "rows");
  const int64_t K = static_cast<int64_t>(idx.size());
  for (int64_t i = 0; i < K; ++i)
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < N, "rows[", i, "] = ", idx[i],
                      " is not a row of vision (N = ", N, ")");
  const std::vector<int64_t> ro = read_offsets(row_offsets, "row_offsets", K, "K (rows)");
  const std::vector<int64_t> to =
      read_offsets(text_offsets, "text_offsets", text.size(0), "M (rows of text)");
  const int64_t R = static_cast<int64_t>(ro.size()) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(to.size()) == R + 1, "text_offsets must have R + 1 = ",
                    R + 1, " entries (one request per row_offsets segment), got ", to.size());
  TORCH_CHECK_VALUE(reduce == "mean" || reduce == "max", "reduce must be 'mean' or 'max', got '",
                    std::string(reduce), "'");
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  const bool mean = reduce == "mean";
  const float e = static_cast<float>(eps);

  // unit text rows, fp32
  at::Tensor th = at::empty({text.size(0), D}, vision.options().dtype(at::kFloat));
  th.copy_(text);
  float* tp = th.data_ptr<float>();
  normalize_rows(tp, th.size(0), D, e);

  at::Tensor out = at::zeros({K}, vision.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  const at::Tensor idx_t = at::empty({K}, vision.options().dtype(at::kLong));
  std::copy(idx.begin(), idx.end(), idx_t.data_ptr<int64_t>());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t k0 = ro[r], k1 = ro[r + 1], M = to[r + 1] - to[r];
    if (k1 == k0 || M == 0) continue;
    const at::Tensor tt = th.narrow(0, to[r], M).t();  // [D, M]
    // fixed chunks of kChunk rows, each gathered, normalised and multiplied on its own: the
    // same products whatever the thread count
    const int64_t chunks = (k1 - k0 + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t b = k0 + c * kChunk, end = std::min(k1, b + kChunk);
        at::Tensor u = vision.index_select(0, idx_t.narrow(0, b, end - b));
        u = u.scalar_type() == at::kFloat ? u.contiguous() : u.to(at::kFloat).contiguous();
        normalize_rows(u.data_ptr<float>(), end - b, D, e);
        const at::Tensor sim = at::mm(u, tt);  // [rows, M]
        const at::Tensor a = mean ? sim.mean(1) : std::get<0>(sim.max(1));
        std::copy(a.data_ptr<float>(), a.data_ptr<float>() + (end - b), op + b);
      }
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_prune_cpp, CPU, m) {
  m.impl("token_alignment", &token_alignment_cpu);
}

}  // namespace adaptive_prune_cpu
