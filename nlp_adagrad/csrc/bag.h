// A bag classifier's batch in one pass (bag.cpp): what the binding `bag_gradients` returns and
// what classify_steps.cpp computes for each of its steps.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace bag {

struct Gradients {
  double loss = 0.0;           // the batch's summed cross-entropy
  std::vector<int64_t> rows;   // sorted distinct token rows
  torch::Tensor table;         // (rows, dim): their gradients
  torch::Tensor head;          // (classes, dim), undefined without a head (logreg)
  torch::Tensor bias;          // (classes)
};

// The batch's documents: ids[offsets[b]:offsets[b + 1]] with labels[b], b < docs. `head` is
// null for logreg; `slot` is the caller's row -> slot scratch (-1 everywhere, as left), read
// for tables up to 2^18 rows (bag.cpp: larger ones sort the batch's ids instead).
Gradients gradients(const float* table, int64_t table_rows, int64_t dim, const float* head,
                    const float* bias, int64_t classes, const int64_t* ids, int64_t num_ids,
                    const int64_t* offsets, int64_t docs, const int64_t* labels, bool mean,
                    int32_t* slot);

}  // namespace bag
