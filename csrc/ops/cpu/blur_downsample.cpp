// CPU kernels of mzsr_fast::blur_downsample, its backward and the fused
// Gaussian variant (schemas: ../blur_downsample.cpp; index and weight math:
// ../blur_downsample_math.h).
//
// Layout trick. Every input row is padded once with the symmetric border and
// de-interleaved into s "phase rows" (phase p holds padded columns p, p + s,
// p + 2s, ...), each Wq long, in a scratch plane. Tap dx of output column j
// then reads phase dx % s at column j + dx / s: contiguous in j, so the inner
// loops run over a fixed block of JB output columns whose accumulators stay in
// vector registers for all k * k taps. Rows need no copy: output row i, tap
// dy reads scratch row sym(s i + dy - r).
//
// Backward wrt x is computed per input row t in gather form: for each padded
// row y that folds onto t (sym(y - r) == t), the padded gradient row is a
// correlation of the zero-padded grad_out rows with the kernel, built in the
// same phase layout, then folded through the column border map. No atomics,
// no padded gradient plane. Backward wrt the kernel is a reduction over
// (c, i, j) of grad_out * padded input with register accumulators for a group
// of taps; work items are (b, dy, tap group), each writing its own outputs.
//
// Hot loops are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
// the baseline with GCC target_clones; the loader picks one per machine.
// float32 and float64 run natively; float16 and bfloat16 run in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "ops/blur_downsample_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && (__GNUC__ >= 11) && \
    !defined(MZSR_FAST_NO_MULTIVERSION)
#define MZSR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MZSR_CLONES
#endif

namespace mzsr_fast {
namespace {

using blur_math::output_size;
using blur_math::padded_extent;
using blur_math::symmetric_index;

// Bytes of one block of output columns is NV * 64: NV = 1, 2 or 4 cache lines.
template <typename T>
constexpr int lanes() {
  return 64 / static_cast<int>(sizeof(T));
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Shapes of one call, in elements.
struct Geometry {
  int64_t B, C, H, W, Bk, k, r, s, Ho, Wo;
  int64_t Hp, Wp;  // padded rows / columns the outputs read: s (out - 1) + k
  int64_t D;       // largest tap offset in phase columns: (k - 1) / s
  int64_t JB;      // output columns per register block
  int64_t WoPad;   // Wo rounded up to JB
  int64_t Wq;      // one phase row of the input scratch: WoPad + D
  int64_t JBx;     // phase columns per register block of the backward wrt x
  int64_t Qpad;    // phase columns of a padded gradient row: round_up(Wo + D, JBx)
  int64_t Wg;      // one zero-padded grad_out row: D + max(Qpad, WoPad)
  std::vector<int64_t> rowmap;  // padded row y in [0, Hp) -> input row sym(y - r, H)
};

template <typename T>
Geometry make_geometry(const at::Tensor& x, int64_t Bk, int64_t k, int64_t stride) {
  Geometry g;
  g.B = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.Bk = Bk;
  g.k = k;
  g.r = g.k / 2;
  g.s = stride;
  g.Ho = output_size(g.H, stride);
  g.Wo = output_size(g.W, stride);
  g.Hp = padded_extent(g.Ho, g.k, stride);
  g.Wp = padded_extent(g.Wo, g.k, stride);
  g.D = (g.k - 1) / stride;
  // Block width: the one of 4, 2, 1 vectors that wastes the fewest columns.
  const int64_t vl = lanes<T>();
  int64_t best = 4 * vl;
  for (int64_t nv : {4, 2, 1}) {
    if (round_up(g.Wo, nv * vl) < round_up(g.Wo, best)) best = nv * vl;
  }
  g.JB = best;
  g.WoPad = round_up(g.Wo, g.JB);
  g.Wq = g.WoPad + g.D;
  // Backward wrt x: blocks over the Wo + D phase columns of a padded row; at
  // most 8 vectors of accumulators (phases x block), fewest wasted columns.
  const int64_t max_nv = stride <= 2 ? 4 : 2;
  int64_t bx = max_nv * vl;
  for (int64_t nv : {4, 2, 1}) {
    if (nv <= max_nv && round_up(g.Wo + g.D, nv * vl) < round_up(g.Wo + g.D, bx)) bx = nv * vl;
  }
  g.JBx = bx;
  g.Qpad = round_up(g.Wo + g.D, g.JBx);
  g.Wg = g.D + std::max(g.Qpad, g.WoPad);
  g.rowmap.resize(g.Hp);
  for (int64_t y = 0; y < g.Hp; ++y) g.rowmap[y] = symmetric_index(y - g.r, g.H);
  return g;
}

// ---------------------------------------------------------------------------
// Scratch of the padded, de-interleaved input: [B * C * H][s][Wq]. Entry
// (row t, phase p, q) is x[t, sym(q s + p - r, W)] for padded column
// q s + p < Wp and 0 past it. Per phase, q in [lo, hi) is a strided copy of
// the image interior; the other entries come from a column map computed once
// per call (src[p * Wq + q]: input column, or -1 for 0).
struct FillMap {
  std::vector<int64_t> lo, hi;
  std::vector<int64_t> src;
};

FillMap fill_map(const Geometry& g) {
  const int64_t s = g.s, W = g.W, r = g.r, Wq = g.Wq;
  FillMap f;
  f.lo.resize(s);
  f.hi.resize(s);
  f.src.resize(s * Wq);
  for (int64_t p = 0; p < s; ++p) {
    const int64_t valid = std::min(Wq, (g.Wp - p + s - 1) / s);  // q with q s + p < Wp
    f.lo[p] = std::min(valid, std::max<int64_t>(0, (r - p + s - 1) / s));
    f.hi[p] = std::max(f.lo[p], std::min(valid, (r + W - 1 - p) / s + 1));
    for (int64_t q = 0; q < Wq; ++q) f.src[p * Wq + q] = q < valid ? symmetric_index(q * s + p - r, W) : -1;
  }
  return f;
}

template <typename T, int S>
MZSR_CLONES void fill_phase_rows(const T* __restrict x, T* __restrict scratch, const Geometry& g,
                                 const FillMap& f, int64_t begin, int64_t end) {
  const int64_t s = S > 0 ? S : g.s;
  const int64_t W = g.W, r = g.r, Wq = g.Wq;
  for (int64_t n = begin; n < end; ++n) {
    const T* __restrict src = x + n * W;
    for (int64_t p = 0; p < s; ++p) {
      T* __restrict dst = scratch + (n * s + p) * Wq;
      const int64_t* __restrict map = f.src.data() + p * Wq;
      const int64_t lo = f.lo[p], hi = f.hi[p];
      for (int64_t q = 0; q < lo; ++q) dst[q] = src[map[q]];
      const T* __restrict inner = src + p - r;
      for (int64_t q = lo; q < hi; ++q) dst[q] = inner[q * s];
      for (int64_t q = hi; q < Wq; ++q) dst[q] = map[q] >= 0 ? src[map[q]] : T(0);
    }
  }
}

template <typename T>
void fill_scratch(const T* x, T* scratch, const Geometry& g) {
  const FillMap f = fill_map(g);
  const int64_t rows = g.B * g.C * g.H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.s * g.Wq));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    switch (g.s) {
      case 1: fill_phase_rows<T, 1>(x, scratch, g, f, begin, end); break;
      case 2: fill_phase_rows<T, 2>(x, scratch, g, f, begin, end); break;
      case 3: fill_phase_rows<T, 3>(x, scratch, g, f, begin, end); break;
      case 4: fill_phase_rows<T, 4>(x, scratch, g, f, begin, end); break;
      default: fill_phase_rows<T, 0>(x, scratch, g, f, begin, end); break;
    }
  });
}

// ---------------------------------------------------------------------------
// Forward: output rows [begin, end) of the flattened [B * C * Ho], all of one
// image, whose k * k weights are w. Blocks of NV vectors of output columns
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
    for (int64_t n = begin; n < end; ++n) {
      const int64_t plane = n / g.Ho, i = n % g.Ho;
      const T* __restrict base = scratch + plane * g.H * rowlen + j0;
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
      std::memcpy(out + n * g.Wo + j0, result, sizeof(T) * valid);
    }
  }
}

// weights_of(b, buffer) -> the k * k weights of image b (a pointer into the
// kernel tensor, or into buffer, which holds k * k values, for computed ones).
template <typename T, typename Weights>
void forward(const T* scratch, const Weights& weights_of, T* out, const Geometry& g) {
  const int64_t rows = g.B * g.C * g.Ho, per_image = g.C * g.Ho;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, g.k * g.k * g.WoPad / 64));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    constexpr int vl = lanes<T>();
    std::vector<T> buffer(g.k * g.k);
    for (int64_t lo = begin; lo < end;) {
      const int64_t b = lo / per_image, hi = std::min(end, (b + 1) * per_image);
      const T* w = weights_of(b, buffer.data());
      if (g.JB == 4 * vl) forward_rows<T, 4>(scratch, w, out, g, lo, hi);
      else if (g.JB == 2 * vl) forward_rows<T, 2>(scratch, w, out, g, lo, hi);
      else forward_rows<T, 1>(scratch, w, out, g, lo, hi);
      lo = hi;
    }
  });
}

// ---------------------------------------------------------------------------
// grad_out rows zero-padded to [B * C * Ho][Wg]: D zeros, the Wo values, zeros.
template <typename T>
void fill_grad_rows(const T* grad, T* gpad, const Geometry& g) {
  const int64_t rows = g.B * g.C * g.Ho;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / g.Wg), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* dst = gpad + n * g.Wg;
      std::fill(dst, dst + g.D, T(0));
      std::memcpy(dst + g.D, grad + n * g.Wo, sizeof(T) * g.Wo);
      std::fill(dst + g.D + g.Wo, dst + g.Wg, T(0));
    }
  });
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

template <typename T, int PH, int NV>
void backward_x_rows(const T* gpad, const T* wpad, T* grad_x, const Geometry& g, const RowPreimages& pre,
                     const FoldMap& fm, int64_t begin, int64_t end) {
  const int64_t kS = (g.k + g.s - 1) / g.s * g.s;
  std::vector<T> buffer(g.s * g.Qpad + g.W);
  T* gp = buffer.data();
  T* acc = gp + g.s * g.Qpad;
  for (int64_t n = begin; n < end; ++n) {
    const int64_t plane = n / g.H, t = n % g.H, b = plane / g.C;
    const T* w = wpad + (g.Bk == 1 ? 0 : b) * g.k * kS;
    const T* gpad_plane = gpad + plane * g.Ho * g.Wg;
    std::fill(acc, acc + g.W, T(0));
    for (int64_t e = pre.offsets[t]; e < pre.offsets[t + 1]; ++e) {
      padded_grad_row<T, PH, NV>(gpad_plane, w, gp, g, pre.ys[e]);
      switch (g.s) {
        case 1: fold_row<T, 1>(gp, acc, g, fm); break;
        case 2: fold_row<T, 2>(gp, acc, g, fm); break;
        case 3: fold_row<T, 3>(gp, acc, g, fm); break;
        case 4: fold_row<T, 4>(gp, acc, g, fm); break;
        default: fold_row<T, 0>(gp, acc, g, fm); break;
      }
    }
    std::memcpy(grad_x + n * g.W, acc, sizeof(T) * g.W);
  }
}

template <typename T, int PH>
void backward_x_phases(const T* gpad, const T* wpad, T* grad_x, const Geometry& g, const RowPreimages& pre,
                       const FoldMap& fm, int64_t begin, int64_t end) {
  constexpr int vl = lanes<T>();
  if (g.JBx == 4 * vl) backward_x_rows<T, PH, (PH <= 2 ? 4 : 2)>(gpad, wpad, grad_x, g, pre, fm, begin, end);
  else if (g.JBx == 2 * vl) backward_x_rows<T, PH, 2>(gpad, wpad, grad_x, g, pre, fm, begin, end);
  else backward_x_rows<T, PH, 1>(gpad, wpad, grad_x, g, pre, fm, begin, end);
}

template <typename T>
void backward_x(const T* gpad, const T* weights, T* grad_x, const Geometry& g) {
  const RowPreimages pre = row_preimages(g);
  const FoldMap fm = fold_map(g);
  // Kernel rows zero-padded to a multiple of s columns.
  const int64_t kS = (g.k + g.s - 1) / g.s * g.s;
  std::vector<T> wpad(g.Bk * g.k * kS, T(0));
  for (int64_t e = 0; e < g.Bk * g.k; ++e) std::copy(weights + e * g.k, weights + (e + 1) * g.k, &wpad[e * kS]);
  const int64_t rows = g.B * g.C * g.H;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, g.k * g.k * g.Qpad / (64 * g.s)));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    switch (g.s) {
      case 1: backward_x_phases<T, 1>(gpad, wpad.data(), grad_x, g, pre, fm, begin, end); break;
      case 2: backward_x_phases<T, 2>(gpad, wpad.data(), grad_x, g, pre, fm, begin, end); break;
      case 3: backward_x_phases<T, 3>(gpad, wpad.data(), grad_x, g, pre, fm, begin, end); break;
      case 4: backward_x_phases<T, 4>(gpad, wpad.data(), grad_x, g, pre, fm, begin, end); break;
      default: backward_x_phases<T, 1>(gpad, wpad.data(), grad_x, g, pre, fm, begin, end); break;
    }
  });
}

// ---------------------------------------------------------------------------
// Kernel gradient: a reduction over (c, i, j) of grad_out * padded input.
// Work item = a run of `rows` consecutive grad_out rows of one image (over c
// and i), small enough for its rows of grad_out and of the scratch to stay in
// cache while all k * k taps are summed over it; each item writes its own k * k
// partial sums, which are added in a fixed order afterwards (deterministic).
// Taps go in groups of G with one vector accumulator of one cache line per
// tap (GCC vector extensions: the loop over taps must stay in registers,
// which the auto-vectoriser does not manage). Taps past k are dropped.
template <typename T, int G>
MZSR_CLONES void backward_kernel_items(const T* __restrict scratch, const T* __restrict gpad,
                                       T* __restrict partial, const Geometry& g, int64_t rows,
                                       int64_t items_per_image, int64_t begin, int64_t end) {
  constexpr int L = lanes<T>();
  typedef T V __attribute__((vector_size(64)));
  const int64_t k = g.k, s = g.s, rowlen = g.s * g.Wq, per_image = g.C * g.Ho;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / items_per_image;
    const int64_t n_lo = b * per_image + (item % items_per_image) * rows;
    const int64_t n_hi = std::min(n_lo + rows, (b + 1) * per_image);
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
        for (int64_t n = n_lo; n < n_hi; ++n) {
          const int64_t plane = n / g.Ho, i = n % g.Ho;
          const T* __restrict grow = gpad + n * g.Wg + g.D;
          const T* __restrict srow = scratch + (plane * g.H + g.rowmap[s * i + dy]) * rowlen;
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
          partial[(item * k + dy) * k + dx0 + t] = total;
        }
      }
    }
  }
}

// grad_w [Bk, k, k] (Bk 1: summed over the batch).
template <typename T>
void backward_kernel(const T* scratch, const T* gpad, at::Tensor& grad_w, const Geometry& g) {
  // Taps per group: the one of 8, 7, 6, 5 that pads k the least.
  int G = 8;
  for (int cand : {8, 7, 6, 5}) {
    if (round_up(g.k, cand) < round_up(g.k, G)) G = cand;
  }
  const int64_t per_image = g.C * g.Ho;
  const int64_t rows = std::min(per_image, std::max<int64_t>(1, (4096 + g.WoPad - 1) / g.WoPad));
  const int64_t items_per_image = (per_image + rows - 1) / rows;
  at::Tensor partial = at::empty({g.B, items_per_image, g.k, g.k}, grad_w.options());
  T* part = partial.data_ptr<T>();
  at::parallel_for(0, g.B * items_per_image, 1, [&](int64_t begin, int64_t end) {
    switch (G) {
      case 8: backward_kernel_items<T, 8>(scratch, gpad, part, g, rows, items_per_image, begin, end); break;
      case 7: backward_kernel_items<T, 7>(scratch, gpad, part, g, rows, items_per_image, begin, end); break;
      case 6: backward_kernel_items<T, 6>(scratch, gpad, part, g, rows, items_per_image, begin, end); break;
      default: backward_kernel_items<T, 5>(scratch, gpad, part, g, rows, items_per_image, begin, end); break;
    }
  });
  grad_w = g.Bk == 1 ? partial.sum(at::IntArrayRef{0, 1}).unsqueeze(0) : partial.sum(1);
}

// ---------------------------------------------------------------------------
// Argument checks shared by the three ops.
void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": x must have H, W >= 1, got ", x.sizes());
}

void check_kernel(const at::Tensor& x, const at::Tensor& kernel, int64_t stride, const char* op) {
  TORCH_CHECK(kernel.device().is_cpu(), op, ": kernel must be a CPU tensor, got ", kernel.device());
  TORCH_CHECK(kernel.dim() == 3 && kernel.size(1) == kernel.size(2) && kernel.size(1) % 2 == 1, op,
              ": kernel must be [Bk, k, k] with k odd, got ", kernel.sizes());
  TORCH_CHECK(kernel.size(0) == 1 || kernel.size(0) == x.size(0), op,
              ": kernel must hold 1 or B = ", x.size(0), " kernels, got ", kernel.size(0));
  TORCH_CHECK(at::isFloatingType(kernel.scalar_type()), op, ": kernel must be floating point, got ",
              kernel.scalar_type());
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
}

at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Runs the forward in the compute type (float32 for float16/bfloat16 inputs).
// make_weights(scalar_t tag, Bk) -> weights_of functor for forward().
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
      at::Tensor scratch = at::empty({B * C * g.H * g.s * g.Wq}, x.options());
      fill_scratch<scalar_t>(x.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), g);
      forward<scalar_t>(scratch.data_ptr<scalar_t>(), make_weights(scalar_t(0)), out.data_ptr<scalar_t>(), g);
    });
  }
  return out.scalar_type() == x_in.scalar_type() ? out : out.to(x_in.scalar_type());
}

at::Tensor blur_downsample_cpu(const at::Tensor& x, const at::Tensor& kernel, int64_t stride) {
  check_x(x, "blur_downsample");
  check_kernel(x, kernel, stride, "blur_downsample");
  const at::Tensor weights = kernel.to(compute_type(x.scalar_type())).contiguous();
  const int64_t Bk = weights.size(0), k = weights.size(1);
  return run_forward(x, Bk, k, stride, [&](auto tag) {
    using T = decltype(tag);
    const T* base = weights.data_ptr<T>();
    return [base, Bk, k](int64_t b, T*) { return base + (Bk == 1 ? 0 : b) * k * k; };
  });
}

std::tuple<at::Tensor, at::Tensor> blur_downsample_backward_cpu(const at::Tensor& grad_out_in,
                                                                const at::Tensor& x_in,
                                                                const at::Tensor& kernel_in, int64_t stride,
                                                                bool need_x, bool need_kernel) {
  const char* op = "blur_downsample_backward";
  check_x(x_in, op);
  check_kernel(x_in, kernel_in, stride, op);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  TORCH_CHECK(grad_out_in.device().is_cpu() && grad_out_in.dim() == 4 && grad_out_in.size(0) == B &&
                  grad_out_in.size(1) == C && grad_out_in.size(2) == Ho && grad_out_in.size(3) == Wo,
              op, ": grad_out must be a CPU tensor [", B, ", ", C, ", ", Ho, ", ", Wo, "], got ",
              grad_out_in.sizes());
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
      at::Tensor gpad = at::empty({B * C * Ho * g.Wg}, x.options());
      fill_grad_rows<scalar_t>(grad_out.data_ptr<scalar_t>(), gpad.data_ptr<scalar_t>(), g);
      if (need_x) {
        backward_x<scalar_t>(gpad.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(),
                             grad_x.data_ptr<scalar_t>(), g);
      }
      if (need_kernel) {
        at::Tensor scratch = at::empty({B * C * H * g.s * g.Wq}, x.options());
        fill_scratch<scalar_t>(x.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), g);
        backward_kernel<scalar_t>(scratch.data_ptr<scalar_t>(), gpad.data_ptr<scalar_t>(), grad_w, g);
      }
    });
  }
  return {grad_x.to(x_in.scalar_type()), grad_w.to(kernel_in.scalar_type())};
}

at::Tensor gaussian_blur_downsample_cpu(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& lambda1,
                                        const at::Tensor& lambda2, int64_t size, int64_t stride) {
  const char* op = "gaussian_blur_downsample";
  check_x(x, op);
  TORCH_CHECK(size >= 1 && size % 2 == 1, op, ": size must be odd and >= 1, got ", size);
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  const int64_t Bk = theta.numel();
  for (const at::Tensor* p : {&theta, &lambda1, &lambda2}) {
    TORCH_CHECK(p->device().is_cpu() && p->dim() == 1 && p->numel() == Bk &&
                    at::isFloatingType(p->scalar_type()),
                op, ": theta, lambda1, lambda2 must be floating-point CPU tensors of one shape [Bk], got ",
                theta.sizes(), ", ", lambda1.sizes(), ", ", lambda2.sizes());
  }
  TORCH_CHECK(Bk == 1 || Bk == x.size(0), op, ": theta must hold 1 or B = ", x.size(0), " values, got ", Bk);
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
  m.impl("blur_downsample_backward", &blur_downsample_backward_cpu);
  m.impl("gaussian_blur_downsample", &gaussian_blur_downsample_cpu);
}

}  // namespace mzsr_fast
