// CPU kernels of mzsr_fast::blur_downsample, its backward and the fused
// Gaussian variant (schemas: ../blur_downsample.cpp; index and weight math:
// ../blur_downsample_math.h).
//
// Layout trick. Every input row is padded once with the symmetric border and
// de-interleaved into s "phase rows" (phase p holds padded columns p, p + s,
// p + 2s, ...), each Wq long, in a scratch plane. Tap dx of output column j
// then reads phase dx % s at column j + dx / s: contiguous in j, so the inner
// loops run over a fixed block of output columns whose accumulators stay in
// vector registers for all k * k taps. Rows need no copy: output row i, tap
// dy reads scratch row sym(s i + dy - r).
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
// Work split (at::parallel_for, OpenMP): with many planes (B * C >= 4
// threads) each plane is one work item, padded into a per-thread scratch that
// stays in cache, and the whole op is one parallel region; with few large
// planes the scratch of all planes is filled first and the rows are split.
//
// Hot loops are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
// the baseline with GCC target_clones; the loader picks one per machine.
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

// Rows [0, rows) of x (W wide each) -> their phase rows in scratch (s * Wq each).
template <typename T, int S>
MZSR_CLONES void fill_phase_rows(const T* __restrict x, T* __restrict scratch, const Geometry& g,
                                 const FillMap& f, int64_t rows) {
  const int64_t s = S > 0 ? S : g.s;
  const int64_t W = g.W, r = g.r, Wq = g.Wq;
  for (int64_t n = 0; n < rows; ++n) {
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
void fill_rows(const T* x, T* scratch, const Geometry& g, const FillMap& f, int64_t rows) {
  switch (g.s) {
    case 1: fill_phase_rows<T, 1>(x, scratch, g, f, rows); break;
    case 2: fill_phase_rows<T, 2>(x, scratch, g, f, rows); break;
    case 3: fill_phase_rows<T, 3>(x, scratch, g, f, rows); break;
    case 4: fill_phase_rows<T, 4>(x, scratch, g, f, rows); break;
    default: fill_phase_rows<T, 0>(x, scratch, g, f, rows); break;
  }
}

// All rows of all planes (the row-split strategy).
template <typename T>
void fill_all_rows(const T* x, T* scratch, const Geometry& g, const FillMap& f) {
  const int64_t rows = g.B * g.C * g.H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.s * g.Wq));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    fill_rows(x + begin * g.W, scratch + begin * g.s * g.Wq, g, f, end - begin);
  });
}

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

// Whether each plane is one work item (many planes), or rows are split.
bool plane_items(const Geometry& g) { return g.B * g.C >= 4 * static_cast<int64_t>(at::get_num_threads()); }

template <typename T>
std::unique_ptr<T[]> uninitialised(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
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

// ---------------------------------------------------------------------------
// The type the kernels compute in: double for double inputs, float otherwise
// (float16 and bfloat16 are accumulated in float).
at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
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
  m.impl("blur_downsample_backward", &blur_downsample_backward_cpu);
  m.impl("gaussian_blur_downsample", &gaussian_blur_downsample_cpu);
}

}  // namespace mzsr_fast
