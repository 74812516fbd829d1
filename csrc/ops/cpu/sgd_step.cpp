// CPU kernel of mzsr_fast::sgd_step: one parallel loop over every element of every
// tensor. Threads get equal shares of the virtual concatenation of all chunks
// (at::parallel_for, OpenMP underneath) and walk the chunks their share overlaps.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/sgd_step_math.h"

namespace mzsr_fast {
namespace sgd_step {
namespace {

constexpr int64_t kCpuChunk = int64_t{1} << 20;  // threads split by elements, not chunks
constexpr int64_t kGrain = 32768;                 // elements per thread at least

template <typename scalar_t>
void run(const std::vector<Chunk>& chunks, const std::vector<const scalar_t*>& p,
         const std::vector<const scalar_t*>& g, const std::vector<scalar_t*>& out,
         const at::opmath_type<scalar_t>* rates, at::opmath_type<scalar_t> alpha) {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<int64_t> starts(chunks.size() + 1, 0);  // element prefix sums
  for (size_t c = 0; c < chunks.size(); ++c) starts[c + 1] = starts[c] + chunks[c].length;
  const bool has_params = !p.empty();
  at::parallel_for(0, starts.back(), kGrain, [&](int64_t begin, int64_t end) {
    size_t c = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (; c < chunks.size() && starts[c] < end; ++c) {
      const Chunk& k = chunks[c];
      const int64_t lo = std::max(begin, starts[c]) - starts[c];
      const int64_t hi = std::min(end, starts[c + 1]) - starts[c];
      const opmath_t r = rate<opmath_t>(rates, k.rate_index, alpha);
      const scalar_t* gc = g[k.tensor] + k.offset;
      scalar_t* oc = out[k.tensor] + k.offset;
      if (has_params) {
        const scalar_t* pc = p[k.tensor] + k.param_offset;
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) oc[j] = update<scalar_t, opmath_t>(pc[j], gc[j], r);
      } else {
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) oc[j] = scaled<scalar_t, opmath_t>(gc[j], r);
      }
    }
  });
}

std::vector<at::Tensor> sgd_step_cpu(at::TensorList params, at::TensorList grads,
                                     const c10::optional<at::Tensor>& rates, double alpha) {
  const std::vector<at::Tensor> ps = params.vec(), gs = grads.vec();
  const std::vector<TensorShape> shapes = check(ps, gs, rates, c10::DeviceType::CPU);
  std::vector<at::Tensor> outs;
  outs.reserve(gs.size());
  for (const at::Tensor& g : gs) outs.push_back(at::empty(g.sizes(), g.options()));
  if (gs.empty()) return outs;
  const bool has_rates = rates.has_value() && rates->defined();
  const int64_t rate_tasks = has_rates ? rates->size(0) : 1, rate_tensors = has_rates ? rates->size(1) : 1;
  const std::vector<Chunk> chunks = plan(shapes, rate_tasks, rate_tensors, kCpuChunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gs[0].scalar_type(), "sgd_step_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> p, g;
    std::vector<scalar_t*> o;
    for (const at::Tensor& t : ps) p.push_back(t.const_data_ptr<scalar_t>());
    for (const at::Tensor& t : gs) g.push_back(t.const_data_ptr<scalar_t>());
    for (at::Tensor& t : outs) o.push_back(t.mutable_data_ptr<scalar_t>());
    run<scalar_t>(chunks, p, g, o, has_rates ? rates->const_data_ptr<opmath_t>() : nullptr,
                  static_cast<opmath_t>(alpha));
  });
  return outs;
}

}  // namespace
}  // namespace sgd_step
}  // namespace mzsr_fast

TORCH_LIBRARY_IMPL(mzsr_fast, CPU, m) {
  m.impl("sgd_step", &mzsr_fast::sgd_step::sgd_step_cpu);
}
