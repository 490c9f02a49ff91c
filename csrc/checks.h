// Argument checks shared by the CPU kernels. The Python wrappers in
// fastsmall/ops check the same things first with Python exceptions; these keep
// direct torch.ops.fastsmall.* callers from ever reaching a kernel with bad input.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace fastsmall {

// `t` must be a floating-point tensor of shape [..., rows, D] with D in {2, 3}.
inline void check_points(const at::Tensor& t, const char* name, int64_t rows, const char* what) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastsmall: ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() >= 2, "fastsmall: ", name, " must have shape [..., ", rows, ", D], got ",
              t.sizes());
  TORCH_CHECK(t.size(-2) == rows, "fastsmall: ", name, " has ", t.size(-2), " ", what,
              " (shape[-2]) but the skeleton has ", rows, "; shape ", t.sizes());
  TORCH_CHECK(t.size(-1) == 2 || t.size(-1) == 3, "fastsmall: ", name,
              " must have a last dimension D of 2 or 3, got ", t.size(-1));
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fastsmall: ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastsmall: ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
}

// Leading (batch) dimensions of a [..., rows, D] tensor.
inline std::vector<int64_t> batch_shape(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - 2);
}

inline std::vector<int64_t> with_tail(std::vector<int64_t> shape, int64_t rows, int64_t cols) {
  shape.push_back(rows);
  shape.push_back(cols);
  return shape;
}

// Number of [rows, D] items in a [..., rows, D] tensor (the product of the batch dims).
inline int64_t batch_numel(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t i = 0; i < t.dim() - 2; ++i) n *= t.size(i);
  return n;
}

// Items per parallel chunk: about at::internal::GRAIN_SIZE scalars of work.
inline int64_t grain(int64_t scalars_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, scalars_per_item));
}

}  // namespace fastsmall
