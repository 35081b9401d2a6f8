// A bag-of-tokens classifier's batch (LogReg, FastText: nlp_adagrad/models.py) in one pass
// over its documents: the summed cross-entropy and every gradient of the mean loss, what the
// model's forward, F.cross_entropy(reduction="sum") / documents and backward give (tested to
// 1e-6). The token table's gradient comes back as (sorted distinct rows, summed rows).
//
//     h = sum (mode sum) or mean (mode mean) of the document's token rows
//     logits = h + bias (logreg: the table's width is the class count) or W h + bias
//     g = (softmax(logits) - onehot(label)) / documents
//     bias += g;  W += g h^T;  each token row += (g or W^T g) * (1 / length with mode mean)
//
// Why C++: in torch a step is ~40 operator calls from Python (embedding_bag, the loss, the
// autograd graph, the sparse backward's sort and reduction), ~1 ms at 32 documents whatever
// they hold; this is one call whose cost is the tokens it reads.
//
// Threads: documents are cut into one contiguous chunk per torch thread (from 1,024 tokens a
// chunk up); each sums into its own gradients and the chunks are added in chunk order, so the
// bits depend on the thread count (trainer.num_threads), never on scheduling.
#include "bag.h"

#include "rows.h"

#include <cmath>

namespace {

// The largest table whose row -> slot scratch (4 bytes a row) finds a batch's rows: within it,
// the scratch stays in cache (BBC News, 27,000 rows: sorting was 12% slower a loop); past it,
// its scattered reads and writes cost more than sorting the batch's ids (the synthetic corpus,
// 3M rows: sorting 7% faster a loop, 1 and 2 threads). The same rows and places either way.
constexpr int64_t kSlotScratchRows = 1 << 18;

// Documents [begin, end) of the batch: their loss into g.loss, their gradients into g.
void score_documents(int64_t begin, int64_t end, int64_t docs, int64_t dim, int64_t classes,
                     bool mean, const float* table, const float* head, const float* bias,
                     const int64_t* ids, const int64_t* offsets, int64_t num_ids,
                     const int64_t* labels, const int32_t* slot_of_position, bag::Gradients& g) {
  std::vector<float> h(dim), logits(classes), grad_logits(classes), grad_h(dim);
  float* g_table = g.table.data_ptr<float>();
  float* g_head = head ? g.head.data_ptr<float>() : nullptr;
  float* g_bias = g.bias.data_ptr<float>();
  double loss = 0.0;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t first = offsets[b], last = b + 1 < docs ? offsets[b + 1] : num_ids;
    std::fill(h.begin(), h.end(), 0.f);
    for (int64_t k = first; k < last; ++k) {
      if (k + rows::kAhead < num_ids) __builtin_prefetch(table + ids[k + rows::kAhead] * dim);
      const float* __restrict row = table + ids[k] * dim;
      for (int64_t j = 0; j < dim; ++j) h[j] += row[j];
    }
    const int64_t length = last - first;
    const float weight = mean && length > 0 ? 1.f / (float)length : 1.f;
    if (mean && length > 0)
      for (int64_t j = 0; j < dim; ++j) h[j] /= (float)length;
    for (int64_t c = 0; c < classes; ++c) {
      float z = bias[c];
      if (head) {
        float acc = 0.f;
        for (int64_t j = 0; j < dim; ++j) acc += head[c * dim + j] * h[j];
        z += acc;
      } else {
        z += h[c];
      }
      logits[c] = z;
    }
    const float top = *std::max_element(logits.begin(), logits.end());
    double total = 0.0;
    for (int64_t c = 0; c < classes; ++c) total += std::exp((double)(logits[c] - top));
    const double log_norm = (double)top + std::log(total);
    const int64_t label = labels[b];
    loss += log_norm - (double)logits[label];
    for (int64_t c = 0; c < classes; ++c) {
      const float p = (float)std::exp((double)logits[c] - log_norm);
      grad_logits[c] = (p - (c == label ? 1.f : 0.f)) / (float)docs;
      g_bias[c] += grad_logits[c];
    }
    if (head) {
      std::fill(grad_h.begin(), grad_h.end(), 0.f);
      for (int64_t c = 0; c < classes; ++c) {
        const float gc = grad_logits[c];
        const float* __restrict w = head + c * dim;
        float* __restrict gw = g_head + c * dim;
        for (int64_t j = 0; j < dim; ++j) { gw[j] += gc * h[j]; grad_h[j] += gc * w[j]; }
      }
    } else {
      std::copy(grad_logits.begin(), grad_logits.end(), grad_h.begin());
    }
    for (int64_t k = first; k < last; ++k) {
      float* __restrict out = g_table + (int64_t)slot_of_position[k] * dim;
      for (int64_t j = 0; j < dim; ++j) out[j] += grad_h[j] * weight;
    }
  }
  g.loss += loss;
}

}  // namespace

namespace bag {

Gradients gradients(const float* table, int64_t table_rows, int64_t dim, const float* head,
                    const float* bias, int64_t classes, const int64_t* ids, int64_t num_ids,
                    const int64_t* offsets, int64_t docs, const int64_t* labels, bool mean,
                    int32_t* slot) {
  std::vector<int32_t> slot_of_position;
  std::vector<int64_t> touched;
  if (table_rows > kSlotScratchRows) {
    touched = rows::distinct_by_sorting(ids, num_ids, table_rows, slot_of_position);
  } else {
    touched = rows::distinct(ids, num_ids, slot, table_rows);
    slot_of_position.resize(num_ids);
    for (int64_t k = 0; k < num_ids; ++k) {
      if (k + rows::kAhead < num_ids) __builtin_prefetch(slot + ids[k + rows::kAhead]);
      slot_of_position[k] = slot[ids[k]];
    }
    rows::release(touched, slot);
  }

  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), num_ids / 1024, docs}));
  std::vector<Gradients> parts(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      Gradients& g = parts[k];
      g.table = torch::zeros({(int64_t)touched.size(), dim}, torch::kFloat32);
      if (head) g.head = torch::zeros({classes, dim}, torch::kFloat32);
      g.bias = torch::zeros({classes}, torch::kFloat32);
      score_documents(docs * k / chunks, docs * (k + 1) / chunks, docs, dim, classes, mean,
                      table, head, bias, ids, offsets, num_ids, labels, slot_of_position.data(),
                      g);
    }
  });
  std::vector<torch::Tensor> tables, heads, biases;
  Gradients& out = parts[0];
  for (int64_t k = 1; k < chunks; ++k) {
    tables.push_back(parts[k].table);
    if (head) heads.push_back(parts[k].head);
    biases.push_back(parts[k].bias);
    out.loss += parts[k].loss;
  }
  rows::add_chunks(out.table, tables);
  if (head) rows::add_chunks(out.head, heads);
  rows::add_chunks(out.bias, biases);
  out.rows = std::move(touched);
  return std::move(out);
}

}  // namespace bag

// {mean loss (float32), rows, row gradients, head gradient (empty for logreg), bias gradient}
std::vector<torch::Tensor> bag_gradients(torch::Tensor table, torch::Tensor head,
                                         torch::Tensor bias, torch::Tensor ids,
                                         torch::Tensor offsets, torch::Tensor labels, bool mean,
                                         torch::Tensor slot_of) {
  TORCH_CHECK(table.is_contiguous() && table.scalar_type() == torch::kFloat32,
              "bag_gradients: a contiguous float32 table on the CPU");
  const bool has_head = head.numel() > 0;
  const int64_t dim = table.size(1), classes = bias.size(0), docs = offsets.size(0);
  TORCH_CHECK(has_head || dim == classes, "bag_gradients: without a head the table's width is the class count");
  const auto head_c = has_head ? head.contiguous() : head;
  const auto bias_c = bias.contiguous();
  bag::Gradients g = bag::gradients(
      table.data_ptr<float>(), table.size(0), dim, has_head ? head_c.data_ptr<float>() : nullptr,
      bias_c.data_ptr<float>(), classes, ids.data_ptr<int64_t>(), ids.size(0),
      offsets.data_ptr<int64_t>(), docs, labels.data_ptr<int64_t>(), mean,
      slot_of.data_ptr<int32_t>());
  return {torch::tensor((float)(g.loss / (double)docs), torch::kFloat32), rows::to_tensor(g.rows),
          g.table, has_head ? g.head : torch::empty({0}, torch::kFloat32), g.bias};
}
