// Python bindings of stitchkit's optional CUDA kernels (built by setup.py as stitchkit._C).
#include <torch/extension.h>

torch::Tensor sparse_decoder_grad_segmented(torch::Tensor idx, torch::Tensor val, torch::Tensor g, int64_t d_sae);
torch::Tensor coactivation(torch::Tensor idx_a, torch::Tensor val_a, torch::Tensor idx_b, torch::Tensor val_b,
                           int64_t d_a, int64_t d_b);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stitchkit CUDA kernels: segmented sparse decoder gradient, co-activation accumulation";
  m.def("sparse_decoder_grad_segmented", &sparse_decoder_grad_segmented,
        "dW[d_sae, d] = F^T g for sparse codes (idx, val); CUB radix sort by feature, one block per "
        "feature segment; deterministic, no atomics",
        py::arg("idx"), py::arg("val"), py::arg("g"), py::arg("d_sae"));
  m.def("coactivation", &coactivation,
        "C[d_a, d_b] = sum_t f_a(t) f_b(t) over the sparse codes of two SAEs (atomic adds)",
        py::arg("idx_a"), py::arg("val_a"), py::arg("idx_b"), py::arg("val_b"), py::arg("d_a"), py::arg("d_b"));
}
