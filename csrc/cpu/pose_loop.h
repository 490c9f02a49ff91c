// The per-pose loop of the KCS and part-Gram kernels: a tensor [..., rows, D] is a batch of B
// poses, viewed as [B, rows, D] (contiguous), and each kernel is one OpenMP-parallel loop over
// the poses (at::parallel_for, built with -fopenmp). Written once here so that every kernel
// splits the batch the same way; the kernels themselves only say what one pose does.
//
// Each kernel passes its measured single-thread cost of one pose (ns_per_pose); the grain is
// kParallelGrainNs (80 us) of that work (parallel.h), so a batch runs on the calling thread
// unless it takes more than ~80 us on one, and each thread of a parallel region gets > ~40 us.
// Costs measured on a 2-core AMD EPYC (AVX2), H36M-16 poses, D = 3, float32, ns per pose
// (bench/bench_small_batch.py --calibrate): kcs_forward 26-37, kcs_forward_backward 57,
// bone_decompose 87, its backward 255, kcs_inverse 55-80, its backward 74-105. At B = 1,024
// kcs_forward, its backward and kcs_inverse therefore run on one thread; bone_decompose and the other
// backwards on two (bench/RESULTS.md, "Small batches"). The part-Gram kernels run over tiles of
// poses instead (part_kcs_gram_cpu.cpp), with the same grain rule.
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

// body(n, scratch) for every pose n in [0, B), in parallel chunks of grain_for(ns_per_pose) poses
// or more; each chunk makes its own scratch once (make_scratch()), so per-pose work allocates
// nothing.
template <typename MakeScratch, typename Body>
FASTSMALL_INLINE void for_each_pose(int64_t B, double ns_per_pose, MakeScratch&& make_scratch, Body&& body) {
  at::parallel_for(0, B, grain_for(ns_per_pose), [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t n = begin; n < end; ++n) body(n, scratch);
  });
}

// body(n) for every pose n in [0, B), for kernels without scratch.
template <typename Body>
FASTSMALL_INLINE void for_each_pose(int64_t B, double ns_per_pose, Body&& body) {
  at::parallel_for(0, B, grain_for(ns_per_pose), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) body(n);
  });
}

}  // namespace fastsmall
