// Argument checks of the mzsr_fast::blur_downsample ops (schemas:
// blur_downsample.cpp), shared by the CPU kernels (cpu/blur_downsample_*.cpp)
// and the CUDA kernels (cuda/blur_downsample.cu). Host only (ATen); the
// per-element arithmetic is in blur_downsample_math.h.
//
// The one difference between the two is where the tensors must be, passed as
// `type`: the CPU kernels take CPU tensors, the CUDA kernels take x on a CUDA
// device and every other tensor on x's device. Each message names the op and
// the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "ops/blur_downsample_math.h"

namespace mzsr_fast {
namespace blur_checks {

// Whether t (not x) is where the kernels of `type` want it.
inline bool placed(const at::Tensor& t, const at::Tensor& x, c10::DeviceType type) {
  return type == c10::DeviceType::CPU ? t.device().is_cpu() : t.device() == x.device();
}

// x: [B, C, H, W], floating point, H, W >= 1, on a device of `type`.
inline void check_x(const at::Tensor& x, c10::DeviceType type, const char* op) {
  TORCH_CHECK(x.device().type() == type, op, ": x must be a ", c10::DeviceTypeName(type), " tensor, got ",
              x.device());
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": x must have H, W >= 1, got ", x.sizes());
}

// kernel: [Bk, k, k] with k odd and Bk in {1, B}, floating point; stride >= 1.
// After check_x.
inline void check_kernel(const at::Tensor& x, const at::Tensor& kernel, int64_t stride, c10::DeviceType type,
                         const char* op) {
  if (type == c10::DeviceType::CPU) {
    TORCH_CHECK(placed(kernel, x, type), op, ": kernel must be a CPU tensor, got ", kernel.device());
  } else {
    TORCH_CHECK(placed(kernel, x, type), op, ": kernel must be on ", x.device(), ", got ", kernel.device());
  }
  TORCH_CHECK(kernel.dim() == 3 && kernel.size(1) == kernel.size(2) && kernel.size(1) % 2 == 1, op,
              ": kernel must be [Bk, k, k] with k odd, got ", kernel.sizes());
  TORCH_CHECK(kernel.size(0) == 1 || kernel.size(0) == x.size(0), op,
              ": kernel must hold 1 or B = ", x.size(0), " kernels, got ", kernel.size(0));
  TORCH_CHECK(at::isFloatingType(kernel.scalar_type()), op, ": kernel must be floating point, got ",
              kernel.scalar_type());
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
}

// The arguments of blur_downsample_backward: x and kernel as above, grad_out
// [B, C, ceil(H / stride), ceil(W / stride)].
inline void check_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& kernel,
                           int64_t stride, c10::DeviceType type, const char* op) {
  check_x(x, type, op);
  check_kernel(x, kernel, stride, type, op);
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t Ho = blur_math::output_size(x.size(2), stride), Wo = blur_math::output_size(x.size(3), stride);
  const bool ok = placed(grad_out, x, type) && grad_out.dim() == 4 && grad_out.size(0) == B &&
                  grad_out.size(1) == C && grad_out.size(2) == Ho && grad_out.size(3) == Wo;
  if (type == c10::DeviceType::CPU) {
    TORCH_CHECK(ok, op, ": grad_out must be a CPU tensor [", B, ", ", C, ", ", Ho, ", ", Wo, "], got ",
                grad_out.sizes());
  } else {
    TORCH_CHECK(ok, op, ": grad_out must be [", B, ", ", C, ", ", Ho, ", ", Wo, "] on ", x.device(), ", got ",
                grad_out.sizes());
  }
}

// The arguments of gaussian_blur_downsample: x as above, size odd >= 1,
// stride >= 1, theta / lambda1 / lambda2 floating point of one shape [Bk]
// with Bk in {1, B}. Returns Bk.
inline int64_t check_gaussian(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& lambda1,
                              const at::Tensor& lambda2, int64_t size, int64_t stride, c10::DeviceType type,
                              const char* op) {
  check_x(x, type, op);
  TORCH_CHECK(size >= 1 && size % 2 == 1, op, ": size must be odd and >= 1, got ", size);
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  const int64_t Bk = theta.numel();
  for (const at::Tensor* p : {&theta, &lambda1, &lambda2}) {
    const bool ok = placed(*p, x, type) && p->dim() == 1 && p->numel() == Bk && at::isFloatingType(p->scalar_type());
    if (type == c10::DeviceType::CPU) {
      TORCH_CHECK(ok, op, ": theta, lambda1, lambda2 must be floating-point CPU tensors of one shape [Bk], got ",
                  theta.sizes(), ", ", lambda1.sizes(), ", ", lambda2.sizes());
    } else {
      TORCH_CHECK(ok, op, ": theta, lambda1, lambda2 must be floating-point tensors of one shape [Bk] on ",
                  x.device(), ", got ", theta.sizes(), ", ", lambda1.sizes(), ", ", lambda2.sizes());
    }
  }
  TORCH_CHECK(Bk == 1 || Bk == x.size(0), op, ": theta must hold 1 or B = ", x.size(0), " values, got ", Bk);
  return Bk;
}

}  // namespace blur_checks
}  // namespace mzsr_fast
