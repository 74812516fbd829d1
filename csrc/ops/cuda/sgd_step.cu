// CUDA kernel of mzsr_fast::sgd_step: one launch over every chunk of every tensor.
// The host builds the chunk plan (sgd_step_math.h) and the three pointer tables,
// and ships them to the device in one copy; block b updates chunk b.
// Only device-generic headers: this compiles against a CPU-only torch as well.
#include <cstring>
#include <vector>

#include <ATen/DeviceAccelerator.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "ops/sgd_step_math.h"

namespace mzsr_fast {
namespace sgd_step {
namespace {

constexpr int64_t kCudaChunk = 4096;  // elements per block
constexpr int kThreads = 256;

// table: [3, n] pointers (params, grads, out) as int64; chunks: the plan.
template <typename scalar_t, typename opmath_t>
__global__ void sgd_step_kernel(const int64_t* __restrict__ table, int64_t n, const Chunk* __restrict__ chunks,
                                const opmath_t* __restrict__ lr, opmath_t alpha, bool has_params) {
  const Chunk k = chunks[blockIdx.x];
  const opmath_t r = rate<opmath_t>(lr, k.lr_index, alpha);
  const scalar_t* g = reinterpret_cast<const scalar_t*>(table[n + k.tensor]) + k.offset;
  scalar_t* out = reinterpret_cast<scalar_t*>(table[2 * n + k.tensor]) + k.offset;
  if (has_params) {
    const scalar_t* p = reinterpret_cast<const scalar_t*>(table[k.tensor]) + k.param_offset;
    for (int64_t j = threadIdx.x; j < k.length; j += blockDim.x) out[j] = update<scalar_t, opmath_t>(p[j], g[j], r);
  } else {
    for (int64_t j = threadIdx.x; j < k.length; j += blockDim.x) out[j] = scaled<scalar_t, opmath_t>(g[j], r);
  }
}

std::vector<at::Tensor> sgd_step_cuda(at::TensorList params, at::TensorList grads,
                                      const c10::optional<at::Tensor>& lr, double alpha) {
  const std::vector<at::Tensor> ps = params.vec(), gs = grads.vec();
  const std::vector<TensorShape> shapes = check(ps, gs, lr, c10::DeviceType::CUDA);
  std::vector<at::Tensor> outs;
  outs.reserve(gs.size());
  for (const at::Tensor& g : gs) outs.push_back(at::empty(g.sizes(), g.options()));
  if (gs.empty()) return outs;
  const c10::DeviceGuard guard(gs[0].device());
  const bool has_lr = lr.has_value() && lr->defined();
  const int64_t lr_tasks = has_lr ? lr->size(0) : 1, lr_tensors = has_lr ? lr->size(1) : 1;
  const std::vector<Chunk> chunks = plan(shapes, lr_tasks, lr_tensors, kCudaChunk);
  if (chunks.empty()) return outs;
  TORCH_CHECK(chunks.size() < (size_t{1} << 31), "sgd_step: too many chunks for one launch");

  // One host buffer: pointer tables [3, n], then the chunks; one copy to the device.
  const int64_t n = static_cast<int64_t>(gs.size());
  const int64_t words = 3 * n + static_cast<int64_t>(chunks.size()) * kChunkFields;
  at::Tensor host = at::empty({words}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    h[i] = ps.empty() ? 0 : reinterpret_cast<int64_t>(ps[i].const_data_ptr());
    h[n + i] = reinterpret_cast<int64_t>(gs[i].const_data_ptr());
    h[2 * n + i] = reinterpret_cast<int64_t>(outs[i].mutable_data_ptr());
  }
  static_assert(sizeof(Chunk) == kChunkFields * sizeof(int64_t), "Chunk must be 5 packed int64 values");
  std::memcpy(h + 3 * n, chunks.data(), chunks.size() * sizeof(Chunk));
  const at::Tensor device_meta = host.to(gs[0].device(), /*non_blocking=*/true);
  const int64_t* table = device_meta.const_data_ptr<int64_t>();
  const Chunk* device_chunks = reinterpret_cast<const Chunk*>(table + 3 * n);

  auto stream = static_cast<cudaStream_t>(at::accelerator::getCurrentStream(gs[0].device().index()).native_handle());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gs[0].scalar_type(), "sgd_step_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    sgd_step_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(chunks.size()), kThreads, 0, stream>>>(
        table, n, device_chunks, has_lr ? lr->const_data_ptr<opmath_t>() : nullptr, static_cast<opmath_t>(alpha),
        !ps.empty());
  });
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "sgd_step: CUDA launch failed: ", cudaGetErrorString(error));
  return outs;
}

}  // namespace
}  // namespace sgd_step
}  // namespace mzsr_fast

TORCH_LIBRARY_IMPL(mzsr_fast, CUDA, m) {
  m.impl("sgd_step", &mzsr_fast::sgd_step::sgd_step_cuda);
}
