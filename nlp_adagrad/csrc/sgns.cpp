// Skip-gram with negative sampling, one batch, in one pass over the pairs: the loss summed
// over pairs and each table's gradient as (sorted distinct rows, summed rows), what
// SkipGram.forward + backward give (tested to 1e-5). targets[:, 0] is the context word (label
// 1), targets[:, 1:] the noise words (label 0). Built by nlp_adagrad/words/kernel.py.
//
// Why C++: the torch version gathers a (pairs x (1 + negative) x dim) block of output rows,
// scores it with a batched matrix-vector product and reads it again for the gradients; here
// each output row is read once per pair from the table itself (hot rows stay in cache) and
// the gradients are summed straight into one row per distinct id.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

std::vector<torch::Tensor> sgns_gradients(torch::Tensor input, torch::Tensor output,
                                          torch::Tensor centres, torch::Tensor targets,
                                          torch::Tensor slot_of) {
  TORCH_CHECK(input.is_contiguous() && output.is_contiguous() && input.scalar_type() == torch::kFloat32,
              "sgns_gradients: contiguous float32 tables on the CPU");
  const int64_t pairs = targets.size(0), width = targets.size(1), dim = input.size(1);
  const float* W_in = input.data_ptr<float>();
  const float* W_out = output.data_ptr<float>();
  const int64_t* c = centres.data_ptr<int64_t>();
  const int64_t* t = targets.data_ptr<int64_t>();
  // slot_of: one int32 per table row, -1 everywhere on entry and on exit; maps a row id to
  // its place in the gradient being built (the cost is the batch's rows, not the table's)
  int32_t* slot = slot_of.data_ptr<int32_t>();

  auto distinct = [&](const int64_t* ids, int64_t n) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i)
      if (slot[ids[i]] < 0) { slot[ids[i]] = 0; rows.push_back(ids[i]); }
    std::sort(rows.begin(), rows.end());
    for (size_t k = 0; k < rows.size(); ++k) slot[rows[k]] = (int32_t)k;
    return rows;
  };
  auto to_tensor = [](const std::vector<int64_t>& rows) {
    auto out = torch::empty({(int64_t)rows.size()}, torch::kInt64);
    std::copy(rows.begin(), rows.end(), out.data_ptr<int64_t>());
    return out;
  };

  std::vector<int64_t> in_rows = distinct(c, pairs);
  auto grad_in = torch::zeros({(int64_t)in_rows.size(), dim}, torch::kFloat32);
  std::vector<int32_t> in_slot(pairs);
  for (int64_t p = 0; p < pairs; ++p) in_slot[p] = slot[c[p]];
  for (int64_t r : in_rows) slot[r] = -1;
  std::vector<int64_t> out_rows = distinct(t, pairs * width);
  auto grad_out = torch::zeros({(int64_t)out_rows.size(), dim}, torch::kFloat32);
  float* g_in = grad_in.data_ptr<float>();
  float* g_out = grad_out.data_ptr<float>();
  double loss = 0.0;
  for (int64_t p = 0; p < pairs; ++p) {
    const float* __restrict v = W_in + c[p] * dim;
    float* __restrict gv = g_in + (int64_t)in_slot[p] * dim;
    for (int64_t k = 0; k < width; ++k) {
      const int64_t row = t[p * width + k];
      const float* __restrict u = W_out + row * dim;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      for (; j + 8 <= dim; j += 8)
        for (int q = 0; q < 8; ++q) acc[q] += v[j + q] * u[j + q];
      float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; j < dim; ++j) s += v[j] * u[j];
      // softplus(-s) for the context word, softplus(s) for noise words, from one exp
      const float z = k == 0 ? -s : s;
      const float e = expf(-std::fabs(z));
      loss += std::max(z, 0.f) + log1pf(e);
      const float sig = z >= 0 ? 1.f / (1.f + e) : e / (1.f + e);  // sigmoid(z)
      const float g = k == 0 ? -sig : sig;  // d softplus(z) / d s
      float* __restrict gu = g_out + (int64_t)slot[row] * dim;
      for (int64_t j2 = 0; j2 < dim; ++j2) { gv[j2] += g * u[j2]; gu[j2] += g * v[j2]; }
    }
  }
  for (int64_t r : out_rows) slot[r] = -1;
  return {torch::tensor(loss, torch::kFloat64), to_tensor(in_rows), grad_in, to_tensor(out_rows), grad_out};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("sgns_gradients", &sgns_gradients); }
