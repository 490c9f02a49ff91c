// The floating dtypes every CPU kernel takes, and the one switch that dispatches on them.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fastsmall {

// float16, bfloat16, float32 or float64 (at::isFloatingType also admits the float8 types).
inline bool is_kernel_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
}

// f(scalar_t{}) for the four kernel dtypes, as AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16)
// does and with its error for any other dtype; a function (not the macro) so that helpers can
// take the kernel's name as an argument.
template <typename F>
void dispatch_floating(at::ScalarType st, const char* name, F&& f) {
  switch (st) {
    case at::kDouble: f(double{}); break;
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK_NOT_IMPLEMENTED(false, '"', name, "\" not implemented for '", c10::toString(st), "'");
  }
}

}  // namespace fastsmall
