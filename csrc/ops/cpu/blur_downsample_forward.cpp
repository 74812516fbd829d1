// CPU kernels of mzsr_fast::blur_downsample and the fused Gaussian variant
// mzsr_fast::gaussian_blur_downsample (schemas: ../blur_downsample.cpp; index
// and weight math: ../blur_downsample_math.h; the shared layout:
// blur_downsample_layout.h; the backward: blur_downsample_backward.cpp).
//
// Layout trick. Every input row is padded once with the symmetric border and
// de-interleaved into s "phase rows" (phase p holds padded columns p, p + s,
// p + 2s, ...), each Wq long, in a scratch plane. Tap dx of output column j
// then reads phase dx % s at column j + dx / s: contiguous in j, so the inner
// loops run over a fixed block of output columns whose accumulators stay in
// vector registers for all k * k taps. Rows need no copy: output row i, tap
// dy reads scratch row sym(s i + dy - r).
//
// Work split (at::parallel_for, OpenMP): with many planes (B * C >= 4
// threads) each plane is one work item, padded into a per-thread scratch that
// stays in cache, and the whole op is one parallel region; with few large
// planes the scratch of all planes is filled first and the rows are split.
//
// float32 and float64 run natively; float16 and bfloat16 run in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/blur_downsample_checks.h"
#include "ops/blur_downsample_math.h"
#include "ops/cpu/blur_downsample_layout.h"

namespace mzsr_fast {
namespace {

// ---------------------------------------------------------------------------
// Forward: output rows [begin, end) of one plane (scratch: that plane's phase
// rows; out: that plane's output), with the k * k weights w. Blocks of NV vectors of output columns
// are the outer loop and rows the inner one, so the k scratch rows a block
// reads stay in cache from one output row to the next (s new rows each). The
// innermost loop runs over the taps of CH kernel rows at once, so CH * NV
// independent accumulator chains are in flight.
template <typename T, int NV>
MZSR_CLONES void forward_rows(const T* __restrict scratch, const T* __restrict w, T* __restrict out,
                              const Geometry& g, int64_t begin, int64_t end) {
  constexpr int L = lanes<T>();
  constexpr int CH = NV >= 4 ? 2 : (NV == 2 ? 4 : 8);
  typedef T V __attribute__((vector_size(64)));
  const int64_t k = g.k, s = g.s, Wq = g.Wq, rowlen = g.s * g.Wq;
  const int64_t* __restrict rowmap = g.rowmap.data();
  for (int64_t j0 = 0; j0 < g.Wo; j0 += NV * L) {
    const int64_t valid = std::min<int64_t>(NV * L, g.Wo - j0);
    for (int64_t i = begin; i < end; ++i) {
      const T* __restrict base = scratch + j0;
      V acc[CH][NV];
#pragma GCC unroll 8
      for (int c = 0; c < CH; ++c)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[c][v] = V{};
      int64_t dy0 = 0;
      for (; dy0 + CH <= k; dy0 += CH) {  // CH kernel rows together
        const T* rows[CH];
        const T* wr[CH];
#pragma GCC unroll 8
        for (int c = 0; c < CH; ++c) {
          rows[c] = base + rowmap[s * i + dy0 + c] * rowlen;
          wr[c] = w + (dy0 + c) * k;
        }
        for (int64_t p = 0; p < s && p < k; ++p) {
          for (int64_t dx = p, m = p * Wq; dx < k; dx += s, ++m) {
#pragma GCC unroll 8
            for (int c = 0; c < CH; ++c) {
              const T wv = wr[c][dx];
#pragma GCC unroll 4
              for (int v = 0; v < NV; ++v) {
                V src;
                std::memcpy(&src, rows[c] + m + v * L, sizeof(V));
                acc[c][v] += wv * src;
              }
            }
          }
        }
      }
      for (; dy0 < k; ++dy0) {  // the remaining rows one at a time
        const T* __restrict row = base + rowmap[s * i + dy0] * rowlen;
        const T* __restrict wr = w + dy0 * k;
        for (int64_t p = 0; p < s && p < k; ++p) {
          for (int64_t dx = p, m = p * Wq; dx < k; dx += s, ++m) {
            const T wv = wr[dx];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
              V src;
              std::memcpy(&src, row + m + v * L, sizeof(V));
              acc[0][v] += wv * src;
            }
          }
        }
      }
      T result[NV * L];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        V total = acc[0][v];
#pragma GCC unroll 8
        for (int c = 1; c < CH; ++c) total += acc[c][v];
        std::memcpy(result + v * L, &total, sizeof(V));
      }
      std::memcpy(out + i * g.Wo + j0, result, sizeof(T) * valid);
    }
  }
}

template <typename T>
void forward_plane_rows(const T* scratch, const T* w, T* out, const Geometry& g, int64_t begin, int64_t end) {
  constexpr int vl = lanes<T>();
  if (g.JB == 4 * vl) forward_rows<T, 4>(scratch, w, out, g, begin, end);
  else if (g.JB == 2 * vl) forward_rows<T, 2>(scratch, w, out, g, begin, end);
  else forward_rows<T, 1>(scratch, w, out, g, begin, end);
}

// weights_of(b, buffer) -> the k * k weights of image b (a pointer into the
// kernel tensor, or into buffer, which holds k * k values, for computed ones).
template <typename T, typename Weights>
void forward(const T* x, const Weights& weights_of, T* out, const Geometry& g) {
  const FillMap f = fill_map(g);
  const int64_t planes = g.B * g.C, plane_scratch = g.H * g.s * g.Wq;
  if (plane_items(g)) {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<T[]> scratch = uninitialised<T>(plane_scratch);
      std::vector<T> buffer(g.k * g.k);
      const T* w = nullptr;
      for (int64_t plane = begin; plane < end; ++plane) {
        if (!w || plane % g.C == 0) w = weights_of(plane / g.C, buffer.data());  // once per image
        fill_rows(x + plane * g.H * g.W, scratch.get(), g, f, g.H);
        forward_plane_rows(scratch.get(), w, out + plane * g.Ho * g.Wo, g, 0, g.Ho);
      }
    });
    return;
  }
  std::unique_ptr<T[]> scratch = uninitialised<T>(planes * plane_scratch);
  fill_all_rows(x, scratch.get(), g, f);
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, g.k * g.k * g.WoPad / 64));
  at::parallel_for(0, planes * g.Ho, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(g.k * g.k);
    for (int64_t lo = begin; lo < end;) {  // segments within one plane
      const int64_t plane = lo / g.Ho, hi = std::min(end, (plane + 1) * g.Ho);
      forward_plane_rows(scratch.get() + plane * plane_scratch, weights_of(plane / g.C, buffer.data()),
                         out + plane * g.Ho * g.Wo, g, lo - plane * g.Ho, hi - plane * g.Ho);
      lo = hi;
    }
  });
}

// Runs the forward in the compute type (float32 for float16/bfloat16 inputs).
// make_weights(scalar_t tag) -> weights_of functor for forward().
template <typename MakeWeights>
at::Tensor run_forward(const at::Tensor& x_in, int64_t Bk, int64_t k, int64_t stride,
                       const MakeWeights& make_weights) {
  const at::ScalarType ct = compute_type(x_in.scalar_type());
  const at::Tensor x = x_in.to(ct).contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  at::Tensor out = at::empty({B, C, output_size(x.size(2), stride), output_size(x.size(3), stride)},
                             x.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "blur_downsample_cpu", [&] {
      const Geometry g = make_geometry<scalar_t>(x, Bk, k, stride);
      forward<scalar_t>(x.const_data_ptr<scalar_t>(), make_weights(scalar_t(0)), out.mutable_data_ptr<scalar_t>(), g);
    });
  }
  return out.scalar_type() == x_in.scalar_type() ? out : out.to(x_in.scalar_type());
}

at::Tensor blur_downsample_cpu(const at::Tensor& x, const at::Tensor& kernel, int64_t stride) {
  blur_checks::check_x(x, at::kCPU, "blur_downsample");
  blur_checks::check_kernel(x, kernel, stride, at::kCPU, "blur_downsample");
  const at::Tensor weights = kernel.to(compute_type(x.scalar_type())).contiguous();
  const int64_t Bk = weights.size(0), k = weights.size(1);
  return run_forward(x, Bk, k, stride, [&](auto tag) {
    using T = decltype(tag);
    const T* base = weights.const_data_ptr<T>();
    return [base, Bk, k](int64_t b, T*) { return base + (Bk == 1 ? 0 : b) * k * k; };
  });
}

at::Tensor gaussian_blur_downsample_cpu(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& lambda1,
                                        const at::Tensor& lambda2, int64_t size, int64_t stride) {
  const int64_t Bk =
      blur_checks::check_gaussian(x, theta, lambda1, lambda2, size, stride, at::kCPU, "gaussian_blur_downsample");
  // Each thread computes the normalised k * k weights of an image into its
  // own small buffer when it starts on that image (in float64: a few hundred
  // exp), so no weight tensor is materialised.
  const at::Tensor t = theta.to(at::kDouble).contiguous(), l1 = lambda1.to(at::kDouble).contiguous(),
                   l2 = lambda2.to(at::kDouble).contiguous();
  const double* tp = t.data_ptr<double>();
  const double* l1p = l1.data_ptr<double>();
  const double* l2p = l2.data_ptr<double>();
  return run_forward(x, Bk, size, stride, [&](auto tag) {
    using T = decltype(tag);
    return [=](int64_t b, T* buffer) {
      const int64_t e = Bk == 1 ? 0 : b;
      const auto q = blur_math::gaussian_quadratic<double>(tp[e], l1p[e], l2p[e]);
      std::vector<double> w(size * size);
      double total = 0;
      for (int64_t dy = 0; dy < size; ++dy)
        for (int64_t dx = 0; dx < size; ++dx) total += (w[dy * size + dx] = blur_math::gaussian_weight(q, dy, dx, size));
      for (int64_t i = 0; i < size * size; ++i) buffer[i] = static_cast<T>(w[i] / total);
      return static_cast<const T*>(buffer);
    };
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mzsr_fast, CPU, m) {
  m.impl("blur_downsample", &blur_downsample_cpu);
  m.impl("gaussian_blur_downsample", &gaussian_blur_downsample_cpu);
}

}  // namespace mzsr_fast
