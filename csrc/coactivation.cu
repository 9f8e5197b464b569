// Co-activation of two SAEs' features over the same tokens from their sparse codes:
// C[a, b] = sum_t f_a(t) f_b(t). One thread block per token walks its k_a x k_b slot pairs and adds
// with atomics (the last bits depend on the order of the adds; the set of terms does not).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

namespace {

__global__ void coactivation_kernel(const int32_t* __restrict__ ia, const float* __restrict__ va, int64_t ka,
                                    const int32_t* __restrict__ ib, const float* __restrict__ vb, int64_t kb,
                                    float* __restrict__ c, int64_t d_b) {
  const int64_t t = blockIdx.x;
  for (int64_t p = threadIdx.x; p < ka * kb; p += blockDim.x) {
    const int64_t s = p / kb, r = p % kb;
    const int32_t a = ia[t * ka + s], b = ib[t * kb + r];
    if (a >= 0 && b >= 0) atomicAdd(&c[(int64_t)a * d_b + b], va[t * ka + s] * vb[t * kb + r]);
  }
}

}  // namespace

torch::Tensor coactivation(torch::Tensor idx_a, torch::Tensor val_a, torch::Tensor idx_b, torch::Tensor val_b,
                           int64_t d_a, int64_t d_b) {
  TORCH_CHECK(idx_a.is_cuda() && idx_b.is_cuda(), "coactivation: CUDA tensors expected");
  TORCH_CHECK(idx_a.dim() == 2 && idx_b.dim() == 2 && idx_a.size(0) == idx_b.size(0),
              "coactivation: codes [n, k_a] and [n, k_b] over the same n tokens expected");
  TORCH_CHECK(val_a.sizes() == idx_a.sizes() && val_b.sizes() == idx_b.sizes(), "values must match indices");
  const c10::cuda::CUDAGuard guard(idx_a.device());
  auto ia = idx_a.to(torch::kInt32).contiguous(), ib = idx_b.to(torch::kInt32).contiguous();
  auto va = val_a.to(torch::kFloat32).contiguous(), vb = val_b.to(torch::kFloat32).contiguous();
  auto out = torch::zeros({d_a, d_b}, va.options());
  const int64_t n = ia.size(0), ka = ia.size(1), kb = ib.size(1);
  if (n == 0 || ka == 0 || kb == 0) return out;
  coactivation_kernel<<<(unsigned)n, 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ia.data_ptr<int32_t>(), va.data_ptr<float>(), ka, ib.data_ptr<int32_t>(), vb.data_ptr<float>(), kb,
      out.data_ptr<float>(), d_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
