// The pose loop of the KCS and part-Gram kernels: a tensor [..., rows, D] is a batch of B poses,
// viewed as [B, rows, D] (contiguous), and each kernel is one OpenMP-parallel loop (at::parallel_for,
// built with -fopenmp) over tiles of poses. Written once here so that every kernel splits the batch
// the same way; the kernels themselves only say what one tile does.
//
// Each kernel passes its measured single-thread cost of one pose (ns_per_pose, at its call site);
// the grain is kParallelGrainNs (80 us) of that work (parallel.h), so a batch runs on the calling
// thread unless it takes more than ~80 us on one, and each thread of a parallel region gets > ~40 us.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../macros.h"
#include "dtypes.h"
#include "isa.h"
#include "parallel.h"

namespace fastsmall {

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

// f(std::integral_constant<int, D>{}) for D = 2 or 3 (the caller has checked D): a compile-time
// D lets the per-coordinate loops unroll.
template <typename F>
FASTSMALL_INLINE void dispatch_dim(int64_t D, F&& f) {
  if (D == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 3>{});
  }
}

// f(scalar_t{}, std::integral_constant<int, D>{}) for the dtype and D = size(-1) of t.
template <typename F>
FASTSMALL_INLINE void dispatch_points(const at::Tensor& t, const char* name, F&& f) {
  dispatch_floating(t.scalar_type(), name, [&](auto tag) { dispatch_dim(t.size(-1), [&](auto dim) { f(tag, dim); }); });
}

// ---- tiles of poses ----------------------------------------------------------------------------
// Every kernel (the KCS family, the part-Gram) runs over tiles of kPoseTile poses held transposed
// ([rows * D][kPoseTile] in the compute type, simd.h load_rows / store_rows), so that a vector holds one coordinate of several poses: the skeleton's indices are
// the same for every pose, so they are walked once per tile and every operation is a whole-vector
// one. Each lane computes exactly what a per-pose loop computes, in the same order (no FMA
// contraction: the kernels' files turn it off), so every instruction set gives the same bits.

constexpr int kPoseTile = 32;  // a multiple of every vector width (AVX-512 float32: 16 lanes)

// A null pointer of type T*: passed to a tile kernel so that it deduces its element types.
template <typename T>
constexpr T* tag_ptr() {
  return nullptr;
}

// f(kernel, scratch, p0, n) for every tile of poses [p0, p0 + n) of a B-pose batch, in parallel
// with a grain of ~80 us of ns_per_pose work (parallel.h); each chunk makes its scratch once.
// kernel(args...) is Kernel::run<BYTES>(args...) compiled for the widest instruction set of this
// machine (isa.h call_isa). Tiles are independent: the result does not depend on the thread count.
template <typename Kernel, typename MakeScratch, typename F>
void for_each_pose_tile(int64_t B, double ns_per_pose, MakeScratch&& make_scratch, F&& f) {
  const int64_t tiles = (B + kPoseTile - 1) / kPoseTile;
  dispatch_simd_bytes([&](auto simd) {
    constexpr int BYTES = decltype(simd)::value;
    const auto kernel = [](auto&&... args) { call_isa<Kernel, BYTES>(std::forward<decltype(args)>(args)...); };
    at::parallel_for(0, tiles, grain_for(ns_per_pose * kPoseTile), [&](int64_t begin, int64_t end) {
      auto scratch = make_scratch();
      for (int64_t t = begin; t < end; ++t)
        f(kernel, scratch, t * kPoseTile, std::min<int64_t>(kPoseTile, B - t * kPoseTile));
    });
  });
}

}  // namespace fastsmall
