// Adagrad's sparse step on the touched rows, in one pass: for each row r of `rows` (sorted)
// with gradient row g,
//     G[r] += g * g;   w[r] += alpha * g / (sqrt(G[r]) + eps)      (alpha = -lr at the step)
// the float operations of nlp_adagrad/optim/adagrad.py's torch ops (index_select, addcmul_,
// index_copy_, sqrt_, add_, div, add_ with alpha) in the same order: torch's vectorised
// addcmul_ and add with alpha are fused multiply-adds, and so are those two lines here;
// nothing else may be contracted (built with -ffp-contract=off). One difference: this sqrt is
// IEEE's, correctly rounded; torch's vectorised sqrt_ is off by an ulp in ~0.6% of floats on
// AVX-512, so the two steps agree to ~1e-7 relative, not bit for bit (tested to 1e-6).
//
// A zero-padded gradient (classification's bags) repeats a row id after its real entry with
// zero rows; only a row's first position is applied, as the torch step's index_copy_ does.
// Rows are split over torch's threads; each row is one thread's, so threads never change bits.
#include "rows.h"

#include <cmath>

void adagrad_rows_(torch::Tensor weight, torch::Tensor sum, torch::Tensor rows,
                   torch::Tensor values, double alpha, double eps) {
  TORCH_CHECK(weight.is_contiguous() && sum.is_contiguous() && values.is_contiguous() &&
                  weight.scalar_type() == torch::kFloat32 && sum.sizes() == weight.sizes() &&
                  values.scalar_type() == torch::kFloat32 && rows.scalar_type() == torch::kInt64,
              "adagrad_rows_: contiguous float32 weight, sum and values, int64 rows, on the CPU");
  const int64_t n = rows.numel(), dim = n ? values.numel() / n : 0;
  float* w = weight.data_ptr<float>();
  float* G = sum.data_ptr<float>();
  const float* g = values.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const float a = (float)alpha, e = (float)eps;
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + rows::kAhead < end) {  // scattered rows: ask for later ones early
        __builtin_prefetch(w + r[i + rows::kAhead] * dim, 1);
        __builtin_prefetch(G + r[i + rows::kAhead] * dim, 1);
      }
      if (i > 0 && r[i] == r[i - 1]) continue;  // a zero-padded repeat
      float* __restrict wr = w + r[i] * dim;
      float* __restrict Gr = G + r[i] * dim;
      const float* __restrict gi = g + i * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const float total = std::fma(gi[j], gi[j], Gr[j]);
        Gr[j] = total;
        const float step = gi[j] / (std::sqrt(total) + e);
        wr[j] = std::fma(step, a, wr[j]);
      }
    }
  });
}

// The per-row counters telemetry reads (nlp_adagrad/optim/base.py), for the rows a sparse step
// touched: updates[r] += 1 and last_step[r] = step, once per distinct row (a zero-padded
// gradient repeats a row right after its real entry). Three torch calls in one.
void count_rows_(torch::Tensor updates, torch::Tensor last_step, torch::Tensor rows,
                 int64_t step) {
  TORCH_CHECK(updates.scalar_type() == torch::kInt32 && last_step.scalar_type() == torch::kInt32 &&
                  rows.scalar_type() == torch::kInt64 && updates.is_contiguous() &&
                  last_step.is_contiguous(),
              "count_rows_: contiguous int32 counters and int64 rows on the CPU");
  int32_t* u = updates.data_ptr<int32_t>();
  int32_t* last = last_step.data_ptr<int32_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0, n = rows.numel(); i < n; ++i) {
    if (i + rows::kAhead < n) {
      __builtin_prefetch(u + r[i + rows::kAhead], 1);
      __builtin_prefetch(last + r[i + rows::kAhead], 1);
    }
    if (i > 0 && r[i] == r[i - 1]) continue;
    u[r[i]] += 1;
    last[r[i]] = (int32_t)step;
  }
}
