// CUDA kernel of mzsr_fast::sgd_step: one launch per group of up to
// kLaunchTensors tensors (one launch for the 16 tensors of the MZSR net).
// Everything a launch needs, the pointers and the plan of each tensor of its
// group, travels as one kernel argument (LaunchTable, a fixed-size struct of
// about 1.6 KB, under the 4 KB argument limit): nothing is copied from the host,
// so the launch can be captured in a CUDA graph. Block b finds its tensor in the
// group's prefix sums of chunks and its chunk with chunk_at() (sgd_step_math.h),
// then updates that chunk.
// Only device-generic headers: this compiles against a CPU-only torch as well.
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
constexpr int kLaunchTensors = 32;

struct LaunchTable {
  const void* params[kLaunchTensors];  // nullptr entries without params
  const void* grads[kLaunchTensors];
  void* out[kLaunchTensors];
  int64_t slice_len[kLaunchTensors];
  int64_t chunks_per_slice[kLaunchTensors];
  int64_t first_chunk[kLaunchTensors + 1];  // prefix sums of the tensors' chunks: block ids
  int64_t tensor[kLaunchTensors];           // index in the whole list (the rates table's column)
  bool broadcast[kLaunchTensors];
  int count;                                // tensors in this launch
};
static_assert(sizeof(LaunchTable) <= 4096, "kernel arguments are limited to 4 KB");

template <typename scalar_t, typename opmath_t>
__global__ void sgd_step_kernel(const LaunchTable table, const opmath_t* __restrict__ rates, int64_t rate_tasks,
                                int64_t rate_tensors, opmath_t alpha, bool has_params) {
  const int64_t block = blockIdx.x;
  int e = 0;
  while (e + 1 < table.count && table.first_chunk[e + 1] <= block) ++e;
  const Chunk k = chunk_at(table.tensor[e], block - table.first_chunk[e], table.slice_len[e],
                           table.chunks_per_slice[e], table.broadcast[e], rate_tasks, rate_tensors, kCudaChunk);
  const opmath_t r = rate<opmath_t>(rates, k.rate_index, alpha);
  const scalar_t* g = static_cast<const scalar_t*>(table.grads[e]) + k.offset;
  scalar_t* out = static_cast<scalar_t*>(table.out[e]) + k.offset;
  if (has_params) {
    const scalar_t* p = static_cast<const scalar_t*>(table.params[e]) + k.param_offset;
    for (int64_t j = threadIdx.x; j < k.length; j += blockDim.x) out[j] = update<scalar_t, opmath_t>(p[j], g[j], r);
  } else {
    for (int64_t j = threadIdx.x; j < k.length; j += blockDim.x) out[j] = scaled<scalar_t, opmath_t>(g[j], r);
  }
}

std::vector<at::Tensor> sgd_step_cuda(at::TensorList params, at::TensorList grads,
                                      const c10::optional<at::Tensor>& rates, double alpha) {
  const std::vector<at::Tensor> ps = params.vec(), gs = grads.vec();
  const std::vector<TensorShape> shapes = check(ps, gs, rates, c10::DeviceType::CUDA);
  std::vector<at::Tensor> outs;
  outs.reserve(gs.size());
  for (const at::Tensor& g : gs) outs.push_back(at::empty(g.sizes(), g.options()));
  if (gs.empty()) return outs;
  const c10::DeviceGuard guard(gs[0].device());
  const bool has_rates = rates.has_value() && rates->defined();
  const int64_t rate_tasks = has_rates ? rates->size(0) : 1, rate_tensors = has_rates ? rates->size(1) : 1;
  auto stream = static_cast<cudaStream_t>(at::accelerator::getCurrentStream(gs[0].device().index()).native_handle());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gs[0].scalar_type(), "sgd_step_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t* rates_data = has_rates ? rates->const_data_ptr<opmath_t>() : nullptr;
    LaunchTable table{};
    auto launch = [&] {
      const int64_t blocks = table.first_chunk[table.count];
      TORCH_CHECK(blocks < (int64_t{1} << 31), "sgd_step: too many chunks for one launch (", blocks, ")");
      sgd_step_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          table, rates_data, rate_tasks, rate_tensors, static_cast<opmath_t>(alpha), !ps.empty());
      const cudaError_t error = cudaGetLastError();
      TORCH_CHECK(error == cudaSuccess, "sgd_step: CUDA launch failed: ", cudaGetErrorString(error));
      table.count = 0;
    };
    for (size_t i = 0; i < gs.size(); ++i) {
      const TensorPlan tp = tensor_plan(shapes[i], rate_tasks, kCudaChunk);
      if (tp.chunks == 0) continue;
      const int e = table.count;
      table.params[e] = ps.empty() ? nullptr : ps[i].const_data_ptr();
      table.grads[e] = gs[i].const_data_ptr();
      table.out[e] = outs[i].mutable_data_ptr();
      table.slice_len[e] = tp.slice_len;
      table.chunks_per_slice[e] = tp.chunks_per_slice;
      table.broadcast[e] = tp.broadcast;
      table.tensor[e] = static_cast<int64_t>(i);
      if (e == 0) table.first_chunk[0] = 0;
      table.first_chunk[e + 1] = table.first_chunk[e] + tp.chunks;
      table.count = e + 1;
      if (table.count == kLaunchTensors) launch();
    }
    if (table.count > 0) launch();
  });
  return outs;
}

}  // namespace
}  // namespace sgd_step
}  // namespace mzsr_fast

TORCH_LIBRARY_IMPL(mzsr_fast, CUDA, m) {
  m.impl("sgd_step", &mzsr_fast::sgd_step::sgd_step_cuda);
}
