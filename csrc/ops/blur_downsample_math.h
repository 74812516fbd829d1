// Per-element arithmetic of blur_downsample, shared by the CPU kernels, the
// CUDA kernels and the C++ tests (csrc/tests/test_math.cpp), so that the index
// and weight math that runs on a GPU is exercised on every CI machine.
//
// Op: out[b, c, i, j] = sum_{dy, dx} kernel[b or 0, dy, dx]
//                        * x[b, c, sym(s i + dy - r, H), sym(s j + dx - r, W)]
// with r = k / 2 (k odd) and sym the half-sample symmetric border
// (... c b a | a b c ...), periodic with period 2 n.
//
// Everything here is header-only, free of ATen, and usable from host and
// device code: MZSR_HD is `__host__ __device__` under nvcc, plain inline
// elsewhere.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MZSR_HD __host__ __device__ __forceinline__
#else
#define MZSR_HD inline
#endif

namespace mzsr_fast {
namespace blur_math {

// Index i (any integer) mapped onto 0..n-1 with the half-sample symmetric
// border: m = i mod 2n; m >= n ? 2n - 1 - m : m. Repeats the edge pixel and
// keeps mirroring for images smaller than the kernel.
MZSR_HD int64_t symmetric_index(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;               // inside
  if (i < 0 && i >= -n) return -1 - i;         // first mirror on the left
  if (i >= n && i < 2 * n) return 2 * n - 1 - i;  // first mirror on the right
  const int64_t period = 2 * n;                // images smaller than the kernel
  int64_t m = i % period;
  if (m < 0) m += period;
  return m >= n ? period - 1 - m : m;
}

// Output length of one axis: ceil(n / stride) (rows/columns 0, s, 2s, ...).
MZSR_HD int64_t output_size(int64_t n, int64_t stride) { return (n + stride - 1) / stride; }

// Number of padded rows (or columns) that the outputs read: s (out - 1) + k.
// Padded index p stands for input index symmetric_index(p - k / 2, n).
MZSR_HD int64_t padded_extent(int64_t out, int64_t k, int64_t stride) { return stride * (out - 1) + k; }

// Input index (before the border map) read by output o at tap t.
MZSR_HD int64_t tap_index(int64_t o, int64_t t, int64_t stride, int64_t radius) {
  return stride * o + t - radius;
}

// Transposed view (backward): padded index p receives from the outputs o with
// p = s o + t, 0 <= t < k, 0 <= o < out. The taps t congruent to p mod s are
// first_tap(p, s), first_tap + s, ...; the output of tap t is (p - t) / s.
MZSR_HD int64_t first_tap(int64_t p, int64_t stride) { return p % stride; }

// The padded indices p >= 0 whose border map is input index t (0 <= t < n)
// are t + r + 2 n q and (2 n - 1 - t) + r + 2 n q for integers q >= 0 (the two
// residues differ: their sum is odd). preimage(t, n, radius, m) lists them in
// increasing order for m = 0, 1, 2, ...; callers stop at the first value past
// the padded extent. The CUDA backward uses it to gather, per input pixel,
// every padded position that folds onto it.
MZSR_HD int64_t preimage(int64_t t, int64_t n, int64_t radius, int64_t m) {
  const int64_t period = 2 * n;
  const int64_t a = (t + radius) % period;
  const int64_t b = (period - 1 - t + radius) % period;
  const int64_t lo = a < b ? a : b, hi = a < b ? b : a;
  return (m % 2 == 0 ? lo : hi) + period * (m / 2);
}

// Float/double overloads that resolve the same way under g++ and nvcc.
MZSR_HD float math_exp(float v) { return expf(v); }
MZSR_HD double math_exp(double v) { return exp(v); }
MZSR_HD float math_cos(float v) { return cosf(v); }
MZSR_HD double math_cos(double v) { return cos(v); }
MZSR_HD float math_sin(float v) { return sinf(v); }
MZSR_HD double math_sin(double v) { return sin(v); }

// Anisotropic Gaussian (docs/method.md section 2): weight(x, y) = exp(-q / 2) with
// q = [x y] S^-1 [x y]^T, S = R(theta) diag(l1, l2) R(theta)^T, l1 and l2
// variances. In the rotated frame u = cos t x + sin t y, v = -sin t x + cos t y:
// q = u^2 / l1 + v^2 / l2. Written in the same form as mzsr_fast.gaussian
// ((d x^2 - 2 b x y + a y^2) / (l1 l2)) so the two round alike.
template <typename T>
struct GaussianQuadratic {
  T xx, xy, yy;  // q = (xx x^2 + xy x y + yy y^2) / det
  T det;         // l1 l2, applied as a division like the reference
};

template <typename T>
MZSR_HD GaussianQuadratic<T> gaussian_quadratic(T theta, T lambda1, T lambda2) {
  const T c = math_cos(theta), s = math_sin(theta);
  const T a = c * c * lambda1 + s * s * lambda2;
  const T b = c * s * (lambda1 - lambda2);
  const T d = s * s * lambda1 + c * c * lambda2;
  GaussianQuadratic<T> q;
  q.xx = d;
  q.xy = T(-2) * b;
  q.yy = a;
  q.det = lambda1 * lambda2;
  return q;
}

// Offset of grid index j of a size-n kernel from its centre: j - (n / 2 - 0.5).
template <typename T>
MZSR_HD T gaussian_offset(int64_t j, int64_t size) {
  return T(j) - (T(size) / T(2) - T(0.5));
}

// Unnormalised weight at kernel row dy (y offset) and column dx (x offset).
template <typename T>
MZSR_HD T gaussian_weight(const GaussianQuadratic<T>& q, int64_t dy, int64_t dx, int64_t size) {
  const T x = gaussian_offset<T>(dx, size), y = gaussian_offset<T>(dy, size);
  const T quadratic = (q.xx * x * x + q.xy * x * y + q.yy * y * y) / q.det;
  return math_exp(T(-0.5) * quadratic);
}

// ---------------------------------------------------------------------------
// Tiled GPU kernels (csrc/ops/cuda/blur_downsample.cu). Each block owns a tile
// of th x tw outputs of one plane; its phases are block-strided loops over
// thread ids (tid, nthreads) separated by __syncthreads() in the kernel, so
// csrc/tests/test_math.cpp runs the very same functions on the host, one
// phase at a time for every tid, and compares with a brute-force blur.

struct TileGeometry {
  int64_t H, W, Ho, Wo;  // input and output sizes of a plane
  int k, r, s;           // kernel size, radius, stride
  int th, tw;            // output tile
  int in_rows, in_cols;  // padded input tile: s (th - 1) + k, s (tw - 1) + k
};

MZSR_HD TileGeometry make_tile_geometry(int64_t H, int64_t W, int k, int s, int th, int tw) {
  TileGeometry t;
  t.H = H;
  t.W = W;
  t.Ho = output_size(H, s);
  t.Wo = output_size(W, s);
  t.k = k;
  t.r = k / 2;
  t.s = s;
  t.th = th;
  t.tw = tw;
  t.in_rows = s * (th - 1) + k;
  t.in_cols = s * (tw - 1) + k;
  return t;
}

// Phase: the padded input tile of the block whose first output is (i0, j0):
// tile[ty][tx] = plane[sym(s i0 + ty - r, H)][sym(s j0 + tx - r, W)].
template <typename Acc, typename In>
MZSR_HD void load_input_tile(const In* plane, Acc* tile, const TileGeometry& t, int64_t i0, int64_t j0, int tid,
                             int nthreads) {
  const int n = t.in_rows * t.in_cols;
  for (int e = tid; e < n; e += nthreads) {
    const int ty = e / t.in_cols, tx = e % t.in_cols;
    const int64_t y = symmetric_index(t.s * i0 + ty - t.r, t.H);
    const int64_t x = symmetric_index(t.s * j0 + tx - t.r, t.W);
    tile[e] = static_cast<Acc>(plane[y * t.W + x]);
  }
}

// Phase: copy k * k weights (already in Acc) to shared memory.
template <typename Acc>
MZSR_HD void load_weights(const Acc* src, Acc* w, int count, int tid, int nthreads) {
  for (int e = tid; e < count; e += nthreads) w[e] = src[e];
}

// Phase: unnormalised Gaussian weights, then each thread's partial sum in red[tid].
template <typename Acc>
MZSR_HD void gaussian_weights_partial(Acc* w, Acc* red, Acc theta, Acc lambda1, Acc lambda2, int k, int tid,
                                      int nthreads) {
  const GaussianQuadratic<Acc> q = gaussian_quadratic<Acc>(theta, lambda1, lambda2);
  Acc sum = Acc(0);
  for (int e = tid; e < k * k; e += nthreads) {
    const Acc v = gaussian_weight<Acc>(q, e / k, e % k, k);
    w[e] = v;
    sum += v;
  }
  red[tid] = sum;
}

// Phase: one step of the tree sum of red[0 .. 2 stride) (nthreads a power of
// two; stride = nthreads / 2, nthreads / 4, ..., 1, a barrier after each).
template <typename Acc>
MZSR_HD void tree_sum_step(Acc* red, int stride, int tid) {
  if (tid < stride) red[tid] += red[tid + stride];
}

// Phase: divide the weights by the total in red[0].
template <typename Acc>
MZSR_HD void normalise_weights(Acc* w, const Acc* red, int count, int tid, int nthreads) {
  const Acc total = red[0];
  for (int e = tid; e < count; e += nthreads) w[e] /= total;
}

// Phase: the output (oy, ox) of the tile (valid when i0 + oy < Ho, j0 + ox < Wo).
template <typename Acc>
MZSR_HD Acc tile_output(const Acc* tile, const Acc* w, const TileGeometry& t, int oy, int ox) {
  Acc acc = Acc(0);
  const Acc* base = tile + (t.s * oy) * t.in_cols + t.s * ox;
  for (int dy = 0; dy < t.k; ++dy) {
    const Acc* row = base + dy * t.in_cols;
    const Acc* wr = w + dy * t.k;
    for (int dx = 0; dx < t.k; ++dx) acc += wr[dx] * row[dx];
  }
  return acc;
}

// Phase: grad_out tile (zeros past the plane) for the kernel gradient.
template <typename Acc, typename In>
MZSR_HD void load_grad_tile(const In* grad_plane, Acc* gtile, const TileGeometry& t, int64_t i0, int64_t j0, int tid,
                            int nthreads) {
  for (int e = tid; e < t.th * t.tw; e += nthreads) {
    const int64_t i = i0 + e / t.tw, j = j0 + e % t.tw;
    gtile[e] = (i < t.Ho && j < t.Wo) ? static_cast<Acc>(grad_plane[i * t.Wo + j]) : Acc(0);
  }
}

// Phase: the tile's share of the kernel gradient at tap (dy, dx).
template <typename Acc>
MZSR_HD Acc tile_kernel_grad(const Acc* tile, const Acc* gtile, const TileGeometry& t, int dy, int dx) {
  Acc acc = Acc(0);
  for (int oy = 0; oy < t.th; ++oy) {
    const Acc* row = tile + (t.s * oy + dy) * t.in_cols + dx;
    const Acc* g = gtile + oy * t.tw;
    for (int ox = 0; ox < t.tw; ++ox) acc += g[ox] * row[t.s * ox];
  }
  return acc;
}

// Gradient wrt input pixel (t_row, u_col) of one plane: the padded gradient
// gathered from every padded position that folds onto it (preimage), each a
// sum over the taps (dy, dx) and outputs (i, j) with s i + dy = y, s j + dx = x.
template <typename Acc, typename G>
MZSR_HD Acc input_grad(const G* grad_plane, const Acc* w, const TileGeometry& t, int64_t t_row, int64_t u_col) {
  const int64_t Hp = padded_extent(t.Ho, t.k, t.s), Wp = padded_extent(t.Wo, t.k, t.s);
  Acc acc = Acc(0);
  for (int64_t my = 0;; ++my) {
    const int64_t y = preimage(t_row, t.H, t.r, my);
    if (y >= Hp) break;
    const int64_t i_lo = y >= t.k ? (y - t.k + t.s) / t.s : 0, i_hi = y / t.s < t.Ho - 1 ? y / t.s : t.Ho - 1;
    for (int64_t mx = 0;; ++mx) {
      const int64_t x = preimage(u_col, t.W, t.r, mx);
      if (x >= Wp) break;
      const int64_t j_lo = x >= t.k ? (x - t.k + t.s) / t.s : 0, j_hi = x / t.s < t.Wo - 1 ? x / t.s : t.Wo - 1;
      for (int64_t i = i_lo; i <= i_hi; ++i) {
        const Acc* wr = w + (y - t.s * i) * t.k;
        const G* g = grad_plane + i * t.Wo;
        for (int64_t j = j_lo; j <= j_hi; ++j) acc += wr[x - t.s * j] * static_cast<Acc>(g[j]);
      }
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------
// Tile planning (host side of the CUDA kernels; plain integers, tested by
// csrc/tests/test_math.cpp). A tile of th x tw outputs (powers of two, th <= 8,
// tw <= 32, th tw threads) needs the padded input tile s (th - 1) + k by
// s (tw - 1) + k in shared memory plus `fixed + per_thread * th * tw` other
// elements (the forward: k * k weights and a th tw reduction buffer; the
// kernel gradient: the th tw grad_out tile). The tile is first clamped to the
// output (a 1 x 1 output at stride 100 gets a 1 x 1 tile, not 32 wide), then
// the candidate with the most threads resident per SM wins (blocks per SM are
// limited by the SM's shared memory sm_smem, 32 blocks and 64 warps); ties go
// to at least two blocks per SM (one block alone idles the SM at every
// barrier), then to fewer shared bytes per output (less halo reloaded). A
// tile over default_limit (48 KiB) needs the per-kernel opt-in, up to
// optin_limit.

struct TilePlan {
  int th = 0, tw = 0;     // 0 x 0: nothing fits
  int64_t smem = 0;       // bytes of dynamic shared memory
  bool opt_in = false;    // smem > the default limit
};

inline int64_t tile_smem_bytes(int64_t k, int64_t s, int th, int tw, int64_t fixed, int64_t per_thread,
                               int64_t elem_bytes) {
  const int64_t rows = s * (th - 1) + k, cols = s * (tw - 1) + k;
  return (rows * cols + fixed + per_thread * th * tw) * elem_bytes;
}

inline int pow2_cap(int64_t n, int cap) {
  int p = 1;
  while (p < cap && p < n) p *= 2;
  return p;
}

inline TilePlan plan_tile(int64_t k, int64_t s, int64_t Ho, int64_t Wo, int64_t elem_bytes, int64_t fixed,
                          int64_t per_thread, int64_t default_limit, int64_t optin_limit, int64_t sm_smem) {
  const int max_h = pow2_cap(Ho, 8), max_w = pow2_cap(Wo, 32);
  TilePlan best;
  int64_t best_resident = 0, best_blocks = 0;
  for (int th = max_h; th >= 1; th /= 2) {
    for (int tw = max_w; tw >= 1; tw /= 2) {
      const int64_t bytes = tile_smem_bytes(k, s, th, tw, fixed, per_thread, elem_bytes);
      if (bytes > optin_limit) continue;
      const int threads = th * tw, warps = (threads + 31) / 32;
      int64_t blocks = sm_smem / bytes;
      if (blocks > 32) blocks = 32;
      if (blocks > 64 / warps) blocks = 64 / warps;
      if (blocks < 1) blocks = 1;
      const int64_t resident = blocks * threads, two = blocks < 2 ? blocks : 2;
      const int64_t best_threads = best.th * best.tw, best_two = best_blocks < 2 ? best_blocks : 2;
      const bool better =
          resident > best_resident ||
          (resident == best_resident &&
           (two > best_two || (two == best_two && bytes * best_threads < best.smem * threads)));
      if (better) {
        best.th = th;
        best.tw = tw;
        best.smem = bytes;
        best.opt_in = bytes > default_limit;
        best_resident = resident;
        best_blocks = blocks;
      }
    }
  }
  return best;
}

}  // namespace blur_math
}  // namespace mzsr_fast
