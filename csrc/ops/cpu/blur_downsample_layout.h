// The layout shared by the CPU kernels of the blur_downsample ops
// (blur_downsample_forward.cpp, blur_downsample_backward.cpp): the shapes of
// a call (Geometry), the padded, de-interleaved input rows both the forward
// and the kernel gradient read (FillMap, fill_rows), the work split and the
// compute type. The layout itself is described in blur_downsample_forward.cpp.
//
// Included by those two files only. Everything here has internal linkage
// (an unnamed namespace), so each file has its own copy and the GCC
// target_clones of the hot loops stay local to the file that uses them.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "ops/blur_downsample_math.h"

// Hot loops are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
// the baseline with GCC target_clones; the loader picks one per machine.
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

// Whether each plane is one work item (many planes), or rows are split.
bool plane_items(const Geometry& g) { return g.B * g.C >= 4 * static_cast<int64_t>(at::get_num_threads()); }

template <typename T>
std::unique_ptr<T[]> uninitialised(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// ---------------------------------------------------------------------------
// The type the kernels compute in: double for double inputs, float otherwise
// (float16 and bfloat16 are accumulated in float).
at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace
}  // namespace mzsr_fast
