// Several optimizer steps of a bag classifier trained with Adagrad, in one call: for each
// batch of the chunk, what the Python loop does step by step (nlp_adagrad/recipes/classify.py
// with the C++ kernels): gather the batch's documents from the split's CSR arrays, its loss
// and gradients (bag.cpp), Adagrad's step on the touched rows and on the dense head and bias
// (adagrad.cpp) and the per-row counters (and `fresh`: the rows below `fresh_limit` updated for
// the first time). The same functions in the same order, so the numbers are the step-by-step
// path's bit for bit (tested), and the chunk boundaries never change them. Each step's loss and
// the time it ended come back: the loop sums the losses into its log windows, which a chunk may
// cross, and times each window to its own last step.
//
// Why: in Python a step costs ~0.3 ms of calls and tensor wrappers between the kernels, half
// the step on a large corpus; here the loop runs once per chunk (nlp_adagrad/fused_steps.py).
//
// The chunk stops after the first step whose loss or gradients are not finite, as the Python
// loop's guard does after that step, and leaves that step's gradients for the guard to name.
//
// Telemetry snapshots due inside the chunk (`read_steps`: the run's schedule) are read here
// too, after their step: the rates and update counts of the sampled rows, the count of rows
// updated so far (`fresh`) and, where a histogram is due, the coordinate rates of the shown
// rows, as adagrad_rates reads them. In Python a snapshot ended the chunk, and the calls
// around its read (~0.1 ms: a cold interpreter after the C++ steps) cost more than the read.
#include "adagrad.h"
#include "bag.h"
#include "rows.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace {

// Whether every value is finite: its exponent bits not all ones (an integer test per value,
// which vectorises; std::isfinite's branch per value does not)
bool all_finite(const torch::Tensor& t) {
  if (!t.defined()) return true;
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(t.data_ptr<float>());
  uint32_t bad = 0;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  return !bad;
}

}  // namespace

// {per-step mean losses (float32, one per step taken), the seconds from the call to each of
// those steps' end (float64), the last step's rows, row gradients, head gradient (empty for
// logreg) and bias gradient, then the snapshots read: their steps, rates (float64, reads x
// rows), update counts (int32), rows updated so far (int64, one per read), coordinate rates
// (float64, one (rows x dim) per read with coordinates) and the seconds each read took}.
// `read_steps`: the run's snapshot steps, ascending (any outside the chunk are skipped), with
// `coordinates_at` one flag each. `docs` holds the chunk's
// documents in order, `batch_size` per step (the last batch may be smaller); `alphas` the
// steps' -lr (one per batch); `first_step` the step number of the first (the counters').
std::vector<torch::Tensor> classify_steps(
    torch::Tensor table, torch::Tensor table_sum, torch::Tensor head, torch::Tensor head_sum,
    torch::Tensor bias, torch::Tensor bias_sum, torch::Tensor updates, torch::Tensor last_step,
    torch::Tensor split_ids, torch::Tensor split_offsets, torch::Tensor split_labels,
    torch::Tensor docs, int64_t batch_size, torch::Tensor alphas, double eps,
    int64_t first_step, bool mean, torch::Tensor slot_of, torch::Tensor fresh,
    int64_t fresh_limit, torch::Tensor read_steps, torch::Tensor read_rows,
    torch::Tensor coordinates_at, torch::Tensor coordinate_rows, double lr, double lr_decay) {
  const auto called = std::chrono::steady_clock::now();
  const bool has_head = head.numel() > 0;
  for (const auto* t : {&table, &table_sum, &head, &head_sum, &bias, &bias_sum})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == torch::kFloat32,
                "classify_steps: contiguous float32 parameters and accumulators on the CPU");
  TORCH_CHECK(table_sum.sizes() == table.sizes() && head_sum.sizes() == head.sizes() &&
                  bias_sum.sizes() == bias.sizes(),
              "classify_steps: each accumulator has its parameter's shape");
  TORCH_CHECK(updates.scalar_type() == torch::kInt32 && last_step.scalar_type() == torch::kInt32,
              "classify_steps: int32 row counters");
  TORCH_CHECK(alphas.scalar_type() == torch::kFloat64, "classify_steps: float64 alphas");
  TORCH_CHECK(fresh.scalar_type() == torch::kInt64 && fresh.numel() == 1,
              "classify_steps: one int64 count of rows updated for the first time");
  const int64_t dim = table.size(1), classes = bias.size(0), num_docs = docs.size(0);
  const int64_t steps = alphas.size(0);
  TORCH_CHECK(has_head || dim == classes, "classify_steps: without a head the table's width is the class count");
  TORCH_CHECK(batch_size >= 1 && num_docs > (steps - 1) * batch_size && num_docs <= steps * batch_size,
              "classify_steps: one batch of documents per alpha");
  // the run's snapshot schedule: those of its steps inside this chunk are read here
  const int64_t scheduled = read_steps.numel(), n_read = read_rows.numel();
  const int64_t n_coord = coordinate_rows.numel();
  TORCH_CHECK(read_steps.scalar_type() == torch::kInt64 && read_steps.is_contiguous() &&
                  coordinates_at.scalar_type() == torch::kBool && coordinates_at.numel() == scheduled &&
                  read_rows.scalar_type() == torch::kInt64 && read_rows.is_contiguous() &&
                  coordinate_rows.scalar_type() == torch::kInt64 && coordinate_rows.is_contiguous(),
              "classify_steps: int64 read steps and rows, one bool per read step");
  const int64_t* read_step = read_steps.data_ptr<int64_t>();
  const bool* read_coordinates = coordinates_at.data_ptr<bool>();
  const int64_t begin = std::lower_bound(read_step, read_step + scheduled, first_step) - read_step;
  const int64_t end =
      std::lower_bound(read_step + begin, read_step + scheduled, first_step + steps) - read_step;
  int64_t coordinate_reads = 0;
  for (int64_t k = begin; k < end; ++k) {
    TORCH_CHECK(k == begin || read_step[k] > read_step[k - 1], "classify_steps: read steps ascending");
    coordinate_reads += read_coordinates[k];
  }
  for (const auto* t : {&read_rows, &coordinate_rows}) {  // checked before any step is taken
    const int64_t* row = t->data_ptr<int64_t>();
    for (int64_t i = 0; begin < end && i < t->numel(); ++i)
      TORCH_CHECK(row[i] >= 0 && row[i] < table.size(0), "classify_steps: read row ", row[i], " out of range");
  }
  auto rates = torch::empty({end - begin, n_read}, torch::kFloat64);
  auto counts = torch::empty({end - begin, n_read}, torch::kInt32);
  auto tokens_updated = torch::empty({end - begin}, torch::kInt64);
  auto coordinates = torch::empty({coordinate_reads, n_coord, dim}, torch::kFloat64);
  auto read_seconds = torch::empty({end - begin}, torch::kFloat64);
  int64_t done = 0, coordinates_done = 0;  // reads so far: schedule entry begin + done is next

  float* w = table.data_ptr<float>();
  float* G = table_sum.data_ptr<float>();
  float* W = has_head ? head.data_ptr<float>() : nullptr;
  float* WG = has_head ? head_sum.data_ptr<float>() : nullptr;
  float* b = bias.data_ptr<float>();
  float* bG = bias_sum.data_ptr<float>();
  const int64_t* ids = split_ids.data_ptr<int64_t>();
  const int64_t* starts = split_offsets.data_ptr<int64_t>();
  const int64_t* labels = split_labels.data_ptr<int64_t>();
  const int64_t* doc = docs.data_ptr<int64_t>();
  const double* alpha = alphas.data_ptr<double>();
  const float e = (float)eps;

  // the dense layer is all rows of itself (its elementwise step, whatever the row shape)
  std::vector<int64_t> head_rows(classes);
  for (int64_t c = 0; c < classes; ++c) head_rows[c] = c;
  const int64_t bias_row = 0;
  std::vector<float> losses;
  std::vector<double> ends;
  std::vector<int64_t> batch_ids, batch_offsets, batch_labels;
  bag::Gradients g;
  for (int64_t s = 0; s < steps; ++s) {
    // the batch, as make_batch gathers it (nlp_adagrad/batching.py)
    const int64_t first = s * batch_size, last = std::min(num_docs, first + batch_size);
    batch_ids.clear(), batch_offsets.clear(), batch_labels.clear();
    for (int64_t k = first; k < last; ++k) {
      batch_offsets.push_back((int64_t)batch_ids.size());
      batch_ids.insert(batch_ids.end(), ids + starts[doc[k]], ids + starts[doc[k] + 1]);
      batch_labels.push_back(labels[doc[k]]);
    }
    g = bag::gradients(w, table.size(0), dim, W, b, classes, batch_ids.data(),
                       (int64_t)batch_ids.size(), batch_offsets.data(), last - first,
                       batch_labels.data(), mean, slot_of.data_ptr<int32_t>());
    const float loss = (float)(g.loss / (double)(last - first));
    // the optimizer's step: the table's touched rows, their counters, then the dense layer
    const float a = (float)alpha[s];
    const int64_t n = (int64_t)g.rows.size();
    adagrad::step_rows(w, G, g.rows.data(), n, dim, g.table.data_ptr<float>(), a, e,
                       updates.data_ptr<int32_t>(), last_step.data_ptr<int32_t>(), first_step + s,
                       fresh.data_ptr<int64_t>(), fresh_limit);
    if (has_head) adagrad::step_rows(W, WG, head_rows.data(), classes, dim, g.head.data_ptr<float>(), a, e);
    adagrad::step_rows(b, bG, &bias_row, 1, classes, g.bias.data_ptr<float>(), a, e);
    const auto ended = std::chrono::steady_clock::now();
    losses.push_back(loss);
    ends.push_back(std::chrono::duration<double>(ended - called).count());
    if (!(std::isfinite(loss) && all_finite(g.table) && all_finite(g.head) && all_finite(g.bias)))
      break;  // the guard's step: no snapshot of it, as in the Python loop
    if (begin + done < end && read_step[begin + done] == first_step + s) {
      const int64_t rows_total = table.size(0);
      // the rows read are the same each time: a row the chunk's last read saw at its count
      // keeps that rate (adagrad::read_rates)
      double* rate = rates.data_ptr<double>() + done * n_read;
      int32_t* count = counts.data_ptr<int32_t>() + done * n_read;
      adagrad::read_rates(G, updates.data_ptr<int32_t>(), last_step.data_ptr<int32_t>(), rows_total,
                          dim, read_rows.data_ptr<int64_t>(), n_read, lr, lr_decay, eps, false,
                          rate, count, done > 0 ? rate - n_read : nullptr,
                          done > 0 ? count - n_read : nullptr);
      if (read_coordinates[begin + done])  // the rates only: the counts are the read's above
        adagrad::read_rates(G, updates.data_ptr<int32_t>(), last_step.data_ptr<int32_t>(),
                            rows_total, dim, coordinate_rows.data_ptr<int64_t>(), n_coord, lr,
                            lr_decay, eps, true,
                            coordinates.data_ptr<double>() + coordinates_done++ * n_coord * dim,
                            nullptr);
      tokens_updated.data_ptr<int64_t>()[done] = fresh.data_ptr<int64_t>()[0];
      read_seconds.data_ptr<double>()[done++] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - ended).count();
    }
  }
  auto out = torch::empty({(int64_t)losses.size()}, torch::kFloat32);
  std::copy(losses.begin(), losses.end(), out.data_ptr<float>());
  auto seconds = torch::empty({(int64_t)ends.size()}, torch::kFloat64);
  std::copy(ends.begin(), ends.end(), seconds.data_ptr<double>());
  return {out,
          seconds,
          rows::to_tensor(g.rows),
          g.table,
          has_head ? g.head : torch::empty({0}, torch::kFloat32),
          g.bias,
          read_steps.narrow(0, begin, done),
          rates.narrow(0, 0, done),
          counts.narrow(0, 0, done),
          tokens_updated.narrow(0, 0, done),
          coordinates.narrow(0, 0, coordinates_done),
          read_seconds.narrow(0, 0, done)};
}
