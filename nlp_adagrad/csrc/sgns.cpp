// Skip-gram with negative sampling, one batch, in one pass over the pairs: the loss summed
// over pairs and each table's gradient as (sorted distinct rows, summed rows), what
// SkipGram.forward + backward give (tested to 1e-5). targets[:, 0] is the context word (label
// 1), targets[:, 1:] the noise words (label 0). Built by nlp_adagrad/kernels.py.
//
// Why C++: the torch version gathers a (pairs x (1 + negative) x dim) block of output rows,
// scores it with a batched matrix-vector product and reads it again for the gradients; here
// each output row is read once per pair from the table itself (hot rows stay in cache) and
// the gradients are summed straight into one row per distinct id.
//
// Threads: the pairs are cut into one contiguous chunk per torch thread; each chunk sums into
// its own gradient rows, and the chunks are added in chunk order. The bits depend on the
// thread count (trainer.num_threads, part of the config), never on scheduling; one thread
// sums straight into the result, as before threads existed.
#include "rows.h"

#include <cmath>

namespace {

// Pairs [begin, end): adds their loss to *loss and their gradients to g_in / g_out rows.
void score_pairs(int64_t begin, int64_t end, int64_t width, int64_t dim, const float* W_in,
                 const float* W_out, const int64_t* c, const int64_t* t, const int32_t* in_slot,
                 const int32_t* out_slot, float* g_in, float* g_out, double* loss) {
  double sum = 0.0;
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict v = W_in + c[p] * dim;
    float* __restrict gv = g_in + (int64_t)in_slot[p] * dim;
    if (p + 1 < end)  // the next pair's rows, scattered over the tables: asked for early
      for (int64_t k = 0; k < width; ++k) __builtin_prefetch(W_out + t[(p + 1) * width + k] * dim);
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
      sum += std::max(z, 0.f) + log1pf(e);
      const float sig = z >= 0 ? 1.f / (1.f + e) : e / (1.f + e);  // sigmoid(z)
      const float g = k == 0 ? -sig : sig;  // d softplus(z) / d s
      float* __restrict gu = g_out + (int64_t)out_slot[p * width + k] * dim;
      for (int64_t j2 = 0; j2 < dim; ++j2) { gv[j2] += g * u[j2]; gu[j2] += g * v[j2]; }
    }
  }
  *loss += sum;
}

}  // namespace

std::vector<torch::Tensor> sgns_gradients(torch::Tensor input, torch::Tensor output,
                                          torch::Tensor centres, torch::Tensor targets,
                                          torch::Tensor slot_of) {
  TORCH_CHECK(input.is_contiguous() && output.is_contiguous() && input.scalar_type() == torch::kFloat32,
              "sgns_gradients: contiguous float32 tables on the CPU");
  const int64_t pairs = targets.size(0), width = targets.size(1), dim = input.size(1);
  const int64_t* c = centres.data_ptr<int64_t>();
  const int64_t* t = targets.data_ptr<int64_t>();
  // slot_of: one int32 per table row, -1 everywhere on entry and on exit; maps a row id to
  // its place in the gradient being built (the cost is the batch's rows, not the table's)
  int32_t* slot = slot_of.data_ptr<int32_t>();

  std::vector<int64_t> in_rows = rows::distinct(c, pairs, slot, slot_of.size(0));
  std::vector<int32_t> in_slot(pairs);
  for (int64_t p = 0; p < pairs; ++p) in_slot[p] = slot[c[p]];
  rows::release(in_rows, slot);
  std::vector<int64_t> out_rows = rows::distinct(t, pairs * width, slot, slot_of.size(0));
  std::vector<int32_t> out_slot(pairs * width);
  for (int64_t i = 0; i < pairs * width; ++i) out_slot[i] = slot[t[i]];
  rows::release(out_rows, slot);

  // a chunk is worth a thread from ~256 pairs up: below that, zeroing its rows costs more
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), pairs / 256));
  std::vector<torch::Tensor> grad_in(chunks), grad_out(chunks);
  std::vector<double> loss(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      grad_in[k] = torch::zeros({(int64_t)in_rows.size(), dim}, torch::kFloat32);
      grad_out[k] = torch::zeros({(int64_t)out_rows.size(), dim}, torch::kFloat32);
      score_pairs(pairs * k / chunks, pairs * (k + 1) / chunks, width, dim,
                  input.data_ptr<float>(), output.data_ptr<float>(), c, t, in_slot.data(),
                  out_slot.data(), grad_in[k].data_ptr<float>(), grad_out[k].data_ptr<float>(),
                  &loss[k]);
    }
  });
  rows::add_chunks(grad_in[0], std::vector<torch::Tensor>(grad_in.begin() + 1, grad_in.end()));
  rows::add_chunks(grad_out[0], std::vector<torch::Tensor>(grad_out.begin() + 1, grad_out.end()));
  double total = 0.0;
  for (double l : loss) total += l;
  return {torch::tensor(total, torch::kFloat64), rows::to_tensor(in_rows), grad_in[0],
          rows::to_tensor(out_rows), grad_out[0]};
}
