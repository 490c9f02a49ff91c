// Argument checks of the CPU kernels, all of them. The Python wrappers in fastsmall/ops check the
// same things first with Python exceptions; these keep direct torch.ops.fastsmall.* callers from
// ever reaching a kernel with bad input. Errors name the argument and what was expected.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace fastsmall {

// `t` must be a floating-point tensor; `name` may be given in pieces ("tensors[", i, "]").
template <typename... Name>
inline void check_floating(const at::Tensor& t, const Name&... name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastsmall: ", name...,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fastsmall: ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastsmall: ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has dtype ", ref.scalar_type());
}

// An output tensor of an op's .out overload: the shape `expected`, `ref`'s dtype and device,
// contiguous (the kernels write it row by row), sharing no memory with the input `ref`.
inline void check_out(const at::Tensor& out, const char* name, const at::Tensor& ref, const char* ref_name,
                      at::IntArrayRef expected) {
  check_like(out, name, ref, ref_name);
  TORCH_CHECK(out.sizes() == expected, "fastsmall: ", name, " must have shape ", expected, ", got ", out.sizes());
  TORCH_CHECK(out.is_contiguous(), "fastsmall: ", name, " must be contiguous");
  TORCH_CHECK(at::get_overlap_status(out, ref) == at::MemOverlapStatus::No, "fastsmall: ", name,
              " shares memory with ", ref_name);
}

inline void check_eps(double eps) { TORCH_CHECK(eps >= 0, "fastsmall: eps must be >= 0, got ", eps); }

// ---- poses: [..., rows, D] ---------------------------------------------------------------------

// `t` must be a floating-point tensor of shape [..., rows, D] with D in {2, 3}.
inline void check_points(const at::Tensor& t, const char* name, int64_t rows, const char* what) {
  check_floating(t, name);
  TORCH_CHECK(t.dim() >= 2, "fastsmall: ", name, " must have shape [..., ", rows, ", D], got ", t.sizes());
  TORCH_CHECK(t.size(-2) == rows, "fastsmall: ", name, " has ", t.size(-2), " ", what,
              " (shape[-2]) but the skeleton has ", rows, "; shape ", t.sizes());
  TORCH_CHECK(t.size(-1) == 2 || t.size(-1) == 3, "fastsmall: ", name,
              " must have a last dimension D of 2 or 3, got ", t.size(-1));
}

// An optional input that must be like `ref` (device, dtype) with shape `expected` (`hint`
// explains it); returns it contiguous, or an undefined tensor when it is absent.
inline at::Tensor optional_input(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& ref,
                                 const char* ref_name, at::IntArrayRef expected, const char* hint = "") {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_like(*t, name, ref, ref_name);
  TORCH_CHECK(t->sizes() == expected, "fastsmall: ", name, " must have shape ", expected, hint, ", got ",
              t->sizes());
  return t->contiguous();
}

// ---- logits: [B, C] (distribution alignment) ------------------------------------------------------

inline void check_logits(const at::Tensor& t, const char* name) {
  check_floating(t, name);
  TORCH_CHECK(t.dim() == 2, "fastsmall: ", name, " must have shape [B, C], got ", t.sizes());
  TORCH_CHECK(t.size(1) >= 1, "fastsmall: ", name, " must have at least one class (C >= 1), got shape ",
              t.sizes());
  // class indices are carried in the compute type inside the kernels: exact below 2^24
  TORCH_CHECK(t.size(1) <= (int64_t(1) << 24), "fastsmall: ", name, " has ", t.size(1),
              " classes; the CPU kernels take at most 2^24");
}

inline void check_class_vector(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastsmall: ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(1), "fastsmall: ", name, " must have shape [C] = [",
              logits.size(1), "] (one entry per class of logits), got ", t.sizes());
  check_same_device(t, name, logits, "logits");
}

inline void check_rows(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "fastsmall: ", name, " must have shape [B] = [",
              logits.size(0), "] (one entry per row of logits), got ", t.sizes());
  check_same_device(t, name, logits, "logits");
}

inline void check_target_and_mask(const at::Tensor& target, const at::Tensor& mask, const at::Tensor& logits) {
  TORCH_CHECK(target.scalar_type() == at::kLong, "fastsmall: target must be an int64 tensor of class indices, got ",
              target.scalar_type());
  check_rows(target, "target", logits);
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()),
              "fastsmall: mask must be a bool or floating-point tensor, got ", mask.scalar_type());
  check_rows(mask, "mask", logits);
}

inline void check_align_scalars(double temperature, double threshold, double eps) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "fastsmall: temperature must be > 0, got ",
              temperature);
  TORCH_CHECK(threshold >= 0 && threshold <= 1, "fastsmall: threshold must be in [0, 1], got ", threshold);
  check_eps(eps);
}

// ---- tensor lists (ke_reinit_, masked_mul_) ---------------------------------------------------------

// A per-tensor argument list must have one entry per tensor.
inline void check_list_length(size_t size, int64_t tensors, const char* name) {
  TORCH_CHECK(static_cast<int64_t>(size) == tensors, "fastsmall: ", name, " has ", size,
              " entries but tensors has ", tensors, "; give one entry per tensor");
}

}  // namespace fastsmall
