// Schema of mzsr_fast::sgd_step, the fused multi-tensor SGD update (see sgd_step_math.h).
// The TORCH_LIBRARY(mzsr_fast, m) block lives in blur_downsample.cpp; each other op
// adds its schema with a fragment. Kernels: cpu/sgd_step.cpp, cuda/sgd_step.cu.
// Fake kernel and autograd: mzsr_fast/ops/sgd_step.py, which also defines the
// Triton op of the same schema.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mzsr_fast, m) {
  // out[i] = params[i] - alpha * rates[task, i] * grads[i]; params may be empty (then 0);
  // rates: None (rate = alpha) or a [1 or T, 1 or len(grads)] table in the compute dtype.
  m.def("sgd_step(Tensor[] params, Tensor[] grads, Tensor? rates, float alpha) -> Tensor[]");
}
