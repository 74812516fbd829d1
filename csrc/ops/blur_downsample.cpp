// Schemas of the mzsr_fast:: ops. This is the one TORCH_LIBRARY(mzsr_fast)
// block of the codebase; other ops add theirs with TORCH_LIBRARY_FRAGMENT.
// Kernels: cpu/blur_downsample_forward.cpp, cpu/blur_downsample_backward.cpp,
// cuda/blur_downsample.cu (argument checks of all: blur_downsample_checks.h).
// Fake kernels and autograd: mzsr_fast/ops/blur_downsample.py, which also
// defines the Triton ops of the same schemas.
#include <torch/library.h>

TORCH_LIBRARY(mzsr_fast, m) {
  // x [B, C, H, W], kernel [Bk, k, k] (Bk in {1, B}, k odd), stride >= 1
  // -> [B, C, ceil(H / stride), ceil(W / stride)]; half-sample symmetric border.
  m.def("blur_downsample(Tensor x, Tensor kernel, int stride) -> Tensor");
  // -> (grad_x [B, C, H, W] or [0] when not need_x,
  //     grad_kernel [Bk, k, k] or [0] when not need_kernel)
  m.def(
      "blur_downsample_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, bool need_x, "
      "bool need_kernel) -> (Tensor, Tensor)");
  // theta, lambda1, lambda2 [Bk]: the normalised anisotropic Gaussian of size
  // `size` (odd) is computed inside the kernel, then as blur_downsample.
  m.def(
      "gaussian_blur_downsample(Tensor x, Tensor theta, Tensor lambda1, Tensor lambda2, int size, "
      "int stride) -> Tensor");
}
