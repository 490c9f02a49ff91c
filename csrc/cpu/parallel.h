// When a parallel loop pays (issue #12, "threading that pays"). Every CPU kernel is one
// at::parallel_for (OpenMP) whose grain is set here from the kernel's measured single-thread cost
// per item, so that small calls run on the calling thread.
//
// Why: a parallel region costs a fork and a join of the OpenMP team even on an idle machine, and
// on a busy one it waits until every thread of the team has been scheduled -- up to a scheduler
// time slice (milliseconds) when other processes hold the cores. Below some tens of microseconds
// of work it costs more than it saves, and it exposes a 30 us op to millisecond stalls. Measured
// (bench/bench_small_batch.py, 2-core AMD EPYC, AVX2, machine shared with other jobs): kcs_forward
// at B = 1,024 takes ~30-80 us on one thread, and 8 ms as the old 2-thread split (grain of 32 k
// scalars) while other processes held the cores (bench/RESULTS.md, "Small batches").
//
// The rule: at::parallel_for(0, n, grain, f) runs f(0, n) on the calling thread when n <= grain,
// and otherwise starts at most ceil(n / grain) threads with n / threads items each, i.e. more than
// grain / 2 per thread. A grain is kParallelGrainNs = 80 us of single-thread work: a call runs on
// one thread unless it would take more than ~80 us there, and then every thread gets more than
// ~40 us. Per-item costs are measured with `python bench/bench_small_batch.py --calibrate` (one
// thread, cache-resident B = 1,024 - 4,096) and written at each call site; they are estimates to a
// factor of ~2 (a faster or slower core moves the switch-over by that factor, which is harmless:
// the cost of a parallel region is flat around it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastsmall {

constexpr double kParallelGrainNs = 80e3;

// Items per grain for items that take ~ns_per_item nanoseconds each on one thread.
inline int64_t grain_for(double ns_per_item) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(kParallelGrainNs / std::max(ns_per_item, 1e-3))));
}

}  // namespace fastsmall
