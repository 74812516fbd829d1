// CUDA kernels of mzsr_fast::blur_downsample, its backward and the fused
// Gaussian variant (schemas: ../blur_downsample.cpp). The arithmetic of every
// phase lives in ../blur_downsample_math.h as host/device functions that the
// C++ tests run on the host; this file only lays out shared memory, launches,
// and puts barriers between the phases.
//
// forward: block = th x tw outputs of one plane (blur_math::plan_tile: at
//   most 8 x 32, clamped to the output, the shape with most threads resident); shared memory holds the
//   k * k weights (copied, or computed from theta / lambda1 / lambda2 and
//   normalised with a block tree sum: no weight tensor), and the padded input
//   tile s (th - 1) + k by s (tw - 1) + k (symmetric border applied while
//   loading). One thread per output.
// backward wrt x: one thread per input pixel gathers from every padded
//   position folding onto it (no atomics); weights in shared memory.
// backward wrt kernel: per block, grad_out tile and padded input tile in
//   shared memory, one thread per tap (strided), partial sums per block,
//   reduced with at::sum in a fixed order (deterministic).
// float32 / float64 accumulate in their own type; float16 / bfloat16 in float32.
// Only device-generic headers: this compiles against a CPU-only torch as well.
#include <ATen/DeviceAccelerator.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "ops/blur_downsample_checks.h"
#include "ops/blur_downsample_math.h"

namespace mzsr_fast {
namespace blur_cuda {
namespace {

using blur_math::TileGeometry;

constexpr int kTileW = 32;      // columns per block of the input-gradient kernel (one warp)
constexpr int kGradThreads = 256;
constexpr size_t kDefaultSmem = 48 * 1024;

template <typename T>
__device__ __forceinline__ T* shared_as() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return reinterpret_cast<T*>(smem_raw);
}

// ---------------------------------------------------------------------------
// Kernels

// weights: [Bk, k, k] (kGaussian false) or params: theta, lambda1, lambda2 as
// [3, Bk] (kGaussian true). Grid: (tiles_w, tiles_h, min(planes, 65535)).
template <typename scalar_t, typename acc_t, bool kGaussian>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ weights,
                               const acc_t* __restrict__ params, scalar_t* __restrict__ out, TileGeometry t,
                               int64_t C, int64_t planes, int64_t Bk) {
  acc_t* w = shared_as<acc_t>();
  acc_t* red = w + t.k * t.k;
  acc_t* tile = red + blockDim.x;
  const int tid = threadIdx.x, nthreads = blockDim.x, kk = t.k * t.k;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * t.th, j0 = static_cast<int64_t>(blockIdx.x) * t.tw;
  const int oy = tid / t.tw, ox = tid % t.tw;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t e = Bk == 1 ? 0 : plane / C;
    if (kGaussian) {
      blur_math::gaussian_weights_partial<acc_t>(w, red, params[e], params[Bk + e], params[2 * Bk + e], t.k, tid,
                                                 nthreads);
      __syncthreads();
      for (int stride = nthreads / 2; stride > 0; stride /= 2) {
        blur_math::tree_sum_step<acc_t>(red, stride, tid);
        __syncthreads();
      }
      blur_math::normalise_weights<acc_t>(w, red, kk, tid, nthreads);
    } else {
      blur_math::load_weights<acc_t>(weights + e * kk, w, kk, tid, nthreads);
    }
    blur_math::load_input_tile<acc_t, scalar_t>(x + plane * t.H * t.W, tile, t, i0, j0, tid, nthreads);
    __syncthreads();
    const int64_t i = i0 + oy, j = j0 + ox;
    if (i < t.Ho && j < t.Wo) {
      out[(plane * t.Ho + i) * t.Wo + j] = static_cast<scalar_t>(blur_math::tile_output<acc_t>(tile, w, t, oy, ox));
    }
    __syncthreads();  // shared memory is reused by the next plane
  }
}

// One thread per input pixel. Grid: (ceil(W / 32), ceil(H / 8), min(planes, 65535)).
template <typename scalar_t, typename acc_t>
__global__ void backward_x_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ weights,
                                  scalar_t* __restrict__ grad_x, TileGeometry t, int64_t C, int64_t planes,
                                  int64_t Bk) {
  acc_t* w = shared_as<acc_t>();
  const int tid = threadIdx.x, nthreads = blockDim.x, kk = t.k * t.k;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * (nthreads / kTileW) + tid / kTileW;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileW + tid % kTileW;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t e = Bk == 1 ? 0 : plane / C;
    blur_math::load_weights<acc_t>(weights + e * kk, w, kk, tid, nthreads);
    __syncthreads();
    if (row < t.H && col < t.W) {
      const acc_t v = blur_math::input_grad<acc_t, scalar_t>(grad + plane * t.Ho * t.Wo, w, t, row, col);
      grad_x[(plane * t.H + row) * t.W + col] = static_cast<scalar_t>(v);
    }
    __syncthreads();
  }
}

// partial: [planes, tiles_h, tiles_w, k * k]. Grid: (tiles_w, tiles_h, min(planes, 65535)).
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                       acc_t* __restrict__ partial, TileGeometry t, int64_t planes) {
  acc_t* gtile = shared_as<acc_t>();
  acc_t* tile = gtile + t.th * t.tw;
  const int tid = threadIdx.x, nthreads = blockDim.x, kk = t.k * t.k;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * t.th, j0 = static_cast<int64_t>(blockIdx.x) * t.tw;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    blur_math::load_grad_tile<acc_t, scalar_t>(grad + plane * t.Ho * t.Wo, gtile, t, i0, j0, tid, nthreads);
    blur_math::load_input_tile<acc_t, scalar_t>(x + plane * t.H * t.W, tile, t, i0, j0, tid, nthreads);
    __syncthreads();
    acc_t* dst = partial + ((plane * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * kk;
    for (int e = tid; e < kk; e += nthreads) dst[e] = blur_math::tile_kernel_grad<acc_t>(tile, gtile, t, e / t.k, e % t.k);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Host side

cudaStream_t current_stream(const at::Tensor& t) {
  return static_cast<cudaStream_t>(at::accelerator::getCurrentStream(t.device().index()).native_handle());
}

void check_launch(const char* op) {
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(error));
}

// Shared-memory limits of a device: the opt-in maximum per block and the total per SM.
struct SmemLimits {
  size_t optin, per_sm;
};

SmemLimits smem_limits(int device) {
  int optin = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess) {
    cudaGetLastError();
    return {kDefaultSmem, kDefaultSmem};
  }
  return {std::max(kDefaultSmem, static_cast<size_t>(optin)), std::max(kDefaultSmem, static_cast<size_t>(per_sm))};
}

// The output tile of a launch (blur_math::plan_tile): extra shared elements
// besides the input tile are fixed + per_thread * threads.
template <typename acc_t>
blur_math::TilePlan plan_tiles(int64_t k, int64_t s, int64_t Ho, int64_t Wo, int device, int64_t fixed,
                               int64_t per_thread, const char* op) {
  const SmemLimits limits = smem_limits(device);
  const blur_math::TilePlan plan =
      blur_math::plan_tile(k, s, Ho, Wo, sizeof(acc_t), fixed, per_thread, static_cast<int64_t>(kDefaultSmem),
                           static_cast<int64_t>(limits.optin), static_cast<int64_t>(limits.per_sm));
  TORCH_CHECK(plan.th > 0, op, ": a ", k, " x ", k, " kernel at stride ", s,
              " needs more shared memory than this GPU has; use backend='triton' or 'torch'");
  return plan;
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSmem) {
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    TORCH_CHECK(error == cudaSuccess, "blur_downsample: cannot reserve ", bytes,
                " bytes of shared memory: ", cudaGetErrorString(error));
  }
}

dim3 tile_grid(int64_t tiles_w, int64_t tiles_h, int64_t planes, const char* op) {
  TORCH_CHECK(tiles_w < (int64_t{1} << 31) && tiles_h <= 65535, op, ": image too large for one launch");
  return dim3(static_cast<unsigned>(tiles_w), static_cast<unsigned>(tiles_h),
              static_cast<unsigned>(std::min<int64_t>(planes, 65535)));
}

at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// weights [Bk, k, k] or params [3, Bk] in the accumulation type.
at::Tensor run_forward(const at::Tensor& x_in, const at::Tensor& weights_or_params, bool gaussian, int64_t Bk,
                       int64_t k, int64_t stride, const char* op) {
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = blur_math::output_size(H, stride), Wo = blur_math::output_size(W, stride);
  at::Tensor out = at::empty({B, C, Ho, Wo}, x.options());
  const int64_t planes = B * C;
  if (planes == 0) return out;
  const cudaStream_t stream = current_stream(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const blur_math::TilePlan plan = plan_tiles<acc_t>(k, stride, Ho, Wo, x.device().index(), k * k, 1, op);
    const TileGeometry t = blur_math::make_tile_geometry(H, W, static_cast<int>(k), static_cast<int>(stride),
                                                         plan.th, plan.tw);
    const dim3 grid = tile_grid((Wo + plan.tw - 1) / plan.tw, (Ho + plan.th - 1) / plan.th, planes, op);
    const dim3 block(plan.th * plan.tw);
    const acc_t* data = weights_or_params.const_data_ptr<acc_t>();
    if (gaussian) {
      auto kernel = forward_kernel<scalar_t, acc_t, true>;
      allow_smem(kernel, plan.smem);
      kernel<<<grid, block, plan.smem, stream>>>(x.const_data_ptr<scalar_t>(), nullptr, data,
                                                 out.mutable_data_ptr<scalar_t>(), t, C, planes, Bk);
    } else {
      auto kernel = forward_kernel<scalar_t, acc_t, false>;
      allow_smem(kernel, plan.smem);
      kernel<<<grid, block, plan.smem, stream>>>(x.const_data_ptr<scalar_t>(), data, nullptr,
                                                 out.mutable_data_ptr<scalar_t>(), t, C, planes, Bk);
    }
    check_launch(op);
  });
  return out;
}

at::Tensor blur_downsample_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t stride) {
  const char* op = "blur_downsample";
  blur_checks::check_x(x, at::kCUDA, op);
  blur_checks::check_kernel(x, kernel, stride, at::kCUDA, op);
  const at::Tensor weights = kernel.to(acc_type_of(x.scalar_type())).contiguous();
  return run_forward(x, weights, false, weights.size(0), weights.size(1), stride, op);
}

at::Tensor gaussian_blur_downsample_cuda(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& lambda1,
                                         const at::Tensor& lambda2, int64_t size, int64_t stride) {
  const char* op = "gaussian_blur_downsample";
  const int64_t Bk = blur_checks::check_gaussian(x, theta, lambda1, lambda2, size, stride, at::kCUDA, op);
  const at::ScalarType acc = acc_type_of(x.scalar_type());
  const c10::DeviceGuard guard(x.device());
  // [3, Bk]: three tiny device copies; the k x k weights are made in the kernel.
  at::Tensor params = at::empty({3, Bk}, x.options().dtype(acc));
  params.select(0, 0).copy_(theta);
  params.select(0, 1).copy_(lambda1);
  params.select(0, 2).copy_(lambda2);
  return run_forward(x, params, true, Bk, size, stride, op);
}

std::tuple<at::Tensor, at::Tensor> blur_downsample_backward_cuda(const at::Tensor& grad_out_in,
                                                                 const at::Tensor& x_in,
                                                                 const at::Tensor& kernel_in, int64_t stride,
                                                                 bool need_x, bool need_kernel) {
  const char* op = "blur_downsample_backward";
  blur_checks::check_backward(grad_out_in, x_in, kernel_in, stride, at::kCUDA, op);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t Ho = blur_math::output_size(H, stride), Wo = blur_math::output_size(W, stride);
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(x.scalar_type()).contiguous();
  const at::ScalarType acc = acc_type_of(x.scalar_type());
  const at::Tensor weights = kernel_in.to(acc).contiguous();
  const int64_t Bk = weights.size(0), k = weights.size(1), planes = B * C;
  at::Tensor grad_x = need_x ? at::empty({B, C, H, W}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = need_kernel ? at::zeros({Bk, k, k}, weights.options()) : at::empty({0}, weights.options());
  if (planes > 0 && (need_x || need_kernel)) {
    const cudaStream_t stream = current_stream(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (need_x) {
        const int rows_per_block = kGradThreads / kTileW;
        const size_t smem = static_cast<size_t>(k * k) * sizeof(acc_t);
        TORCH_CHECK(smem <= smem_limits(x.device().index()).optin, op, ": a ", k, " x ", k,
                    " kernel needs more shared memory than this GPU has; use backend='triton' or 'torch'");
        const TileGeometry t = blur_math::make_tile_geometry(H, W, static_cast<int>(k), static_cast<int>(stride),
                                                             1, kTileW);
        const dim3 grid = tile_grid((W + kTileW - 1) / kTileW, (H + rows_per_block - 1) / rows_per_block, planes, op);
        auto kernel = backward_x_kernel<scalar_t, acc_t>;
        allow_smem(kernel, smem);
        kernel<<<grid, kGradThreads, smem, stream>>>(grad_out.const_data_ptr<scalar_t>(),
                                                     weights.const_data_ptr<acc_t>(),
                                                     grad_x.mutable_data_ptr<scalar_t>(), t, C, planes, Bk);
        check_launch(op);
      }
      if (need_kernel) {
        const blur_math::TilePlan plan = plan_tiles<acc_t>(k, stride, Ho, Wo, x.device().index(), 0, 1, op);
        const TileGeometry t = blur_math::make_tile_geometry(H, W, static_cast<int>(k), static_cast<int>(stride),
                                                             plan.th, plan.tw);
        const int64_t tiles_w = (Wo + plan.tw - 1) / plan.tw, tiles_h = (Ho + plan.th - 1) / plan.th;
        const dim3 grid = tile_grid(tiles_w, tiles_h, planes, op);
        at::Tensor partial = at::empty({B, C * tiles_h * tiles_w, k * k}, x.options().dtype(acc));
        auto kernel = backward_kernel_kernel<scalar_t, acc_t>;
        allow_smem(kernel, plan.smem);
        kernel<<<grid, plan.th * plan.tw, plan.smem, stream>>>(grad_out.const_data_ptr<scalar_t>(),
                                                               x.const_data_ptr<scalar_t>(),
                                                               partial.mutable_data_ptr<acc_t>(), t, planes);
        check_launch(op);
        at::Tensor per_image = partial.sum(1);  // [B, k * k]
        grad_w = (Bk == 1 ? per_image.sum(0, /*keepdim=*/true) : per_image).view({Bk, k, k});
      }
    });
  }
  return {grad_x, grad_w.to(kernel_in.scalar_type())};
}

}  // namespace
}  // namespace blur_cuda
}  // namespace mzsr_fast

TORCH_LIBRARY_IMPL(mzsr_fast, CUDA, m) {
  m.impl("blur_downsample", &mzsr_fast::blur_cuda::blur_downsample_cuda);
  m.impl("blur_downsample_backward", &mzsr_fast::blur_cuda::blur_downsample_backward_cuda);
  m.impl("gaussian_blur_downsample", &mzsr_fast::blur_cuda::gaussian_blur_downsample_cuda);
}
