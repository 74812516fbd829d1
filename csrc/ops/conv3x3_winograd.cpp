// Schemas of mzsr_fast::conv3x3_winograd, a 3x3 convolution (stride 1, zero padding
// 1) by Winograd's minimal filtering F(2x2, 3x3), and of its weight gradient.
// Kernels: cpu/conv3x3_winograd.cpp (the CPU only: on a GPU, cuDNN already picks its
// own fast algorithms). Fake kernels and autograd: mzsr_fast/ops/conv3x3_winograd.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mzsr_fast, m) {
  // x [N, C, H, W], weight [O, C, 3, 3], bias [O] or None
  // -> [N, O, H, W] channels-last: conv2d(x, weight, bias, padding=1), then max(., 0) when relu.
  m.def("conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, bool relu) -> Tensor");
  // grad [N, O, H, W] (dL/dy of y = conv3x3(x, weight)), x [N, C, H, W] -> dL/dweight [O, C, 3, 3]
  m.def("conv3x3_winograd_weight_grad(Tensor grad, Tensor x) -> Tensor");
}
