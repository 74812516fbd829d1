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
#include <algorithm>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
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

template <typename scalar_t>
void run(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool relu,
         at::Tensor& out) {
  const int64_t n_images = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_channels = weight.size(0);
  const int64_t tiles_down = (height + 1) / 2, tiles_across = (width + 1) / 2;
  const int64_t tiles = n_images * tiles_down * tiles_across;
  at::Tensor u = at::empty({16, channels, out_channels}, x.options());
  transform_filters(weight.data_ptr<scalar_t>(), out_channels, channels, u.data_ptr<scalar_t>());
  std::vector<scalar_t> bias_values(out_channels, scalar_t(0));
  if (bias.has_value()) std::copy_n(bias->data_ptr<scalar_t>(), out_channels, bias_values.begin());
  const scalar_t lower = relu ? scalar_t(0) : -std::numeric_limits<scalar_t>::infinity();
  const scalar_t* in = x.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  const at::ThreadLocalState caller;  // the dispatcher's state, for the ATen calls on worker threads
  at::parallel_for(0, (tiles + kChunk - 1) / kChunk, 1, [&](int64_t first_chunk, int64_t end_chunk) {
    at::ThreadLocalStateGuard same_state(caller);
    at::Tensor v = at::empty({16, kChunk, channels}, x.options());
    at::Tensor m = at::empty({16, kChunk, out_channels}, x.options());
    std::vector<scalar_t> zeros(channels, scalar_t(0)), scratch(out_channels);
    for (int64_t chunk = first_chunk; chunk < end_chunk; ++chunk) {
      const int64_t first = chunk * kChunk, count = std::min(kChunk, tiles - first);
      for (int64_t t = 0; t < count; ++t) {
        const int64_t tile = first + t, image = tile / (tiles_down * tiles_across);
        const int64_t row = tile / tiles_across % tiles_down, col = tile % tiles_across;
        const scalar_t* window[16];
        for (int i = 0; i < 4; ++i) {
          for (int j = 0; j < 4; ++j) {
            const int64_t y = 2 * row - 1 + i, xx = 2 * col - 1 + j;
            const bool inside = y >= 0 && y < height && xx >= 0 && xx < width;
            window[4 * i + j] = inside ? in + ((image * height + y) * width + xx) * channels : zeros.data();
          }
        }
        transform_window(window, v.data_ptr<scalar_t>() + t * channels, kChunk * channels, channels);
      }
      if (count < kChunk) {  // the last chunk's unused rows: zeros, not what the allocator left
        for (int k = 0; k < 16; ++k) {
          scalar_t* rows = v.data_ptr<scalar_t>() + (k * kChunk + count) * channels;
          std::fill(rows, rows + (kChunk - count) * channels, scalar_t(0));
        }
      }
      at::bmm_out(m, v, u);
      for (int64_t t = 0; t < count; ++t) {
        const int64_t tile = first + t, image = tile / (tiles_down * tiles_across);
        const int64_t row = tile / tiles_across % tiles_down, col = tile % tiles_across;
        scalar_t* pixels[4];
        for (int i = 0; i < 2; ++i) {
          for (int j = 0; j < 2; ++j) {
            const int64_t y = 2 * row + i, xx = 2 * col + j;
            pixels[2 * i + j] = y < height && xx < width ? dst + ((image * height + y) * width + xx) * out_channels
                                                         : scratch.data();
          }
        }
        transform_products(m.data_ptr<scalar_t>() + t * out_channels, kChunk * out_channels, bias_values.data(),
                           lower, pixels, out_channels);
      }
    }
  });
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

}  // namespace
}  // namespace conv3x3_winograd

TORCH_LIBRARY_IMPL(mzsr_fast, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd::conv3x3_winograd_cpu);
}

}  // namespace mzsr_fast
