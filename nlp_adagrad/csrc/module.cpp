// The Python module of the C++ kernels (nlp_adagrad/kernels.py builds it). All release the
// GIL: they touch only the tensors passed in, and the next batch can be drawn meanwhile.
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> sgns_gradients(torch::Tensor input, torch::Tensor output,
                                          torch::Tensor centres, torch::Tensor targets,
                                          torch::Tensor slot_of);
std::vector<torch::Tensor> bag_gradients(torch::Tensor table, torch::Tensor head,
                                         torch::Tensor bias, torch::Tensor ids,
                                         torch::Tensor offsets, torch::Tensor labels, bool mean,
                                         torch::Tensor slot_of);
void adagrad_rows_(torch::Tensor weight, torch::Tensor sum, torch::Tensor rows,
                   torch::Tensor values, double alpha, double eps);
std::vector<torch::Tensor> classify_steps(
    torch::Tensor table, torch::Tensor table_sum, torch::Tensor head, torch::Tensor head_sum,
    torch::Tensor bias, torch::Tensor bias_sum, torch::Tensor updates, torch::Tensor last_step,
    torch::Tensor split_ids, torch::Tensor split_offsets, torch::Tensor split_labels,
    torch::Tensor docs, int64_t batch_size, torch::Tensor alphas, double eps,
    int64_t first_step, bool mean, torch::Tensor slot_of, torch::Tensor fresh,
    int64_t fresh_limit, torch::Tensor read_steps, torch::Tensor read_rows,
    torch::Tensor coordinates_at, torch::Tensor coordinate_rows, double lr, double lr_decay);
std::vector<torch::Tensor> adagrad_rates(torch::Tensor sum, torch::Tensor updates,
                                         torch::Tensor last_step, torch::Tensor ids, double lr,
                                         double lr_decay, double eps, bool per_coordinate);
void bind_words(pybind11::module_& m);
int64_t count_rows_(torch::Tensor updates, torch::Tensor last_step, torch::Tensor rows,
                    int64_t step, int64_t fresh_limit);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto unlocked = py::call_guard<py::gil_scoped_release>();
  m.def("sgns_gradients", &sgns_gradients, unlocked, "skip-gram loss and row gradients");
  m.def("bag_gradients", &bag_gradients, unlocked, "a bag classifier's loss and gradients");
  m.def("adagrad_rows_", &adagrad_rows_, unlocked, "Adagrad's step on the touched rows, in place");
  m.def("count_rows_", &count_rows_, unlocked, "a sparse step's per-row counters, in place");
  m.def("adagrad_rates", &adagrad_rates, unlocked, "Adagrad's effective rates and update counts of some rows");
  m.def("classify_steps", &classify_steps, unlocked,
        "a bag classifier's Adagrad steps over a chunk of batches, in place");
  bind_words(m);
}
