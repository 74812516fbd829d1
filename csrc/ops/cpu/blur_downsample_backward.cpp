// CPU kernel of mzsr_fast::blur_downsample_backward (schema:
// ../blur_downsample.cpp; index math: ../blur_downsample_math.h; the shared
// layout, also that of the forward: blur_downsample_layout.h and
// blur_downsample_forward.cpp).
//
// Backward wrt x is computed per input row t in gather form: for each padded
// row y that folds onto t (sym(y - r) == t), the padded gradient row is a
// correlation of the zero-padded grad_out rows with the kernel, built in the
// same phase layout, then folded through the column border map. No atomics,
// no padded gradient plane. Backward wrt the kernel is a reduction over
// (c, i, j) of grad_out * padded input with register accumulators for a group
// of taps; each work item writes its own k * k partial sums, added in a fixed
// order at the end (deterministic).
//
// Work split as in the forward: one plane per work item when there are many
// planes, else rows (input rows for x, runs of output rows for the kernel).
//
// float32 and float64 run natively; float16 and bfloat16 run in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "ops/blur_downsample_checks.h"
#include "ops/blur_downsample_math.h"
#include "ops/cpu/blur_downsample_layout.h"

namespace mzsr_fast {
namespace {

// ---------------------------------------------------------------------------
// grad_out rows [0, rows) zero-padded to Wg: D zeros, the Wo values, zeros.
template <typename T>
void fill_grad_rows(const T* grad, T* gpad, const Geometry& g, int64_t rows) {
  for (int64_t n = 0; n < rows; ++n) {
    T* dst = gpad + n * g.Wg;
    std::fill(dst, dst + g.D, T(0));
    std::memcpy(dst + g.D, grad + n * g.Wo, sizeof(T) * g.Wo);
    std::fill(dst + g.D + g.Wo, dst + g.Wg, T(0));
  }
}

// For each input row t, the padded rows y in [0, Hp) with sym(y - r, H) == t:
// ys[offsets[t] .. offsets[t + 1]).
struct RowPreimages {
  std::vector<int64_t> offsets, ys;
};

RowPreimages row_preimages(const Geometry& g) {
  RowPreimages pre;
  pre.offsets.assign(g.H + 1, 0);
  for (int64_t y = 0; y < g.Hp; ++y) pre.offsets[symmetric_index(y - g.r, g.H) + 1]++;
  for (int64_t t = 0; t < g.H; ++t) pre.offsets[t + 1] += pre.offsets[t];
  pre.ys.resize(g.Hp);
  std::vector<int64_t> fill(pre.offsets.begin(), pre.offsets.end() - 1);
  for (int64_t y = 0; y < g.Hp; ++y) pre.ys[fill[symmetric_index(y - g.r, g.H)]++] = y;
  return pre;
}

// Padded gradient row y in phase layout: gp[p * Qpad + q] for padded column
// q s + p, gathered from the output rows i with 0 <= y - s i < k:
//   gp[p][q] = sum_i sum_m wpad[y - s i][m s + p] * grad_out[i][q - m]
// (wpad: the kernel with each row zero-padded to M s columns, M = ceil(k / s);
// gpad_plane rows hold grad_out shifted right by D with zeros around). PH
// phases are done together, so each loaded grad_out vector feeds PH
// accumulators; CH chains over i keep enough FMAs in flight when PH * NV is
// small. Vectors are GCC vector extensions of one cache line.
template <typename T, int PH, int NV>
MZSR_CLONES void padded_grad_row(const T* __restrict gpad_plane, const T* __restrict wpad, T* __restrict gp,
                                 const Geometry& g, int64_t y) {
  constexpr int L = lanes<T>();
  constexpr int CH = PH * NV >= 4 ? 1 : (PH * NV >= 2 ? 2 : 4);
  typedef T V __attribute__((vector_size(64)));
  const int64_t k = g.k, s = g.s, Qpad = g.Qpad, D = g.D, Wg = g.Wg;
  const int64_t M = (k + s - 1) / s, kS = M * s;
  const int64_t i_lo = y >= k ? (y - k + s) / s : 0;  // ceil((y - k + 1) / s)
  const int64_t i_hi = std::min(g.Ho - 1, y / s);
  for (int64_t p0 = 0; p0 < s; p0 += PH) {
    for (int64_t q0 = 0; q0 < Qpad; q0 += NV * L) {
      V acc[CH][PH][NV];
#pragma GCC unroll 4
      for (int c = 0; c < CH; ++c)
#pragma GCC unroll 4
        for (int pp = 0; pp < PH; ++pp)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[c][pp][v] = V{};
      for (int64_t i0 = i_lo; i0 <= i_hi; i0 += CH) {
#pragma GCC unroll 4
        for (int c = 0; c < CH; ++c) {
          const int64_t i = i0 + c;
          if (i > i_hi) break;
          const T* __restrict wr = wpad + (y - s * i) * kS + p0;
          const T* __restrict grow = gpad_plane + i * Wg + D + q0;
          for (int64_t m = 0; m < M; ++m) {
            V src[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) std::memcpy(&src[v], grow - m + v * L, sizeof(V));
#pragma GCC unroll 4
            for (int pp = 0; pp < PH; ++pp) {
              const T wv = wr[m * s + pp];
#pragma GCC unroll 4
              for (int v = 0; v < NV; ++v) acc[c][pp][v] += wv * src[v];
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int pp = 0; pp < PH; ++pp)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          V total = acc[0][pp][v];
#pragma GCC unroll 4
          for (int c = 1; c < CH; ++c) total += acc[c][pp][v];
          std::memcpy(gp + (p0 + pp) * Qpad + q0 + v * L, &total, sizeof(V));
        }
    }
  }
}

// Fold a padded gradient row (phase layout) onto an input row accumulator:
// acc[sym(col - r, W)] += padded column col, for col in [0, Wp). The groups of
// S columns q S .. q S + S - 1 (q in [q_lo, q_hi)) that all map to the
// interior are a plain re-interleave; the other columns come from a list
// computed once per call.
struct FoldMap {
  int64_t q_lo, q_hi;
  std::vector<int64_t> from, to;  // phase-layout index -> input column
};

FoldMap fold_map(const Geometry& g) {
  const int64_t s = g.s, W = g.W, r = g.r, Wp = g.Wp;
  FoldMap f;
  const int64_t col_end = std::min(r + W, Wp);  // interior columns: [r, col_end)
  f.q_lo = std::min((r + s - 1) / s, col_end / s);
  f.q_hi = std::max(f.q_lo, col_end / s);
  for (int64_t col = 0; col < Wp; ++col) {
    if (col >= f.q_lo * s && col < f.q_hi * s) continue;
    f.from.push_back((col % s) * g.Qpad + col / s);
    f.to.push_back(symmetric_index(col - r, W));
  }
  return f;
}

template <typename T, int S>
MZSR_CLONES void fold_row(const T* __restrict gp, T* __restrict acc, const Geometry& g, const FoldMap& f) {
  const int64_t s = S > 0 ? S : g.s;
  const int64_t r = g.r, Qpad = g.Qpad;
  T* __restrict out = acc - r;
  if (S > 0) {
    for (int64_t q = f.q_lo; q < f.q_hi; ++q)
      for (int p = 0; p < S; ++p) out[q * S + p] += gp[p * Qpad + q];
  } else {
    for (int64_t p = 0; p < s; ++p)
      for (int64_t q = f.q_lo; q < f.q_hi; ++q) out[q * s + p] += gp[p * Qpad + q];
  }
  const int64_t n = static_cast<int64_t>(f.from.size());
  for (int64_t e = 0; e < n; ++e) acc[f.to[e]] += gp[f.from[e]];
}

// Input rows [begin, end) of one plane's gradient (gpad: that plane's padded
// grad_out rows; w: its kernel, rows padded to a multiple of s).
template <typename T, int PH, int NV>
void backward_x_rows(const T* gpad, const T* w, T* grad_x, const Geometry& g, const RowPreimages& pre,
                     const FoldMap& fm, int64_t begin, int64_t end) {
  std::vector<T> buffer(g.s * g.Qpad + g.W);
  T* gp = buffer.data();
  T* acc = gp + g.s * g.Qpad;
  for (int64_t t = begin; t < end; ++t) {
    std::fill(acc, acc + g.W, T(0));
    for (int64_t e = pre.offsets[t]; e < pre.offsets[t + 1]; ++e) {
      padded_grad_row<T, PH, NV>(gpad, w, gp, g, pre.ys[e]);
      switch (g.s) {
        case 1: fold_row<T, 1>(gp, acc, g, fm); break;
        case 2: fold_row<T, 2>(gp, acc, g, fm); break;
        case 3: fold_row<T, 3>(gp, acc, g, fm); break;
        case 4: fold_row<T, 4>(gp, acc, g, fm); break;
        default: fold_row<T, 0>(gp, acc, g, fm); break;
      }
    }
    std::memcpy(grad_x + t * g.W, acc, sizeof(T) * g.W);
  }
}

template <typename T, int PH>
void backward_x_phases(const T* gpad, const T* w, T* grad_x, const Geometry& g, const RowPreimages& pre,
                       const FoldMap& fm, int64_t begin, int64_t end) {
  constexpr int vl = lanes<T>();
  if (g.JBx == 4 * vl) backward_x_rows<T, PH, (PH <= 2 ? 4 : 2)>(gpad, w, grad_x, g, pre, fm, begin, end);
  else if (g.JBx == 2 * vl) backward_x_rows<T, PH, 2>(gpad, w, grad_x, g, pre, fm, begin, end);
  else backward_x_rows<T, PH, 1>(gpad, w, grad_x, g, pre, fm, begin, end);
}

template <typename T>
void backward_x_plane_rows(const T* gpad, const T* w, T* grad_x, const Geometry& g, const RowPreimages& pre,
                           const FoldMap& fm, int64_t begin, int64_t end) {
  switch (g.s) {
    case 1: backward_x_phases<T, 1>(gpad, w, grad_x, g, pre, fm, begin, end); break;
    case 2: backward_x_phases<T, 2>(gpad, w, grad_x, g, pre, fm, begin, end); break;
    case 3: backward_x_phases<T, 3>(gpad, w, grad_x, g, pre, fm, begin, end); break;
    case 4: backward_x_phases<T, 4>(gpad, w, grad_x, g, pre, fm, begin, end); break;
    default: backward_x_phases<T, 1>(gpad, w, grad_x, g, pre, fm, begin, end); break;
  }
}

// ---------------------------------------------------------------------------
// Kernel gradient of output rows [begin, end) of one plane: partial[dy k + dx]
// = sum over those rows i and all j of grad_out[i, j] * padded x[s i + dy,
// s j + dx]. Taps go in groups of G with one vector accumulator of one cache
// line per tap (GCC vector extensions: the loop over taps must stay in
// registers, which the auto-vectoriser does not manage); taps past k are
// computed on a valid column and dropped.
template <typename T, int G>
MZSR_CLONES void kernel_grad_rows(const T* __restrict scratch, const T* __restrict gpad, T* __restrict partial,
                                  const Geometry& g, int64_t begin, int64_t end) {
  constexpr int L = lanes<T>();
  typedef T V __attribute__((vector_size(64)));
  const int64_t k = g.k, s = g.s, rowlen = g.s * g.Wq;
  const int64_t* __restrict rowmap = g.rowmap.data();
  for (int64_t dy = 0; dy < k; ++dy) {
    for (int64_t dx0 = 0; dx0 < k; dx0 += G) {
      int64_t offset[G];
      for (int t = 0; t < G; ++t) {
        const int64_t dx = std::min<int64_t>(dx0 + t, k - 1);
        offset[t] = (dx % s) * g.Wq + dx / s;
      }
      V acc[G];
#pragma GCC unroll 8
      for (int t = 0; t < G; ++t) acc[t] = V{};
      for (int64_t i = begin; i < end; ++i) {
        const T* __restrict grow = gpad + i * g.Wg + g.D;
        const T* __restrict srow = scratch + rowmap[s * i + dy] * rowlen;
        for (int64_t j0 = 0; j0 < g.WoPad; j0 += L) {
          V gv;
          std::memcpy(&gv, grow + j0, sizeof(V));
#pragma GCC unroll 8
          for (int t = 0; t < G; ++t) {
            V sv;
            std::memcpy(&sv, srow + offset[t] + j0, sizeof(V));
            acc[t] += gv * sv;
          }
        }
      }
      for (int t = 0; t < G && dx0 + t < k; ++t) {
        T total = T(0);
        for (int l = 0; l < L; ++l) total += acc[t][l];
        partial[dy * k + dx0 + t] = total;
      }
    }
  }
}

template <typename T>
void kernel_grad_plane_rows(const T* scratch, const T* gpad, T* partial, const Geometry& g, int64_t begin,
                            int64_t end) {
  // Taps per group: the one of 8, 7, 6, 5 that pads k the least.
  int G = 8;
  for (int cand : {8, 7, 6, 5}) {
    if (round_up(g.k, cand) < round_up(g.k, G)) G = cand;
  }
  switch (G) {
    case 8: kernel_grad_rows<T, 8>(scratch, gpad, partial, g, begin, end); break;
    case 7: kernel_grad_rows<T, 7>(scratch, gpad, partial, g, begin, end); break;
    case 6: kernel_grad_rows<T, 6>(scratch, gpad, partial, g, begin, end); break;
    default: kernel_grad_rows<T, 5>(scratch, gpad, partial, g, begin, end); break;
  }
}

// ---------------------------------------------------------------------------
// Backward driver. grad_x [B, C, H, W] and grad_w [Bk, k, k] may be null.
template <typename T>
void backward(const T* grad, const T* x, const T* weights, T* grad_x, T* grad_w, const Geometry& g) {
  const int64_t planes = g.B * g.C, k = g.k, kk = k * k;
  const int64_t plane_scratch = g.H * g.s * g.Wq, plane_gpad = g.Ho * g.Wg;
  const FillMap f = fill_map(g);
  RowPreimages pre;
  FoldMap fm;
  const int64_t kS = (k + g.s - 1) / g.s * g.s;  // kernel rows padded to a multiple of s
  std::vector<T> wpad;
  if (grad_x) {
    pre = row_preimages(g);
    fm = fold_map(g);
    wpad.assign(g.Bk * k * kS, T(0));
    for (int64_t e = 0; e < g.Bk * k; ++e) std::copy(weights + e * k, weights + (e + 1) * k, &wpad[e * kS]);
  }
  auto wpad_of = [&](int64_t plane) { return wpad.data() + (g.Bk == 1 ? 0 : plane / g.C) * k * kS; };
  std::vector<T> partial;       // [items, k * k]
  std::vector<int64_t> image;   // image of each item
  if (plane_items(g)) {
    // One plane per work item: padded input and grad_out in per-thread buffers.
    if (grad_w) partial.assign(planes * kk, T(0));
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<T[]> gpad = uninitialised<T>(plane_gpad);
      std::unique_ptr<T[]> scratch = uninitialised<T>(grad_w ? plane_scratch : 0);
      for (int64_t plane = begin; plane < end; ++plane) {
        fill_grad_rows(grad + plane * g.Ho * g.Wo, gpad.get(), g, g.Ho);
        if (grad_x) backward_x_plane_rows(gpad.get(), wpad_of(plane), grad_x + plane * g.H * g.W, g, pre, fm, 0, g.H);
        if (grad_w) {
          fill_rows(x + plane * g.H * g.W, scratch.get(), g, f, g.H);
          kernel_grad_plane_rows(scratch.get(), gpad.get(), partial.data() + plane * kk, g, 0, g.Ho);
        }
      }
    });
    if (grad_w)
      for (int64_t plane = 0; plane < planes; ++plane) image.push_back(plane / g.C);
  } else {
    // Few large planes: fill everything, then split rows.
    std::unique_ptr<T[]> gpad = uninitialised<T>(planes * plane_gpad);
    at::parallel_for(0, planes * g.Ho, std::max<int64_t>(1, 16384 / g.Wg), [&](int64_t begin, int64_t end) {
      fill_grad_rows(grad + begin * g.Wo, gpad.get() + begin * g.Wg, g, end - begin);
    });
    if (grad_x) {
      const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, kk * g.Qpad / (64 * g.s)));
      at::parallel_for(0, planes * g.H, grain, [&](int64_t begin, int64_t end) {
        for (int64_t lo = begin; lo < end;) {  // segments within one plane
          const int64_t plane = lo / g.H, hi = std::min(end, (plane + 1) * g.H);
          backward_x_plane_rows(gpad.get() + plane * plane_gpad, wpad_of(plane), grad_x + plane * g.H * g.W, g, pre,
                                fm, lo - plane * g.H, hi - plane * g.H);
          lo = hi;
        }
      });
    }
    if (grad_w) {
      std::unique_ptr<T[]> scratch = uninitialised<T>(planes * plane_scratch);
      fill_all_rows(x, scratch.get(), g, f);
      // Items: runs of rows small enough to stay in cache over all k * k taps.
      const int64_t rows = std::min(g.Ho, std::max<int64_t>(1, (4096 + g.WoPad - 1) / g.WoPad));
      const int64_t per_plane = (g.Ho + rows - 1) / rows;
      partial.assign(planes * per_plane * kk, T(0));
      at::parallel_for(0, planes * per_plane, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t plane = item / per_plane, lo = (item % per_plane) * rows;
          kernel_grad_plane_rows(scratch.get() + plane * plane_scratch, gpad.get() + plane * plane_gpad,
                                 partial.data() + item * kk, g, lo, std::min(g.Ho, lo + rows));
        }
      });
      for (int64_t item = 0; item < planes * per_plane; ++item) image.push_back(item / per_plane / g.C);
    }
  }
  if (grad_w) {  // add the partial sums per kernel, in item order
    std::fill(grad_w, grad_w + g.Bk * kk, T(0));
    for (size_t item = 0; item < image.size(); ++item) {
      T* dst = grad_w + (g.Bk == 1 ? 0 : image[item]) * kk;
      const T* src = partial.data() + item * kk;
      for (int64_t e = 0; e < kk; ++e) dst[e] += src[e];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> blur_downsample_backward_cpu(const at::Tensor& grad_out_in,
                                                                const at::Tensor& x_in,
                                                                const at::Tensor& kernel_in, int64_t stride,
                                                                bool need_x, bool need_kernel) {
  blur_checks::check_backward(grad_out_in, x_in, kernel_in, stride, at::kCPU, "blur_downsample_backward");
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const at::ScalarType ct = compute_type(x_in.scalar_type());
  const at::Tensor x = x_in.to(ct).contiguous();
  const at::Tensor kernel = kernel_in.to(ct).contiguous();
  const at::Tensor grad_out = grad_out_in.to(ct).contiguous();
  const int64_t Bk = kernel.size(0), k = kernel.size(1);
  at::Tensor grad_x = need_x ? at::empty({B, C, H, W}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = need_kernel ? at::zeros({Bk, k, k}, x.options()) : at::empty({0}, x.options());
  if ((need_x || need_kernel) && B * C > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "blur_downsample_backward_cpu", [&] {
      const Geometry g = make_geometry<scalar_t>(x, Bk, k, stride);
      backward<scalar_t>(grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                         kernel.const_data_ptr<scalar_t>(), need_x ? grad_x.mutable_data_ptr<scalar_t>() : nullptr,
                         need_kernel ? grad_w.mutable_data_ptr<scalar_t>() : nullptr, g);
    });
  }
  return {grad_x.to(x_in.scalar_type()), grad_w.to(kernel_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mzsr_fast, CPU, m) {
  m.impl("blur_downsample_backward", &blur_downsample_backward_cpu);
}

}  // namespace mzsr_fast
