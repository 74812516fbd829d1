// CPU kernel of mzsr_fast::conv3x3_winograd: Winograd's F(2x2, 3x3) over
// channels-last maps.
//
// Each 2x2 block of outputs ("tile") comes from the 4x4 window of input around
// it. With d the window of one input channel and g one 3x3 filter,
//   y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, 4x4)
// so a tile costs 16 products per input and output channel instead of 36.
// Summed over input channels, the 16 elementwise products are 16 matrix
// products: M[k] = V[k] U[k], V[k] [tiles, C] the transformed inputs, U[k]
// [C, O] the transformed filters. Tiles go in chunks of kChunk: a chunk's
// inputs are transformed into V, multiplied by at::bmm (MKL's GEMM) into M,
// and M is transformed back into the chunk's 2x2 outputs, bias and ReLU
// added there. B^T and A^T hold only 0 and +-1 (additions only), G halves.
//
// The weight gradient runs the same tiles the other way: with dY a tile's
// 2x2 output gradient, dM = A dY A^T, dU[k] = sum over tiles of V[k]^T dM[k]
// ([C, O], one GEMM per chunk, accumulated), and dg = G^T dU G per filter.
#include <algorithm>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

// The transforms are loops over channels; GCC builds them for AVX-512, AVX2 and
// plain x86-64 and picks one at load time for the CPU it runs on.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MZSR_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MZSR_VECTOR_CLONES
#endif

namespace mzsr_fast {
namespace conv3x3_winograd {
namespace {

// Tiles per chunk: V and M are [16, kChunk, 64] (512 KiB each in float32 at
// 64 channels), within the L2 cache. 96 to 512 ran at the same speed on Zen 4.
constexpr int64_t kChunk = 128;

// U [16, C, O]: G g G^T of every filter g = weight[o, c], G = [[1, 0, 0],
// [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
template <typename scalar_t>
void transform_filters(const scalar_t* weight, int64_t out_channels, int64_t in_channels, scalar_t* u) {
  const scalar_t half = 0.5;
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t c = 0; c < in_channels; ++c) {
      const scalar_t* g = weight + (o * in_channels + c) * 9;
      scalar_t rows[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        rows[0][j] = g[j];
        rows[1][j] = (g[j] + g[3 + j] + g[6 + j]) * half;
        rows[2][j] = (g[j] - g[3 + j] + g[6 + j]) * half;
        rows[3][j] = g[6 + j];
      }
      for (int i = 0; i < 4; ++i) {
        const scalar_t* r = rows[i];
        const scalar_t full[4] = {r[0], (r[0] + r[1] + r[2]) * half, (r[0] - r[1] + r[2]) * half, r[2]};
        for (int j = 0; j < 4; ++j) u[((i * 4 + j) * in_channels + c) * out_channels + o] = full[j];
      }
    }
  }
}

// One tile's B^T d B for every channel: window[4 i + j] points at the C
// channels of the window's pixel (i, j) (a row of zeros outside the image);
// writes v[k * stride + c] for the 16 entries k.
template <typename scalar_t>
MZSR_VECTOR_CLONES void transform_window(const scalar_t* const* window, scalar_t* __restrict v, int64_t stride,
                                         int64_t channels) {
  const scalar_t *d0 = window[0], *d1 = window[1], *d2 = window[2], *d3 = window[3];
  const scalar_t *d4 = window[4], *d5 = window[5], *d6 = window[6], *d7 = window[7];
  const scalar_t *d8 = window[8], *d9 = window[9], *d10 = window[10], *d11 = window[11];
  const scalar_t *d12 = window[12], *d13 = window[13], *d14 = window[14], *d15 = window[15];
#pragma GCC ivdep
  for (int64_t c = 0; c < channels; ++c) {
    // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3 of the window
    const scalar_t r[4][4] = {
        {d0[c] - d8[c], d1[c] - d9[c], d2[c] - d10[c], d3[c] - d11[c]},
        {d4[c] + d8[c], d5[c] + d9[c], d6[c] + d10[c], d7[c] + d11[c]},
        {d8[c] - d4[c], d9[c] - d5[c], d10[c] - d6[c], d11[c] - d7[c]},
        {d4[c] - d12[c], d5[c] - d13[c], d6[c] - d14[c], d7[c] - d15[c]}};
    for (int i = 0; i < 4; ++i) {  // (B^T d) B: the same on the columns
      v[(4 * i + 0) * stride + c] = r[i][0] - r[i][2];
      v[(4 * i + 1) * stride + c] = r[i][1] + r[i][2];
      v[(4 * i + 2) * stride + c] = r[i][2] - r[i][1];
      v[(4 * i + 3) * stride + c] = r[i][1] - r[i][3];
    }
  }
}

// One tile's A^T M A + bias, then max(., lower) (0 for the ReLU, -inf for
// none; NaN stays NaN): m[k * stride + o] for the 16 entries k, out[2 i + j]
// points at the O channels of output pixel (i, j) (a scratch row outside the image).
template <typename scalar_t>
MZSR_VECTOR_CLONES void transform_products(const scalar_t* __restrict m, int64_t stride,
                                           const scalar_t* __restrict bias, scalar_t lower,
                                           scalar_t* const* out, int64_t channels) {
  scalar_t *y0 = out[0], *y1 = out[1], *y2 = out[2], *y3 = out[3];
#pragma GCC ivdep
  for (int64_t o = 0; o < channels; ++o) {
    scalar_t a[4][4];
    for (int k = 0; k < 16; ++k) a[k / 4][k % 4] = m[k * stride + o];
    scalar_t r[2][4];  // A^T M: rows m0 + m1 + m2, m1 - m2 - m3
    for (int j = 0; j < 4; ++j) {
      r[0][j] = a[0][j] + a[1][j] + a[2][j];
      r[1][j] = a[1][j] - a[2][j] - a[3][j];
    }
    const scalar_t b = bias[o];
    const scalar_t top_left = r[0][0] + r[0][1] + r[0][2] + b, top_right = r[0][1] - r[0][2] - r[0][3] + b;
    const scalar_t bottom_left = r[1][0] + r[1][1] + r[1][2] + b, bottom_right = r[1][1] - r[1][2] - r[1][3] + b;
    y0[o] = top_left < lower ? lower : top_left;
    y1[o] = top_right < lower ? lower : top_right;
    y2[o] = bottom_left < lower ? lower : bottom_left;
    y3[o] = bottom_right < lower ? lower : bottom_right;
  }
}

// One tile's 2x2 output gradient dY -> dM = A dY A^T (4x4), A = [[1, 0], [1, 1],
// [1, -1], [0, -1]]: grad[2 i + j] points at the O channels of pixel (i, j) of
// the tile (a row of zeros outside the image); writes m[k * stride + o].
template <typename scalar_t>
MZSR_VECTOR_CLONES void transform_gradient(const scalar_t* const* grad, scalar_t* __restrict m, int64_t stride,
                                           int64_t channels) {
  const scalar_t *g0 = grad[0], *g1 = grad[1], *g2 = grad[2], *g3 = grad[3];
#pragma GCC ivdep
  for (int64_t o = 0; o < channels; ++o) {
    // A dY: rows g_top, g_top + g_bottom, g_top - g_bottom, -g_bottom, per column
    const scalar_t r[4][2] = {{g0[o], g1[o]}, {g0[o] + g2[o], g1[o] + g3[o]},
                              {g0[o] - g2[o], g1[o] - g3[o]}, {-g2[o], -g3[o]}};
    for (int i = 0; i < 4; ++i) {  // (A dY) A^T: the same on the columns
      m[(4 * i + 0) * stride + o] = r[i][0];
      m[(4 * i + 1) * stride + o] = r[i][0] + r[i][1];
      m[(4 * i + 2) * stride + o] = r[i][0] - r[i][1];
      m[(4 * i + 3) * stride + o] = -r[i][1];
    }
  }
}

// The filter gradients from dU [16, C, O]: dg = G^T dU G for every (o, c),
// written to grad_weight [O, C, 3, 3].
template <typename scalar_t>
void untransform_filters(const scalar_t* du, int64_t out_channels, int64_t in_channels, scalar_t* grad_weight) {
  const scalar_t half = 0.5;
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t c = 0; c < in_channels; ++c) {
      scalar_t d[4][4];
      for (int k = 0; k < 16; ++k) d[k / 4][k % 4] = du[(k * in_channels + c) * out_channels + o];
      scalar_t rows[3][4];  // G^T dU: G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]
      for (int j = 0; j < 4; ++j) {
        rows[0][j] = d[0][j] + (d[1][j] + d[2][j]) * half;
        rows[1][j] = (d[1][j] - d[2][j]) * half;
        rows[2][j] = (d[1][j] + d[2][j]) * half + d[3][j];
      }
      scalar_t* g = grad_weight + (o * in_channels + c) * 9;
      for (int i = 0; i < 3; ++i) {  // (G^T dU) G
        const scalar_t* r = rows[i];
        g[3 * i + 0] = r[0] + (r[1] + r[2]) * half;
        g[3 * i + 1] = (r[1] - r[2]) * half;
        g[3 * i + 2] = (r[1] + r[2]) * half + r[3];
      }
    }
  }
}

// The tiles of N maps of H x W pixels, numbered image by image, row by row.
struct Tiles {
  int64_t height, width, down, across, count;

  Tiles(int64_t n, int64_t h, int64_t w) : height(h), width(w), down((h + 1) / 2), across((w + 1) / 2),
                                           count(n * ((h + 1) / 2) * ((w + 1) / 2)) {}

  // Pointers to the `channels` values of each pixel of tile's window: its
  // 4x4 input window (offset -1, size 4) or its 2x2 outputs (offset 0, size
  // 2), `outside` for pixels outside the image.
  template <typename T>
  void pixels(T* base, int64_t channels, int64_t tile, int offset, int size, T* outside, T** into) const {
    const int64_t image = tile / (down * across), row = tile / across % down, col = tile % across;
    for (int i = 0; i < size; ++i) {
      for (int j = 0; j < size; ++j) {
        const int64_t y = 2 * row + offset + i, x = 2 * col + offset + j;
        const bool inside = y >= 0 && y < height && x >= 0 && x < width;
        into[size * i + j] = inside ? base + ((image * height + y) * width + x) * channels : outside;
      }
    }
  }
};

// Zeros in rows [count, kChunk) of each of the 16 matrices of buffer
// [16, kChunk, width]: the last chunk's unused rows, not what the allocator left.
template <typename scalar_t>
void clear_unused_rows(scalar_t* buffer, int64_t count, int64_t width) {
  if (count == kChunk) return;
  for (int k = 0; k < 16; ++k) {
    scalar_t* rows = buffer + (k * kChunk + count) * width;
    std::fill(rows, rows + (kChunk - count) * width, scalar_t(0));
  }
}

// The input windows of tiles [first, first + count), transformed into v
// [16, kChunk, C] (rows count and after zero). in: the maps, channels-last;
// zeros: a row of C zeros (pixels outside the image).
template <typename scalar_t>
void transform_windows(const Tiles& tiles, const scalar_t* in, int64_t channels, const scalar_t* zeros,
                       int64_t first, int64_t count, scalar_t* v) {
  for (int64_t t = 0; t < count; ++t) {
    const scalar_t* window[16];
    tiles.pixels(in, channels, first + t, -1, 4, zeros, window);
    transform_window(window, v + t * channels, kChunk * channels, channels);
  }
  clear_unused_rows(v, count, channels);
}

template <typename scalar_t>
void run(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool relu,
         at::Tensor& out) {
  const int64_t channels = x.size(1), out_channels = weight.size(0);
  const Tiles tiles(x.size(0), x.size(2), x.size(3));
  at::Tensor u = at::empty({16, channels, out_channels}, x.options());
  transform_filters(weight.data_ptr<scalar_t>(), out_channels, channels, u.data_ptr<scalar_t>());
  std::vector<scalar_t> bias_values(out_channels, scalar_t(0));
  if (bias.has_value()) std::copy_n(bias->data_ptr<scalar_t>(), out_channels, bias_values.begin());
  const scalar_t lower = relu ? scalar_t(0) : -std::numeric_limits<scalar_t>::infinity();
  const scalar_t* in = x.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  // The workers' ATen calls (at::empty, at::bmm_out) take and make plain
  // tensors that never require grad: no autograd state to carry to them.
  at::parallel_for(0, (tiles.count + kChunk - 1) / kChunk, 1, [&](int64_t first_chunk, int64_t end_chunk) {
    at::Tensor v = at::empty({16, kChunk, channels}, x.options());
    at::Tensor m = at::empty({16, kChunk, out_channels}, x.options());
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    std::vector<scalar_t> scratch(out_channels);
    for (int64_t chunk = first_chunk; chunk < end_chunk; ++chunk) {
      const int64_t first = chunk * kChunk, count = std::min(kChunk, tiles.count - first);
      transform_windows(tiles, in, channels, zeros.data(), first, count, v.data_ptr<scalar_t>());
      at::bmm_out(m, v, u);
      for (int64_t t = 0; t < count; ++t) {
        scalar_t* pixels[4];
        tiles.pixels(dst, out_channels, first + t, 0, 2, scratch.data(), pixels);
        transform_products(m.data_ptr<scalar_t>() + t * out_channels, kChunk * out_channels, bias_values.data(),
                           lower, pixels, out_channels);
      }
    }
  });
}

template <typename scalar_t>
void run_weight_grad(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight) {
  const int64_t channels = x.size(1), out_channels = grad.size(1);
  const Tiles tiles(x.size(0), x.size(2), x.size(3));
  const scalar_t* in = x.data_ptr<scalar_t>();
  const scalar_t* dy = grad.data_ptr<scalar_t>();
  const int64_t chunks = (tiles.count + kChunk - 1) / kChunk;
  // dU per thread, [16, C, O] each, summed in thread order at the end
  std::vector<at::Tensor> partial(at::get_num_threads());
  at::parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t end_chunk) {  // ATen calls as in run
    at::Tensor v = at::empty({16, kChunk, channels}, x.options());
    at::Tensor m = at::empty({16, kChunk, out_channels}, x.options());
    at::Tensor& du = partial[at::get_thread_num()];
    if (!du.defined()) du = at::zeros({16, channels, out_channels}, x.options());
    const std::vector<scalar_t> zeros(std::max(channels, out_channels), scalar_t(0));
    for (int64_t chunk = first_chunk; chunk < end_chunk; ++chunk) {
      const int64_t first = chunk * kChunk, count = std::min(kChunk, tiles.count - first);
      transform_windows(tiles, in, channels, zeros.data(), first, count, v.data_ptr<scalar_t>());
      for (int64_t t = 0; t < count; ++t) {
        const scalar_t* outputs[4];
        tiles.pixels(dy, out_channels, first + t, 0, 2, zeros.data(), outputs);
        transform_gradient(outputs, m.data_ptr<scalar_t>() + t * out_channels, kChunk * out_channels, out_channels);
      }
      clear_unused_rows(m.data_ptr<scalar_t>(), count, out_channels);
      du.baddbmm_(v.transpose(1, 2), m);
    }
  });
  at::Tensor du;  // the threads' partial sums, in thread order
  for (const at::Tensor& p : partial) {
    if (p.defined()) du = du.defined() ? du.add_(p) : p;
  }
  untransform_filters(du.data_ptr<scalar_t>(), out_channels, channels, grad_weight.data_ptr<scalar_t>());
}

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                bool relu) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_winograd: x: expected [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3,
              "conv3x3_winograd: weight: expected [O, ", x.size(1), ", 3, 3], got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "conv3x3_winograd: x: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "conv3x3_winograd: weight: expected ", x.scalar_type(),
              " like x, got ", weight.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "conv3x3_winograd: bias: expected [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "conv3x3_winograd: bias: expected ", x.scalar_type(),
                " like x, got ", bias->scalar_type());
  }
  const at::Tensor input = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor filters = weight.contiguous();
  const c10::optional<at::Tensor> shift = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : bias;
  at::Tensor out = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3)},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd", [&] { run<scalar_t>(input, filters, shift, relu, out); });
  return out;
}

at::Tensor conv3x3_winograd_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_winograd_weight_grad: x: expected [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(2) == x.size(2) && grad.size(3) == x.size(3),
              "conv3x3_winograd_weight_grad: grad: expected [", x.size(0), ", O, ", x.size(2), ", ", x.size(3),
              "], got ", grad.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "conv3x3_winograd_weight_grad: x: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "conv3x3_winograd_weight_grad: grad: expected ",
              x.scalar_type(), " like x, got ", grad.scalar_type());
  at::Tensor grad_weight = at::zeros({grad.size(1), x.size(1), 3, 3}, x.options());
  if (grad.numel() == 0 || x.numel() == 0) return grad_weight;
  const at::Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor input = x.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd_weight_grad",
                             [&] { run_weight_grad<scalar_t>(g, input, grad_weight); });
  return grad_weight;
}

}  // namespace
}  // namespace conv3x3_winograd

TORCH_LIBRARY_IMPL(mzsr_fast, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd::conv3x3_winograd_cpu);
  m.impl("conv3x3_winograd_weight_grad", &conv3x3_winograd::conv3x3_winograd_weight_grad_cpu);
}

}  // namespace mzsr_fast
