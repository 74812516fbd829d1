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
  const int64_t period = 2 * n;
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

// Anisotropic Gaussian (SPEC section 2): weight(x, y) = exp(-q / 2) with
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

}  // namespace blur_math
}  // namespace mzsr_fast
