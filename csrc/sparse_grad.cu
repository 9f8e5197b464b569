// Sparse decoder gradient as a segmented reduction: dW[j] = sum over slots with idx == j of val * g[t].
// The slots are sorted by feature with CUB's (stable) radix sort, runs found with CUB's run-length
// encode, then one thread block per feature sums its segment in slot order: deterministic, no atomics.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <climits>
#include <cub/cub.cuh>

namespace {

__global__ void segment_rows_kernel(const int32_t* __restrict__ seg_feature, const int64_t* __restrict__ seg_start,
                                    const int32_t* __restrict__ slot, const float* __restrict__ val,
                                    const float* __restrict__ g, float* __restrict__ dw, int64_t k, int64_t d) {
  const int64_t seg = blockIdx.x;
  const int64_t start = seg_start[seg], end = seg_start[seg + 1];
  const int64_t feature = seg_feature[seg];
  for (int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; c < d; c += (int64_t)blockDim.x * gridDim.y) {
    float acc = 0.f;
    for (int64_t e = start; e < end; ++e) {
      const int64_t s = slot[e];
      acc += val[s] * g[(s / k) * d + c];
    }
    dw[feature * d + c] = acc;
  }
}

}  // namespace

torch::Tensor sparse_decoder_grad_segmented(torch::Tensor idx, torch::Tensor val, torch::Tensor g, int64_t d_sae) {
  TORCH_CHECK(idx.is_cuda() && val.is_cuda() && g.is_cuda(), "sparse_decoder_grad_segmented: CUDA tensors expected");
  TORCH_CHECK(idx.dim() == 2 && val.sizes() == idx.sizes(), "idx and val must both be [n, k]");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == idx.size(0), "g must be [n, d] with the codes' n");
  TORCH_CHECK(d_sae < INT_MAX, "d_sae must fit in int32");
  const c10::cuda::CUDAGuard guard(g.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = idx.size(0), k = idx.size(1), d = g.size(1), total = n * k;
  auto gf = g.to(torch::kFloat32).contiguous();
  auto vf = val.to(torch::kFloat32).contiguous().reshape({-1});
  auto out = torch::zeros({d_sae, d}, gf.options());
  if (total == 0 || d == 0) return out;
  TORCH_CHECK(total < INT_MAX, "n * k must fit in int32");

  auto i32 = gf.options().dtype(torch::kInt32);
  // Empty slots (idx < 0) get the largest key and are dropped after the sort.
  auto keys_in = idx.to(torch::kInt32).contiguous().reshape({-1});
  keys_in = torch::where(keys_in < 0, torch::full_like(keys_in, INT_MAX), keys_in);
  auto slots_in = torch::arange(total, i32);
  auto keys_out = torch::empty_like(keys_in);
  auto slots_out = torch::empty_like(slots_in);
  size_t sort_bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in.data_ptr<int32_t>(), keys_out.data_ptr<int32_t>(),
                                  slots_in.data_ptr<int32_t>(), slots_out.data_ptr<int32_t>(), (int)total, 0, 32,
                                  stream);
  auto sort_tmp = torch::empty({(int64_t)sort_bytes}, gf.options().dtype(torch::kUInt8));
  cub::DeviceRadixSort::SortPairs(sort_tmp.data_ptr(), sort_bytes, keys_in.data_ptr<int32_t>(),
                                  keys_out.data_ptr<int32_t>(), slots_in.data_ptr<int32_t>(),
                                  slots_out.data_ptr<int32_t>(), (int)total, 0, 32, stream);

  auto unique = torch::empty({total}, i32);
  auto counts = torch::empty({total}, i32);
  auto n_runs = torch::empty({1}, i32);
  size_t rle_bytes = 0;
  cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, keys_out.data_ptr<int32_t>(), unique.data_ptr<int32_t>(),
                                     counts.data_ptr<int32_t>(), n_runs.data_ptr<int32_t>(), (int)total, stream);
  auto rle_tmp = torch::empty({(int64_t)rle_bytes}, gf.options().dtype(torch::kUInt8));
  cub::DeviceRunLengthEncode::Encode(rle_tmp.data_ptr(), rle_bytes, keys_out.data_ptr<int32_t>(),
                                     unique.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
                                     n_runs.data_ptr<int32_t>(), (int)total, stream);
  int64_t runs = n_runs.item<int32_t>();
  if (runs > 0 && unique[runs - 1].item<int32_t>() == INT_MAX) runs -= 1;  // the empty slots' run
  if (runs == 0) return out;
  auto starts = torch::zeros({runs + 1}, gf.options().dtype(torch::kInt64));
  starts.slice(0, 1).copy_(torch::cumsum(counts.slice(0, 0, runs), 0));

  const int threads = 256;
  const int col_blocks = (int)std::min<int64_t>((d + threads - 1) / threads, 65535);
  dim3 grid((unsigned)runs, (unsigned)col_blocks);
  segment_rows_kernel<<<grid, threads, 0, stream>>>(unique.data_ptr<int32_t>(), starts.data_ptr<int64_t>(),
                                                     slots_out.data_ptr<int32_t>(), vf.data_ptr<float>(),
                                                     gf.data_ptr<float>(), out.data_ptr<float>(), k, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
