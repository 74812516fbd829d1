// Tests of csrc/ops/blur_downsample_math.h, the arithmetic shared by the CPU
// and CUDA kernels of blur_downsample: the symmetric index against a
// brute-force mirror, the padded-index preimages, output sizes, the Gaussian
// weights (sum, symmetries, closed form), and the tile phases of the CUDA
// kernels run on the host thread by thread against a brute-force blur.
// Plain C++ (no torch); registered with ctest by CMakeLists.txt.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "ops/blur_downsample_math.h"

namespace bm = mzsr_fast::blur_math;

static int failures = 0;

#define EXPECT(cond, ...)                              \
  do {                                                 \
    if (!(cond)) {                                     \
      ++failures;                                      \
      if (failures <= 20) {                            \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                      \
        std::printf("\n");                             \
      }                                                \
    }                                                  \
  } while (0)

// Reflect step by step (... c b a | a b c ... c b a | a b c ...) until inside.
static int64_t brute_mirror(int64_t i, int64_t n) {
  while (i < 0 || i >= n) {
    if (i < 0) i = -1 - i;
    if (i >= n) i = 2 * n - 1 - i;
  }
  return i;
}

static void test_symmetric_index() {
  for (int64_t n = 1; n <= 12; ++n)
    for (int64_t i = -7 * n - 3; i <= 7 * n + 3; ++i)
      EXPECT(bm::symmetric_index(i, n) == brute_mirror(i, n), "i=%lld n=%lld", (long long)i, (long long)n);
  // The edge pixel is repeated: -1 -> 0, n -> n - 1.
  EXPECT(bm::symmetric_index(-1, 5) == 0 && bm::symmetric_index(5, 5) == 4, "edge repeat");
}

static void test_preimages() {
  for (int64_t n = 1; n <= 9; ++n)
    for (int64_t r = 0; r <= 12; ++r)
      for (int64_t t = 0; t < n; ++t) {
        const int64_t limit = 6 * n + 2 * r + 5;
        std::vector<int64_t> want;
        for (int64_t p = 0; p < limit; ++p)
          if (bm::symmetric_index(p - r, n) == t) want.push_back(p);
        std::vector<int64_t> got;
        for (int64_t m = 0;; ++m) {
          const int64_t p = bm::preimage(t, n, r, m);
          if (p >= limit) break;
          if (!got.empty()) EXPECT(p > got.back(), "preimages must increase (n=%lld)", (long long)n);
          got.push_back(p);
        }
        EXPECT(got == want, "n=%lld r=%lld t=%lld: %zu vs %zu preimages", (long long)n, (long long)r, (long long)t,
               got.size(), want.size());
      }
}

static void test_sizes() {
  for (int64_t n = 1; n <= 40; ++n)
    for (int64_t s = 1; s <= 5; ++s) {
      const int64_t out = bm::output_size(n, s);
      EXPECT(out == (int64_t)std::ceil((double)n / (double)s), "n=%lld s=%lld", (long long)n, (long long)s);
      EXPECT((out - 1) * s < n && out * s >= n, "rows 0, s, 2s, ... below n");
      for (int64_t k = 1; k <= 9; k += 2) {
        // The last output reads padded indices up to s (out - 1) + k - 1.
        EXPECT(bm::padded_extent(out, k, s) == s * (out - 1) + k, "padded extent");
        EXPECT(bm::tap_index(out - 1, k - 1, s, k / 2) == bm::padded_extent(out, k, s) - 1 - k / 2, "tap index");
      }
    }
}

static std::vector<double> gaussian(double theta, double l1, double l2, int k) {
  const auto q = bm::gaussian_quadratic<double>(theta, l1, l2);
  std::vector<double> w(k * k);
  double total = 0;
  for (int dy = 0; dy < k; ++dy)
    for (int dx = 0; dx < k; ++dx) total += (w[dy * k + dx] = bm::gaussian_weight(q, dy, dx, k));
  for (double& v : w) v /= total;
  return w;
}

static void test_gaussian() {
  EXPECT(bm::gaussian_offset<double>(0, 15) == -7.0 && bm::gaussian_offset<double>(14, 15) == 7.0, "offsets");
  const double params[][3] = {{0.0, 2.0, 2.0}, {-0.5, 4.0, 1.0}, {1.3, 0.2, 5.0}, {3.0, 1.0, 0.7}};
  for (const auto& p : params)
    for (int k : {1, 3, 15, 21}) {
      const std::vector<double> w = gaussian(p[0], p[1], p[2], k);
      double total = 0;
      for (double v : w) total += v;
      EXPECT(std::fabs(total - 1) < 1e-12, "sum %.17g (k=%d)", total, k);
      for (int dy = 0; dy < k; ++dy)
        for (int dx = 0; dx < k; ++dx) {
          const double a = w[dy * k + dx], b = w[(k - 1 - dy) * k + (k - 1 - dx)];
          EXPECT(std::fabs(a - b) <= 1e-15 * std::fabs(a) + 1e-300, "point symmetry k=%d", k);
          EXPECT(a > 0 || k > 15, "positive weights");
        }
      // float and double agree to float rounding
      const auto qf = bm::gaussian_quadratic<float>((float)p[0], (float)p[1], (float)p[2]);
      const auto qd = bm::gaussian_quadratic<double>(p[0], p[1], p[2]);
      for (int e = 0; e < k * k; ++e) {
        const double vf = bm::gaussian_weight<float>(qf, e / k, e % k, k);
        const double vd = bm::gaussian_weight<double>(qd, e / k, e % k, k);
        // exp(-q / 2) in float: a relative error of a few eps32 * q, q = -2 log(weight)
        // (the parameters themselves are rounded to float).
        EXPECT(std::fabs(vf - vd) <= 1e-6 * (1 + 2 * std::fabs(std::log(vd))) * vd + 1e-37, "float vs double %g %g",
               vf, vd);
      }
    }
  // theta = 0: exp(-(x^2 / l1 + y^2 / l2) / 2), x the column offset.
  const int k = 7;
  const auto q = bm::gaussian_quadratic<double>(0.0, 3.0, 0.5);
  for (int dy = 0; dy < k; ++dy)
    for (int dx = 0; dx < k; ++dx) {
      const double x = dx - 3, y = dy - 3;
      const double want = std::exp(-0.5 * (x * x / 3.0 + y * y / 0.5));
      EXPECT(std::fabs(bm::gaussian_weight(q, dy, dx, k) - want) <= 1e-14 * want, "closed form dy=%d dx=%d", dy, dx);
    }
  // theta = pi / 2 swaps the axes.
  const std::vector<double> a = gaussian(0.0, 3.0, 0.5, k), b = gaussian(M_PI / 2, 3.0, 0.5, k);
  for (int dy = 0; dy < k; ++dy)
    for (int dx = 0; dx < k; ++dx)
      EXPECT(std::fabs(a[dy * k + dx] - b[dx * k + dy]) < 1e-14, "rotation by pi / 2");
}

// Brute-force blur of one plane (double).
static std::vector<double> brute_blur(const std::vector<double>& x, int64_t H, int64_t W, const std::vector<double>& w,
                                      int k, int s) {
  const int64_t Ho = bm::output_size(H, s), Wo = bm::output_size(W, s), r = k / 2;
  std::vector<double> out(Ho * Wo, 0.0);
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j)
      for (int dy = 0; dy < k; ++dy)
        for (int dx = 0; dx < k; ++dx)
          out[i * Wo + j] += w[dy * k + dx] * x[brute_mirror(s * i + dy - r, H) * W + brute_mirror(s * j + dx - r, W)];
  return out;
}

// The CUDA forward kernel's phases, block by block and thread by thread.
static std::vector<double> emulate_forward(const std::vector<double>& x, int64_t H, int64_t W,
                                           const std::vector<double>& weights, const double* gaussian_params, int k,
                                           int s, int th, int tw) {
  const bm::TileGeometry t = bm::make_tile_geometry(H, W, k, s, th, tw);
  const int nthreads = th * tw;
  std::vector<double> out(t.Ho * t.Wo, -1.0), w(k * k), red(nthreads), tile(t.in_rows * t.in_cols);
  for (int64_t i0 = 0; i0 < t.Ho; i0 += th)
    for (int64_t j0 = 0; j0 < t.Wo; j0 += tw) {
      if (gaussian_params) {
        for (int tid = 0; tid < nthreads; ++tid)
          bm::gaussian_weights_partial<double>(w.data(), red.data(), gaussian_params[0], gaussian_params[1],
                                               gaussian_params[2], k, tid, nthreads);
        for (int stride = nthreads / 2; stride > 0; stride /= 2)
          for (int tid = 0; tid < nthreads; ++tid) bm::tree_sum_step<double>(red.data(), stride, tid);
        for (int tid = 0; tid < nthreads; ++tid) bm::normalise_weights<double>(w.data(), red.data(), k * k, tid, nthreads);
      } else {
        for (int tid = 0; tid < nthreads; ++tid) bm::load_weights<double>(weights.data(), w.data(), k * k, tid, nthreads);
      }
      for (int tid = 0; tid < nthreads; ++tid)
        bm::load_input_tile<double, double>(x.data(), tile.data(), t, i0, j0, tid, nthreads);
      for (int tid = 0; tid < nthreads; ++tid) {
        const int oy = tid / tw, ox = tid % tw;
        if (i0 + oy < t.Ho && j0 + ox < t.Wo)
          out[(i0 + oy) * t.Wo + j0 + ox] = bm::tile_output<double>(tile.data(), w.data(), t, oy, ox);
      }
    }
  return out;
}

// The CUDA kernel-gradient phases (per block partial sums, then their total).
static std::vector<double> emulate_kernel_grad(const std::vector<double>& x, const std::vector<double>& g, int64_t H,
                                               int64_t W, int k, int s, int th, int tw) {
  const bm::TileGeometry t = bm::make_tile_geometry(H, W, k, s, th, tw);
  const int nthreads = th * tw;
  std::vector<double> total(k * k, 0.0), gtile(th * tw), tile(t.in_rows * t.in_cols);
  for (int64_t i0 = 0; i0 < t.Ho; i0 += th)
    for (int64_t j0 = 0; j0 < t.Wo; j0 += tw) {
      for (int tid = 0; tid < nthreads; ++tid) {
        bm::load_grad_tile<double, double>(g.data(), gtile.data(), t, i0, j0, tid, nthreads);
        bm::load_input_tile<double, double>(x.data(), tile.data(), t, i0, j0, tid, nthreads);
      }
      for (int tid = 0; tid < nthreads; ++tid)
        for (int e = tid; e < k * k; e += nthreads)
          total[e] += bm::tile_kernel_grad<double>(tile.data(), gtile.data(), t, e / k, e % k);
    }
  return total;
}

static double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

static void test_tiles() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uni(0.1, 1.1);
  struct Case { int64_t H, W; int k, s, th, tw; };
  const Case cases[] = {{1, 1, 3, 1, 2, 4}, {5, 7, 15, 2, 4, 8},  {17, 23, 5, 3, 2, 4}, {9, 31, 21, 4, 1, 8},
                        {12, 11, 1, 2, 4, 4}, {3, 2, 13, 1, 8, 2}, {40, 33, 7, 2, 8, 4}};
  for (const Case& c : cases) {
    std::vector<double> x(c.H * c.W), w(c.k * c.k);
    for (double& v : x) v = uni(rng);
    for (double& v : w) v = uni(rng);
    const std::vector<double> want = brute_blur(x, c.H, c.W, w, c.k, c.s);
    const std::vector<double> got = emulate_forward(x, c.H, c.W, w, nullptr, c.k, c.s, c.th, c.tw);
    EXPECT(max_abs_diff(got, want) < 1e-12, "forward tile %lldx%lld k%d s%d: %g", (long long)c.H, (long long)c.W,
           c.k, c.s, max_abs_diff(got, want));

    const double params[3] = {0.7, 3.0, 1.2};
    const std::vector<double> wg = gaussian(params[0], params[1], params[2], c.k);
    const std::vector<double> want_g = brute_blur(x, c.H, c.W, wg, c.k, c.s);
    const std::vector<double> got_g = emulate_forward(x, c.H, c.W, w, params, c.k, c.s, c.th, c.tw);
    EXPECT(max_abs_diff(got_g, want_g) < 1e-12, "gaussian forward tile k%d s%d: %g", c.k, c.s,
           max_abs_diff(got_g, want_g));

    // Backward: the adjoint of the brute-force blur, by scattering.
    const int64_t Ho = bm::output_size(c.H, c.s), Wo = bm::output_size(c.W, c.s), r = c.k / 2;
    std::vector<double> g(Ho * Wo);
    for (double& v : g) v = uni(rng);
    std::vector<double> gx_want(c.H * c.W, 0.0), gk_want(c.k * c.k, 0.0);
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j)
        for (int dy = 0; dy < c.k; ++dy)
          for (int dx = 0; dx < c.k; ++dx) {
            const int64_t src = brute_mirror(c.s * i + dy - r, c.H) * c.W + brute_mirror(c.s * j + dx - r, c.W);
            gx_want[src] += w[dy * c.k + dx] * g[i * Wo + j];
            gk_want[dy * c.k + dx] += x[src] * g[i * Wo + j];
          }
    const bm::TileGeometry t = bm::make_tile_geometry(c.H, c.W, c.k, c.s, 1, 32);
    std::vector<double> gx(c.H * c.W);
    for (int64_t row = 0; row < c.H; ++row)
      for (int64_t col = 0; col < c.W; ++col)
        gx[row * c.W + col] = bm::input_grad<double, double>(g.data(), w.data(), t, row, col);
    EXPECT(max_abs_diff(gx, gx_want) < 1e-11, "input grad k%d s%d: %g", c.k, c.s, max_abs_diff(gx, gx_want));
    const std::vector<double> gk = emulate_kernel_grad(x, g, c.H, c.W, c.k, c.s, c.th, c.tw);
    EXPECT(max_abs_diff(gk, gk_want) < 1e-10, "kernel grad tile k%d s%d: %g", c.k, c.s, max_abs_diff(gk, gk_want));
  }
}

int main() {
  test_symmetric_index();
  test_preimages();
  test_sizes();
  test_gaussian();
  test_tiles();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("blur_downsample_math: all checks passed\n");
  return 0;
}
