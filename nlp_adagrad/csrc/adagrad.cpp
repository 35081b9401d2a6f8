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
#include "adagrad.h"

#include "rows.h"

#include <atomic>
#include <cmath>

namespace adagrad {

void step_rows(float* w, float* G, const int64_t* r, int64_t n, int64_t dim, const float* g,
               float a, float e, int32_t* updates, int32_t* last_step, int64_t step,
               int64_t* fresh, int64_t fresh_limit) {
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)),
                   [&](int64_t begin, int64_t end) {
    int64_t first_updates = 0;
    for (int64_t i = begin; i < end; ++i) {
      if (i + rows::kAhead < end) {  // scattered rows: ask for later ones early
        const int64_t later = r[i + rows::kAhead];
        __builtin_prefetch(w + later * dim, 1);
        __builtin_prefetch(G + later * dim, 1);
        if (updates) __builtin_prefetch(updates + later, 1), __builtin_prefetch(last_step + later, 1);
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
      if (updates) {
        first_updates += updates[r[i]] == 0 && r[i] < fresh_limit;
        updates[r[i]] += 1, last_step[r[i]] = (int32_t)step;
      }
    }
    if (fresh != nullptr && first_updates)  // an integer sum: the same for any thread split
      std::atomic_ref<int64_t>(*fresh).fetch_add(first_updates);
  });
}

int64_t count_rows(int32_t* u, int32_t* last, const int64_t* r, int64_t n, int64_t step,
                   int64_t fresh_limit) {
  int64_t first_updates = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i + rows::kAhead < n) {
      __builtin_prefetch(u + r[i + rows::kAhead], 1);
      __builtin_prefetch(last + r[i + rows::kAhead], 1);
    }
    if (i > 0 && r[i] == r[i - 1]) continue;
    first_updates += u[r[i]] == 0 && r[i] < fresh_limit;
    u[r[i]] += 1;
    last[r[i]] = (int32_t)step;
  }
  return first_updates;
}

}  // namespace adagrad

void adagrad_rows_(torch::Tensor weight, torch::Tensor sum, torch::Tensor rows,
                   torch::Tensor values, double alpha, double eps) {
  TORCH_CHECK(weight.is_contiguous() && sum.is_contiguous() && values.is_contiguous() &&
                  weight.scalar_type() == torch::kFloat32 && sum.sizes() == weight.sizes() &&
                  values.scalar_type() == torch::kFloat32 && rows.scalar_type() == torch::kInt64,
              "adagrad_rows_: contiguous float32 weight, sum and values, int64 rows, on the CPU");
  const int64_t n = rows.numel(), dim = n ? values.numel() / n : 0;
  adagrad::step_rows(weight.data_ptr<float>(), sum.data_ptr<float>(), rows.data_ptr<int64_t>(),
                     n, dim, values.data_ptr<float>(), (float)alpha, (float)eps);
}

// The per-row counters telemetry reads (nlp_adagrad/optim/base.py), for the rows a sparse step
// touched (a zero-padded gradient repeats a row right after its real entry). Three torch
// calls in one. Returns the rows below `fresh_limit` updated for the first time.
int64_t count_rows_(torch::Tensor updates, torch::Tensor last_step, torch::Tensor rows,
                    int64_t step, int64_t fresh_limit) {
  TORCH_CHECK(updates.scalar_type() == torch::kInt32 && last_step.scalar_type() == torch::kInt32 &&
                  rows.scalar_type() == torch::kInt64 && updates.is_contiguous() &&
                  last_step.is_contiguous(),
              "count_rows_: contiguous int32 counters and int64 rows on the CPU");
  return adagrad::count_rows(updates.data_ptr<int32_t>(), last_step.data_ptr<int32_t>(),
                             rows.data_ptr<int64_t>(), rows.numel(), step, fresh_limit);
}

namespace adagrad {

constexpr int64_t kReadGrain = 1024;  // rows a thread reads at least

// Telemetry's read of rows `ids` (nlp_adagrad/optim/base.py: rate_per_row, rate_per_coordinate),
// one pass instead of ~14 torch calls. scale = lr / (1 + (last - 1) * lr_decay) at the row's
// last update (lr when lr_decay is 0), then scale / (sqrt(mean_j G) + eps) per row, or scale /
// (sqrt(G_j) + eps) per coordinate, in float64. NaN for rows never updated and where the
// second moment is 0. The row mean is summed in double, torch's in float32, and the division
// is IEEE's (torch's `float / tensor` is a vectorised reciprocal, an ulp off at times): the
// rates agree with torch's to ~1e-7 relative (tested to 1e-6).
void read_rates(const float* G, const int32_t* u, const int32_t* last, int64_t num_rows,
                int64_t dim, const int64_t* r, int64_t n, double lr, double lr_decay, double eps,
                bool per_coordinate, double* rate, int32_t* count, const double* before_rate,
                const int32_t* before_count) {
  const double nan = std::nan("");
  // A row's rate is a function of its sum, its count and its last step, and a step that
  // changes the first or the last adds to the count: a row whose count has not moved since
  // `before` has that read's rate, bit for bit, without its sum's row. Between two snapshots
  // most sampled rows are rare tokens' and untouched, and their sums were most of a read's
  // memory traffic (a cache line a row, out of cache; the counts are 4 bytes a row).
  const bool known = before_count != nullptr && !per_coordinate;
  auto in_range = [&](int64_t i) { return r[i] >= 0 && r[i] < num_rows; };
  // split over torch's threads as the step's rows are (each row's rate is its own): a
  // snapshot read inside a chunk of steps had one thread wait on ~5,000 scattered rows while
  // the other idled
  at::parallel_for(0, n, kReadGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      TORCH_CHECK(in_range(i), "adagrad_rates: row id ", r[i], " out of range");
      // a snapshot finds the state out of cache: the counts asked for 2 x kAhead rows ahead,
      // a row's sum (and last step, with decay) kAhead ahead where its count says it is needed
      if (i + 2 * rows::kAhead < end && in_range(i + 2 * rows::kAhead))
        __builtin_prefetch(u + r[i + 2 * rows::kAhead]);
      if (i + rows::kAhead < end && in_range(i + rows::kAhead)) {
        const int64_t ahead = i + rows::kAhead, later = r[ahead];
        if (!known || u[later] != before_count[ahead]) {
          __builtin_prefetch(G + later * dim);
          if (lr_decay) __builtin_prefetch(last + later);  // no decay: the rate needs no step
        }
      }
      const int32_t updates = u[r[i]];
      if (count != nullptr) count[i] = updates;
      if (known && updates == before_count[i]) {
        rate[i] = before_rate[i];
        continue;
      }
      const double scale = lr_decay ? lr / (1 + ((double)last[r[i]] - 1) * lr_decay) : lr;
      const float* Gr = G + r[i] * dim;
      if (per_coordinate) {
        for (int64_t j = 0; j < dim; ++j)
          rate[i * dim + j] =
              updates == 0 || Gr[j] == 0 ? nan : scale / (std::sqrt((double)Gr[j]) + eps);
        continue;
      }
      double total = 0;
      for (int64_t j = 0; j < dim; ++j) total += Gr[j];
      const double mean = total / dim;
      rate[i] = updates == 0 || mean == 0 ? nan : scale / (std::sqrt(mean) + eps);
    }
  });
}

}  // namespace adagrad

// (rates, updates) of rows `ids`: adagrad::read_rates.
std::vector<torch::Tensor> adagrad_rates(torch::Tensor sum, torch::Tensor updates,
                                         torch::Tensor last_step, torch::Tensor ids, double lr,
                                         double lr_decay, double eps, bool per_coordinate) {
  TORCH_CHECK(sum.is_contiguous() && sum.scalar_type() == torch::kFloat32 && sum.dim() >= 1 &&
                  updates.scalar_type() == torch::kInt32 && updates.is_contiguous() &&
                  last_step.scalar_type() == torch::kInt32 && last_step.is_contiguous() &&
                  ids.scalar_type() == torch::kInt64 && ids.is_contiguous(),
              "adagrad_rates: contiguous float32 sum, int32 counters and int64 ids on the CPU");
  const int64_t n = ids.numel(), num_rows = sum.size(0);
  const int64_t dim = num_rows ? sum.numel() / num_rows : 0;
  auto out = torch::empty(per_coordinate ? std::vector<int64_t>{n, dim} : std::vector<int64_t>{n},
                          torch::kFloat64);
  auto counts = torch::empty({n}, torch::kInt32);
  adagrad::read_rates(sum.data_ptr<float>(), updates.data_ptr<int32_t>(),
                      last_step.data_ptr<int32_t>(), num_rows, dim, ids.data_ptr<int64_t>(), n, lr,
                      lr_decay, eps, per_coordinate, out.data_ptr<double>(),
                      counts.data_ptr<int32_t>());
  return {out, counts};
}
