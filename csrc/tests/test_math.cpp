// Tests of csrc/ops/blur_downsample_math.h, the arithmetic shared by the CPU
// and CUDA kernels of blur_downsample: the symmetric index against a
// brute-force mirror, the padded-index preimages, output sizes, the Gaussian
// weights (sum, symmetries, closed form), and the tile phases of the CUDA
// kernels run on the host thread by thread against a brute-force blur, and
// the tile planner of the CUDA launches (clamped tiles, the opt-in path).
// Plain C++ (no torch); registered with ctest by CMakeLists.txt.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
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

// The CUDA launches' tile planner (H100/H200 limits: 48 KiB default, 227 KiB
// opt-in, 228 KiB per SM), and the planned tiles run through the emulated kernel.
static void test_tile_plan() {
  const int64_t kDefault = 48 * 1024, kOptin = 227 * 1024, kSm = 228 * 1024;
  // Typical fp32 forward (k 15, x2, a 128 x 128 output): the full 8 x 32 tile in 48 KiB.
  bm::TilePlan p = bm::plan_tile(15, 2, 128, 128, 4, 15 * 15, 1, kDefault, kOptin, kSm);
  EXPECT(p.th == 8 && p.tw == 32 && !p.opt_in, "typical: %dx%d opt_in %d", p.th, p.tw, p.opt_in);
  // Tiny output at a large stride: stride 100, k 21, a 1 x 1 output gets a 1 x 1 tile.
  p = bm::plan_tile(21, 100, 1, 1, 4, 21 * 21, 1, kDefault, kOptin, kSm);
  EXPECT(p.th == 1 && p.tw == 1 && !p.opt_in && p.smem == (21 * 21 * 2 + 1) * 4, "1x1 at s100: %dx%d %lld", p.th,
         p.tw, (long long)p.smem);
  // fp64, k 31, stride 8: two blocks per SM rather than one 8 x 32 block of 202 KB.
  p = bm::plan_tile(31, 8, 200, 200, 8, 31 * 31, 1, kDefault, kOptin, kSm);
  EXPECT(p.th > 0 && p.smem <= kSm / 2, "fp64 k31 s8: %dx%d %lld bytes", p.th, p.tw, (long long)p.smem);
  // The opt-in path: fp64 k 41 at stride 4 keeps most threads resident with an 8 x 16 tile of 70 KB
  // (within 48 KiB only tiny tiles fit).
  p = bm::plan_tile(41, 4, 50, 50, 8, 41 * 41, 1, kDefault, kOptin, kSm);
  EXPECT(p.th > 0 && p.opt_in && p.smem > kDefault && p.smem <= kOptin, "opt-in: %dx%d %lld bytes", p.th, p.tw,
         (long long)p.smem);
  // Nothing fits: reported as a 0 x 0 plan (the launcher raises).
  p = bm::plan_tile(201, 1, 10, 10, 8, 201 * 201, 1, kDefault, kOptin, kSm);
  EXPECT(p.th == 0 && p.tw == 0, "too large: %dx%d", p.th, p.tw);
  // Every plan is a power-of-two tile within the output's clamp and the opt-in limit.
  for (int64_t k : {1, 5, 21, 31})
    for (int64_t s : {1, 2, 4, 8, 100})
      for (int64_t n : {1, 3, 9, 40})
        for (int64_t bytes : {4, 8}) {
          p = bm::plan_tile(k, s, n, n + 5, bytes, k * k, 1, kDefault, kOptin, kSm);
          const bool pow2 = p.th > 0 && (p.th & (p.th - 1)) == 0 && (p.tw & (p.tw - 1)) == 0;
          EXPECT(pow2 && p.th <= 8 && p.tw <= 32 && p.th < 2 * n && p.tw < 2 * (n + 5) && p.smem <= kOptin &&
                     p.smem == bm::tile_smem_bytes(k, s, p.th, p.tw, k * k, 1, bytes) && p.opt_in == (p.smem > kDefault),
                 "k%lld s%lld n%lld: %dx%d", (long long)k, (long long)s, (long long)n, p.th, p.tw);
        }

  // The planned tiles compute the blur: the stride-100 1 x 1 case and the opt-in case, emulated.
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uni(0.1, 1.1);
  struct Case { int64_t H, W; int k, s; };
  for (const Case& c : {Case{57, 80, 21, 100}, Case{37, 45, 41, 4}}) {
    const int64_t Ho = bm::output_size(c.H, c.s), Wo = bm::output_size(c.W, c.s);
    p = bm::plan_tile(c.k, c.s, Ho, Wo, 8, c.k * c.k, 1, kDefault, kOptin, kSm);
    std::vector<double> x(c.H * c.W), w(c.k * c.k);
    for (double& v : x) v = uni(rng);
    for (double& v : w) v = uni(rng);
    const std::vector<double> got = emulate_forward(x, c.H, c.W, w, nullptr, c.k, c.s, p.th, p.tw);
    const std::vector<double> want = brute_blur(x, c.H, c.W, w, c.k, c.s);
    EXPECT(p.th > 0 && max_abs_diff(got, want) < 1e-11, "planned tile k%d s%d %dx%d: %g", c.k, c.s, p.th, p.tw,
           max_abs_diff(got, want));
  }
}

int main() {
  test_symmetric_index();
  test_preimages();
  test_sizes();
  test_gaussian();
  test_tiles();
  test_tile_plan();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("blur_downsample_math: all checks passed\n");
  return 0;
}
