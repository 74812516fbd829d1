// sgd_step: the arithmetic and the chunk plan shared by the CPU and CUDA kernels.
//
//   out_i = p_i - alpha * rates[task, i] * g_i       (p_i = 0 when params is empty)
//
// for every tensor i of a list. rates is an optional [rate_tasks, rate_tensors] table:
// rate_tasks is 1 (one rate for all tasks) or T (the leading axis of every tensor),
// rate_tensors is 1 (one rate for all tensors) or n (one per tensor). A param may be
// broadcast over its leading task axis (stride 0, as made by p.expand(T, ...)).
//
// Rounding (decided once, for every backend): the update is computed in opmath
// (float32 for half types, else the tensor's own type) with TWO roundings, the
// product r * g and then the difference p - r * g, and the result is rounded to
// the storage type. This is what the plain-PyTorch reference does
// (mzsr_fast.reference.sgd_step: torch._foreach_mul then torch._foreach_sub), so
// every backend equals the reference bit for bit and the tests use tolerance 0
// (fp64, fp32, and fp16/bf16, whose single rounding to storage follows the same
// fp32 value). A fused multiply-add would round once and differ from the
// reference by 1 ulp of opmath on a few percent of the elements (and by one
// storage ulp on rare half-precision elements), with no reference to check it
// against exactly. How each backend keeps the two roundings:
// - C++ (CPU): every translation unit is compiled with -ffp-contract=off
//   (csrc/compile_flags.txt, read by setup.py and CMakeLists.txt), so the
//   compiler never contracts the product and the difference into an FMA.
// - CUDA: mul_rn / sub_rn below are __fmul_rn / __fsub_rn (__dmul_rn /
//   __dsub_rn), which nvcc never contracts, whatever --fmad says.
// - Triton: the kernel is launched with enable_fp_fusion=False.
//
// Multi-tensor design: every tensor is cut into chunks (tensor index, offset
// into grads/out, offset into params, length, rate index), each lying inside one
// task slice of one tensor. A chunk is found from its tensor's TensorPlan and
// its index within the tensor by chunk_at(), pure integer arithmetic that the
// CPU loop (through plan()), the CUDA kernel (per block, on the device) and the
// Triton kernel (the same formulas in kernels/sgd_step.py) share. The CUDA and
// Triton launches take every pointer and size as kernel arguments, so a launch
// copies nothing from the host and can be captured in a CUDA graph.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define MZSR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MZSR_HOST_DEVICE inline
#endif

namespace mzsr_fast {
namespace sgd_step {

// One contiguous run of elements of one tensor that uses one rate.
struct Chunk {
  int64_t tensor;        // index into the lists
  int64_t offset;        // first element in grads[tensor] and out[tensor]
  int64_t param_offset;  // first element in params[tensor] (differs when broadcast)
  int64_t length;        // number of elements
  int64_t rate_index;    // index into the flat rates table (ignored without rates)
};

// The rate of one chunk: alpha times its entry of the rates table (or alpha alone).
template <typename opmath_t>
MZSR_HOST_DEVICE opmath_t rate(const opmath_t* rates, int64_t rate_index, opmath_t alpha) {
  return rates == nullptr ? alpha : alpha * rates[rate_index];
}

// a * b and a - b, each rounded once to nearest and never fused (see the top).
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T>
inline T mul_rn(T a, T b) { return a * b; }
template <typename T>
inline T sub_rn(T a, T b) { return a - b; }
#endif

// One element: p - rate * g in opmath (two roundings), rounded to the storage type.
template <typename scalar_t, typename opmath_t>
MZSR_HOST_DEVICE scalar_t update(scalar_t p, scalar_t g, opmath_t r) {
  return static_cast<scalar_t>(sub_rn(static_cast<opmath_t>(p), mul_rn(r, static_cast<opmath_t>(g))));
}

// Without params (p = 0): -rate * g, the gradient of sgd_step wrt its grads.
template <typename scalar_t, typename opmath_t>
MZSR_HOST_DEVICE scalar_t scaled(scalar_t g, opmath_t r) {
  return static_cast<scalar_t>(-mul_rn(r, static_cast<opmath_t>(g)));
}

// Index into the flat rates table of the rate of tensor i, task t.
MZSR_HOST_DEVICE int64_t rate_index(int64_t task, int64_t tensor, int64_t rate_tasks, int64_t rate_tensors) {
  return (rate_tasks > 1 ? task : 0) * rate_tensors + (rate_tensors > 1 ? tensor : 0);
}

// What the planner needs to know about one tensor.
struct TensorShape {
  int64_t numel;
  int64_t tasks;            // size of the leading axis (1 for 0-D tensors)
  bool param_broadcast;     // params[i] has stride 0 on its leading axis
};

// How one tensor is cut: into task slices when the rate or the param layout
// varies per task (else one slice), each slice into chunks of chunk_size.
struct TensorPlan {
  int64_t slice_len;         // elements per slice
  int64_t chunks_per_slice;  // ceil(slice_len / chunk_size)
  int64_t chunks;            // chunks of the whole tensor (0 when it is empty)
  bool broadcast;            // params[i] is read from one slice for every task
};

inline TensorPlan tensor_plan(const TensorShape& s, int64_t rate_tasks, int64_t chunk_size) {
  if (s.numel == 0) return TensorPlan{0, 0, 0, s.param_broadcast};
  const int64_t slices = (rate_tasks > 1 || s.param_broadcast) ? s.tasks : 1;
  const int64_t slice_len = s.numel / slices;
  const int64_t per_slice = (slice_len + chunk_size - 1) / chunk_size;
  return TensorPlan{slice_len, per_slice, slices * per_slice, s.param_broadcast};
}

// Chunk c (0 <= c < chunks) of tensor `tensor`, from its plan's fields.
MZSR_HOST_DEVICE Chunk chunk_at(int64_t tensor, int64_t c, int64_t slice_len, int64_t chunks_per_slice,
                                bool broadcast, int64_t rate_tasks, int64_t rate_tensors, int64_t chunk_size) {
  const int64_t t = c / chunks_per_slice;
  const int64_t start = (c - t * chunks_per_slice) * chunk_size;
  const int64_t len = slice_len - start < chunk_size ? slice_len - start : chunk_size;
  const int64_t offset = t * slice_len + start;
  return Chunk{tensor, offset, broadcast ? start : offset, len, rate_index(t, tensor, rate_tasks, rate_tensors)};
}

// Every chunk of every tensor, in order (the CPU kernel's work list).
inline std::vector<Chunk> plan(const std::vector<TensorShape>& shapes, int64_t rate_tasks, int64_t rate_tensors,
                               int64_t chunk_size) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(shapes.size()); ++i) {
    const TensorPlan tp = tensor_plan(shapes[i], rate_tasks, chunk_size);
    for (int64_t c = 0; c < tp.chunks; ++c) {
      chunks.push_back(chunk_at(i, c, tp.slice_len, tp.chunks_per_slice, tp.broadcast, rate_tasks, rate_tensors,
                                chunk_size));
    }
  }
  return chunks;
}

}  // namespace sgd_step
}  // namespace mzsr_fast

// ---------------------------------------------------------------------------
// Host side (both backends): argument checks and the description of the lists.
// Only device-generic ATen headers, so nvcc compiles this too.
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace mzsr_fast {
namespace sgd_step {

inline bool is_param_broadcast(const at::Tensor& p) {
  return p.dim() >= 1 && p.size(0) > 1 && p.stride(0) == 0 && p.select(0, 0).is_contiguous();
}

// Checks the arguments of mzsr_fast::sgd_step and describes the tensors for plan().
// The Python wrapper checks the same with friendlier messages; these guard direct calls.
inline std::vector<TensorShape> check(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                                      const c10::optional<at::Tensor>& rates, c10::DeviceType device_type) {
  const bool has_params = !params.empty();
  TORCH_CHECK(!has_params || params.size() == grads.size(), "sgd_step: params has ", params.size(),
              " tensors but grads has ", grads.size());
  std::vector<TensorShape> shapes;
  shapes.reserve(grads.size());
  int64_t leading = -1;  // common leading size, -1 when the tensors disagree
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.device().type() == device_type, "sgd_step: grads[", i, "] is on ", g.device(),
                ", this kernel runs on ", device_type);
    TORCH_CHECK(g.device() == grads[0].device(), "sgd_step: grads[", i, "] is on ", g.device(), ", grads[0] on ",
                grads[0].device());
    TORCH_CHECK(at::isFloatingType(g.scalar_type()), "sgd_step: grads[", i, "] has dtype ", g.scalar_type(),
                ", expected a floating-point dtype");
    TORCH_CHECK(g.scalar_type() == grads[0].scalar_type(), "sgd_step: grads[", i, "] has dtype ",
                g.scalar_type(), ", grads[0] has ", grads[0].scalar_type());
    TORCH_CHECK(g.is_contiguous(), "sgd_step: grads[", i, "] must be contiguous");
    bool broadcast = false;
    if (has_params) {
      const at::Tensor& p = params[i];
      TORCH_CHECK(p.sizes() == g.sizes(), "sgd_step: params[", i, "] has shape ", p.sizes(), ", grads[", i,
                  "] has shape ", g.sizes());
      TORCH_CHECK(p.scalar_type() == g.scalar_type(), "sgd_step: params[", i, "] has dtype ", p.scalar_type(),
                  ", grads[", i, "] has ", g.scalar_type());
      TORCH_CHECK(p.device() == g.device(), "sgd_step: params[", i, "] is on ", p.device(), ", grads[", i,
                  "] on ", g.device());
      broadcast = is_param_broadcast(p);
      TORCH_CHECK(broadcast || p.is_contiguous(), "sgd_step: params[", i,
                  "] must be contiguous or broadcast over its leading axis (p.expand(T, ...))");
    }
    const int64_t tasks = g.dim() == 0 ? 1 : g.size(0);
    if (i == 0) leading = g.dim() == 0 ? -1 : tasks;
    else if (g.dim() == 0 || tasks != leading) leading = -1;
    shapes.push_back(TensorShape{g.numel(), tasks, broadcast});
  }
  if (rates.has_value() && rates->defined()) {
    const at::Tensor& r = *rates;
    TORCH_CHECK(r.dim() == 2, "sgd_step: rates must be a [rate_tasks, rate_tensors] table, got shape ", r.sizes());
    TORCH_CHECK(r.is_contiguous(), "sgd_step: rates must be contiguous");
    if (!grads.empty()) {
      TORCH_CHECK(r.device() == grads[0].device(), "sgd_step: rates is on ", r.device(), ", grads on ",
                  grads[0].device());
      const auto opmath = at::toOpMathType(grads[0].scalar_type());
      TORCH_CHECK(r.scalar_type() == opmath, "sgd_step: rates has dtype ", r.scalar_type(), ", expected ", opmath,
                  " (the compute dtype of ", grads[0].scalar_type(), ")");
    }
    TORCH_CHECK(r.size(1) == 1 || r.size(1) == static_cast<int64_t>(grads.size()), "sgd_step: rates has ",
                r.size(1), " columns, expected 1 or one per tensor (", grads.size(), ")");
    TORCH_CHECK(r.size(0) == 1 || r.size(0) == leading, "sgd_step: rates has ", r.size(0),
                " rows, expected 1 or the leading (task) size shared by every tensor");
  }
  return shapes;
}

}  // namespace sgd_step
}  // namespace mzsr_fast
