// Before every include, so that it covers this file's functions, the inlined headers and the
// instruction-set wrappers (isa.h): no a*b+c is fused into an FMA (torch's BuildExtension compiles
// with -std=gnu++20, whose default contracts), so every instruction set gives the same bits.
#pragma GCC optimize("fp-contract=off")
// CPU kernels of the MLP-block family: bn_act_dropout (residual + dropout(leaky_relu(batch_norm(y))))
// and its backward. Schemas: csrc/fastsmall.cpp. Definition: fastsmall/reference/bn_act_dropout.py.
//
// Layout: y is [N, C] row-major (a Linear's output). Everything a column needs (its statistics,
// its scale and shift, its gradient sums) is a reduction over the N rows of that column, so the
// work is cut into blocks of kBlock columns, one block per task, each block walking all rows
// twice: the forward once for the statistics and once to write the output, the backward once
// for the two gradient sums and once to write grad_y. A block of N = 1,024 rows is 128 KiB of
// float32, so the second walk reads from L2. Blocks own their columns: no partial sums to
// combine, and the result does not depend on the thread count. Full blocks run with the
// constant width kBlock (whole vectors per row, no remainder loop; 2x faster than a run-time
// width), and the backward keeps a block's g_z (grad x slope x mask) from its first walk for the
// second in a task-local scratch of N x kBlock floats, so each element is hashed once per call.
//
// The dropout mask is never stored: element e = n * C + c keeps iff its 23-bit counter-based
// draw (rng.h, stream [kTagDropout, lo32(seed), hi32(seed)]) is >= T (T = #draws with
// u < p), in the forward and again in the backward -- the same bits as the Triton kernels and
// the reference. Inside a block the draws of a row are a run of consecutive counters: plain
// uint32 loops that the compiler vectorises for each instruction set (isa.h wrappers: SSE2,
// AVX2, AVX-512, chosen once at load). No FMA contraction (the pragma at the top), so every ISA gives
// the same bits (tests/test_bn_act_dropout.py checks them with FASTSMALL_SIMD_BYTES = 16, 32, 64).
//
// Precision: float32 (and float16 / bfloat16, read as float32) accumulates per chunk of 64 rows
// in float32 and across chunks in float64, the statistics shifted by the column's first row;
// float64 accumulates in float64.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../macros.h"
#include "dtypes.h"
#include "isa.h"
#include "parallel.h"
#include "rng.h"

namespace fastsmall {
namespace {

constexpr int64_t kBlock = 32;   // columns per task
constexpr int64_t kChunk = 64;   // rows per float32 partial sum
// Single-thread cost per element (ns), measured at N = C = 1,024 float32 on 2-core AMD EPYCs
// (AVX2 and AVX-512: ~1-3 ns forward, ~1-2 ns backward, the machine's noise included), for
// parallel.h's grain rule: it only decides whether a call is large enough for two threads.
constexpr double kForwardNs = 1.5, kBackwardNs = 1.5;

// ---- checks (fastsmall/ops/bn_act_dropout.py has the same in Python) ------------------------

void check_y(const at::Tensor& y, const char* name) {
  check_floating(y, name);
  TORCH_CHECK(is_kernel_dtype(y.scalar_type()), "fastsmall: unsupported dtype ", y.scalar_type());
  TORCH_CHECK(y.dim() == 2, "fastsmall: ", name, " must have shape [N, C] (a Linear layer's output), got ",
              y.sizes());
  TORCH_CHECK(y.device().is_cpu(), "fastsmall: ", name, " is on ", y.device(), "; this kernel runs on CPU");
}

// An optional [C] float vector, as the compute type (contiguous), or undefined.
at::Tensor column_vector(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& y,
                         at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_floating(*t, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == y.size(1), "fastsmall: ", name, " must have shape [", y.size(1),
              "] (one value per column of y), got ", t->sizes());
  check_same_device(*t, name, y, "y");
  return t->to(acc).contiguous();
}

void check_seed(const at::Tensor& seed, const at::Tensor& y) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1,
              "fastsmall: seed must be an int64 tensor of one element, got ", seed.scalar_type(), " ", seed.sizes());
  check_same_device(seed, "seed", y, "y");
}

void check_scalars(double eps, double negative_slope, double p) {
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "fastsmall: eps must be a finite float > 0, got ", eps);
  TORCH_CHECK(std::isfinite(negative_slope), "fastsmall: negative_slope must be finite, got ", negative_slope);
  TORCH_CHECK(p >= 0 && p <= 1, "fastsmall: p (the dropout probability) must be in [0, 1], got ", p);
}

// ---- what every block needs ----------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
struct Args {
  int64_t N = 0, C = 0;
  const scalar_t* y = nullptr;
  const scalar_t* grad = nullptr;      // backward
  const scalar_t* residual = nullptr;  // forward, optional
  const acc_t* weight = nullptr;       // optional (1)
  const acc_t* bias = nullptr;         // optional (0)
  acc_t* mean = nullptr;               // batch statistics: written; else read
  acc_t* var = nullptr;
  bool batch_stats = true;
  acc_t eps = 0, slope = 0, scale = 1;  // scale = 1 / (1 - p) (0 for p = 1)
  bool dropout = false;
  Key key;
  uint32_t threshold = 0;  // keep iff draw >= threshold
  scalar_t* out = nullptr;   // forward output / grad_y
  acc_t* grad_weight = nullptr;
  acc_t* grad_bias = nullptr;
};

// v[j] = kept ? v[j] * scale : 0 for the elements e = base + j, j < w (one row of one block). The
// hash and the select share one loop of 32-bit lanes (uint32 draws, float32 values), which the
// compiler vectorises whole; a run that crosses a 2^32 boundary of e takes the scalar path.
template <typename acc_t>
FASTSMALL_INLINE void apply_dropout(Key key, uint32_t threshold, acc_t scale, uint64_t base, int64_t w,
                                    acc_t* __restrict__ v) {
  const uint32_t lo = static_cast<uint32_t>(base), hi = static_cast<uint32_t>(base >> 32);
  if (lo <= std::numeric_limits<uint32_t>::max() - static_cast<uint32_t>(w)) {  // no carry into hi32 in this run
    const uint32_t k0 = key.k0, k1 = key.k1 + hi;
    for (int64_t j = 0; j < w; ++j) {
      const uint32_t h = mix32((lo + static_cast<uint32_t>(j)) ^ k0);
      v[j] = (mix32(h ^ k1) >> 9) >= threshold ? v[j] * scale : acc_t(0);
    }
  } else {
    for (int64_t j = 0; j < w; ++j)
      v[j] = draw_bit(key, base + static_cast<uint64_t>(j)) >= threshold ? v[j] * scale : acc_t(0);
  }
}

// Float32 partial sums of one chunk of rows [n0, n1) of a block (the columns c0 .. c0 + w): the sum
// of d = y - shift and of d^2, shift = the column's first row. Both splits (columns, rows) sum a
// column's chunks with this function and combine them in float64 in chunk order: the same bits.
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void chunk_sums(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, int64_t n0, int64_t n1,
                                 const acc_t* shift, acc_t* q1, acc_t* q2) {
  acc_t p1[kBlock] = {}, p2[kBlock] = {};
  for (int64_t n = n0; n < n1; ++n) {
    const scalar_t* row = A.y + n * A.C + c0;
    for (int64_t j = 0; j < w; ++j) {
      const acc_t d = static_cast<acc_t>(row[j]) - shift[j];
      p1[j] += d;
      p2[j] += d * d;
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    q1[j] = p1[j];
    q2[j] = p2[j];
  }
}

// Mean and biased variance of w columns from their float64 sums of d and d^2 (d = y - shift).
template <typename acc_t>
FASTSMALL_INLINE void finish_statistics(int64_t N, int64_t w, const acc_t* shift, const double* s1,
                                        const double* s2, acc_t* mean, acc_t* var) {
  for (int64_t j = 0; j < w; ++j) {
    const double m1 = s1[j] / static_cast<double>(N);
    mean[j] = static_cast<acc_t>(static_cast<double>(shift[j]) + m1);
    var[j] = static_cast<acc_t>(std::max(0.0, s2[j] / static_cast<double>(N) - m1 * m1));
  }
}

// Column statistics of a block: mean and biased variance over the N rows.
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void block_statistics(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, acc_t* mean,
                                       acc_t* var) {
  const int64_t N = A.N;
  if (N == 0) {
    for (int64_t j = 0; j < w; ++j) mean[j] = var[j] = acc_t(0);
    return;
  }
  acc_t shift[kBlock];
  double s1[kBlock] = {}, s2[kBlock] = {};
  for (int64_t j = 0; j < w; ++j) shift[j] = static_cast<acc_t>(A.y[c0 + j]);
  for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
    acc_t p1[kBlock], p2[kBlock];
    chunk_sums(A, c0, w, n0, std::min(N, n0 + kChunk), shift, p1, p2);
    for (int64_t j = 0; j < w; ++j) {
      s1[j] += static_cast<double>(p1[j]);
      s2[j] += static_cast<double>(p2[j]);
    }
  }
  finish_statistics(N, w, shift, s1, s2, mean, var);
}

// Per column: invstd, the scale a = weight * invstd and the shift b = bias - mean * a (z = y a + b).
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void block_affine(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, const acc_t* mean,
                                   const acc_t* var, acc_t* invstd, acc_t* a, acc_t* b) {
  for (int64_t j = 0; j < w; ++j) {
    invstd[j] = acc_t(1) / std::sqrt(var[j] + A.eps);
    const acc_t g = A.weight ? A.weight[c0 + j] : acc_t(1);
    const acc_t beta = A.bias ? A.bias[c0 + j] : acc_t(0);
    a[j] = g * invstd[j];
    b[j] = beta - mean[j] * a[j];
  }
}

// The output rows [n0, n1) of a block, from its per-column scale a and shift b (z = y a + b).
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void forward_rows(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, int64_t n0, int64_t n1,
                                   const acc_t* a, const acc_t* b) {
  const int64_t C = A.C;
  const acc_t slope = A.slope, scale = A.scale;
  acc_t act[kBlock];
  for (int64_t n = n0; n < n1; ++n) {
    const scalar_t* row = A.y + n * C + c0;
    scalar_t* out = A.out + n * C + c0;
    for (int64_t j = 0; j < w; ++j) {
      const acc_t z = static_cast<acc_t>(row[j]) * a[j] + b[j];
      act[j] = z > acc_t(0) ? z : z * slope;
    }
    if (A.dropout) apply_dropout(A.key, A.threshold, scale, static_cast<uint64_t>(n * C + c0), w, act);
    if (A.residual) {
      const scalar_t* r = A.residual + n * C + c0;
      for (int64_t j = 0; j < w; ++j) act[j] += static_cast<acc_t>(r[j]);
    }
    for (int64_t j = 0; j < w; ++j) out[j] = static_cast<scalar_t>(act[j]);
  }
}

template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void forward_block(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w) {
  acc_t mean[kBlock], var[kBlock], invstd[kBlock], a[kBlock], b[kBlock];
  if (A.batch_stats) {
    block_statistics(A, c0, w, mean, var);
    for (int64_t j = 0; j < w; ++j) {
      A.mean[c0 + j] = mean[j];
      A.var[c0 + j] = var[j];
    }
  } else {
    for (int64_t j = 0; j < w; ++j) {
      mean[j] = A.mean[c0 + j];
      var[j] = A.var[c0 + j];
    }
  }
  block_affine(A, c0, w, mean, var, invstd, a, b);
  forward_rows(A, c0, w, 0, A.N, a, b);
}

// g_z of one row of a block: grad * dropout scale (0 where dropped) * leaky-ReLU slope at z.
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void row_grad_z(const Args<scalar_t, acc_t>& A, int64_t n, int64_t c0, int64_t w, const acc_t* a,
                                 const acc_t* b, acc_t* gz) {
  const scalar_t* row = A.y + n * A.C + c0;
  const scalar_t* g = A.grad + n * A.C + c0;
  const acc_t slope = A.slope;
  for (int64_t j = 0; j < w; ++j) {
    const acc_t z = static_cast<acc_t>(row[j]) * a[j] + b[j];
    gz[j] = static_cast<acc_t>(g[j]) * (z > acc_t(0) ? acc_t(1) : slope);
  }
  if (A.dropout) apply_dropout(A.key, A.threshold, A.scale, static_cast<uint64_t>(n * A.C + c0), w, gz);
}

// Pass 1 of the backward over the rows [n0, n1) of a block: g_z of every row, and the float32 partial
// sums of g_z (grad_bias) and g_z * xhat (grad_weight). g_z of row n goes to gz + (n - n0) * gz_stride
// (the column split keeps a block's g_z for pass 2 there; the row split passes a one-row buffer and
// stride 0, and recomputes g_z in pass 2).
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void backward_chunk_sums(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, int64_t n0,
                                          int64_t n1, const acc_t* a, const acc_t* b, const acc_t* mean,
                                          const acc_t* invstd, acc_t* gz_base, int64_t gz_stride, acc_t* q1,
                                          acc_t* q2) {
  acc_t p1[kBlock] = {}, p2[kBlock] = {};
  for (int64_t n = n0; n < n1; ++n) {
    acc_t* gz = gz_base + (n - n0) * gz_stride;
    row_grad_z(A, n, c0, w, a, b, gz);
    const scalar_t* row = A.y + n * A.C + c0;
    for (int64_t j = 0; j < w; ++j) {
      const acc_t xhat = (static_cast<acc_t>(row[j]) - mean[j]) * invstd[j];
      p1[j] += gz[j];
      p2[j] += gz[j] * xhat;
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    q1[j] = p1[j];
    q2[j] = p2[j];
  }
}

// grad_bias, grad_weight and the means of g_z and g_z * xhat of w columns from their float64 sums.
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void finish_gradient_sums(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, const double* sg,
                                           const double* sgx, acc_t* mg, acc_t* mgx) {
  const int64_t N = A.N;
  for (int64_t j = 0; j < w; ++j) {
    A.grad_bias[c0 + j] = static_cast<acc_t>(sg[j]);
    A.grad_weight[c0 + j] = static_cast<acc_t>(sgx[j]);
    mg[j] = N > 0 ? static_cast<acc_t>(sg[j] / static_cast<double>(N)) : acc_t(0);
    mgx[j] = N > 0 ? static_cast<acc_t>(sgx[j] / static_cast<double>(N)) : acc_t(0);
  }
}

// Pass 2 over the rows [n0, n1) of a block: grad_y = a (g_z - mean g_z - xhat mean(g_z xhat)) with
// batch statistics, a g_z without. g_z is read from gz_base (stride w) or, when gz_base is null,
// recomputed (the same arithmetic as pass 1, so the same bits).
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void backward_rows(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w, int64_t n0, int64_t n1,
                                    const acc_t* a, const acc_t* b, const acc_t* mean, const acc_t* invstd,
                                    const acc_t* mg, const acc_t* mgx, const acc_t* gz_base) {
  const int64_t C = A.C;
  acc_t row_gz[kBlock];
  for (int64_t n = n0; n < n1; ++n) {
    const acc_t* gz = gz_base;
    if (gz_base) {
      gz = gz_base + (n - n0) * w;
    } else {
      row_grad_z(A, n, c0, w, a, b, row_gz);
      gz = row_gz;
    }
    const scalar_t* row = A.y + n * C + c0;
    scalar_t* out = A.out + n * C + c0;
    if (A.batch_stats) {
      for (int64_t j = 0; j < w; ++j) {
        const acc_t xhat = (static_cast<acc_t>(row[j]) - mean[j]) * invstd[j];
        out[j] = static_cast<scalar_t>(a[j] * (gz[j] - mg[j] - xhat * mgx[j]));
      }
    } else {
      for (int64_t j = 0; j < w; ++j) out[j] = static_cast<scalar_t>(a[j] * gz[j]);
    }
  }
}

// gz_scratch holds the block's g_z ([N, w], row stride w) from pass 1 for pass 2: one hash and
// one z per element instead of two (the mask still is never stored past the call).
template <typename scalar_t, typename acc_t>
FASTSMALL_INLINE void backward_block(const Args<scalar_t, acc_t>& A, int64_t c0, int64_t w,
                                     acc_t* __restrict__ gz_scratch) {
  const int64_t N = A.N;
  acc_t mean[kBlock], var[kBlock], invstd[kBlock], a[kBlock], b[kBlock];
  for (int64_t j = 0; j < w; ++j) {
    mean[j] = A.mean[c0 + j];
    var[j] = A.var[c0 + j];
  }
  block_affine(A, c0, w, mean, var, invstd, a, b);
  double sg[kBlock] = {}, sgx[kBlock] = {};
  for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
    acc_t p1[kBlock], p2[kBlock];
    backward_chunk_sums(A, c0, w, n0, std::min(N, n0 + kChunk), a, b, mean, invstd, gz_scratch + n0 * w, w, p1, p2);
    for (int64_t j = 0; j < w; ++j) {
      sg[j] += static_cast<double>(p1[j]);
      sgx[j] += static_cast<double>(p2[j]);
    }
  }
  acc_t mg[kBlock], mgx[kBlock];
  finish_gradient_sums(A, c0, w, sg, sgx, mg, mgx);
  backward_rows(A, c0, w, 0, N, a, b, mean, invstd, mg, mgx, gz_scratch);
}

// The blocks [blk0, blk1) of a call, compiled for one instruction set (isa.h's call_isa).
template <typename scalar_t, typename acc_t, bool BACKWARD>
struct Blocks {
  template <int BYTES>
  static FASTSMALL_INLINE void run(const Args<scalar_t, acc_t>& A, int64_t blk0, int64_t blk1) {
    // The backward's g_z of one block, reused by the task's blocks (N x kBlock of acc_t).
    std::unique_ptr<acc_t[]> gz;
    if constexpr (BACKWARD) gz.reset(new acc_t[static_cast<size_t>(std::max<int64_t>(1, A.N * kBlock))]);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t c0 = blk * kBlock, w = std::min(kBlock, A.C - c0);
      // A full block passes the constant kBlock: the bodies are force-inlined, so every loop over a
      // row of the block has a known trip count (whole vectors, no remainder loop per row).
      if constexpr (BACKWARD) {
        if (w == kBlock) {
          backward_block(A, c0, kBlock, gz.get());
        } else {
          backward_block(A, c0, w, gz.get());
        }
      } else {
        if (w == kBlock) {
          forward_block(A, c0, kBlock);
        } else {
          forward_block(A, c0, w);
        }
      }
    }
  }
};

// ---- the row split ----------------------------------------------------------------------------
// With few columns (C <= 32-64: BatchNorm2d's [N*H*W, C] view of a channels-last map in the CNNs)
// the column split has one or two tasks however many rows there are, and its backward keeps an
// N x 32 g_z scratch (4 MB at CReST's 30,720 rows, fresh pages on every call). The row split cuts
// the rows into the same chunks of kChunk rows instead, in phases:
//   forward:  partial sums per (chunk, column) in parallel -> statistics, a, b (serial, [C]) ->
//             output rows in parallel;
//   backward: g_z and partial gradient sums per (chunk, column) in parallel -> grad_weight,
//             grad_bias, means (serial) -> grad_y rows in parallel, g_z recomputed.
// The partial sums are chunk_sums' / backward_chunk_sums' float32 sums of the same chunks, combined
// in float64 in chunk order, exactly as the column split does: both splits give the same bits
// (tests/test_bn_act_dropout.py forces each with FASTSMALL_BN_ACT_SPLIT=rows|columns).

template <typename scalar_t, typename acc_t>
struct RowJob {
  Args<scalar_t, acc_t> A;
  acc_t* shift = nullptr;  // [C]: the first row (forward statistics)
  acc_t* q1 = nullptr;     // [chunks][C] partial sums
  acc_t* q2 = nullptr;
  const acc_t *a = nullptr, *b = nullptr, *mean = nullptr, *invstd = nullptr;  // [C]
  const acc_t *mg = nullptr, *mgx = nullptr;                                   // [C], backward
};

enum RowPhase { kForwardSums, kForwardRows, kBackwardSums, kBackwardRows };

// One phase on the chunks [ch0, ch1), compiled for one instruction set (isa.h's call_isa). The
// per-block bodies are force-inlined (no lambda: a lambda would not inherit the wrapper's target).
template <typename scalar_t, typename acc_t, int PHASE>
struct RowChunks {
  static FASTSMALL_INLINE void block(const RowJob<scalar_t, acc_t>& J, int64_t ch, int64_t n0, int64_t n1, int64_t c0,
                                     int64_t w) {
    const auto& A = J.A;
    const int64_t C = A.C;
    if constexpr (PHASE == kForwardSums) {
      chunk_sums(A, c0, w, n0, n1, J.shift + c0, J.q1 + ch * C + c0, J.q2 + ch * C + c0);
    } else if constexpr (PHASE == kForwardRows) {
      forward_rows(A, c0, w, n0, n1, J.a + c0, J.b + c0);
    } else if constexpr (PHASE == kBackwardSums) {
      acc_t gz[kBlock];
      backward_chunk_sums(A, c0, w, n0, n1, J.a + c0, J.b + c0, J.mean + c0, J.invstd + c0, gz, 0,
                          J.q1 + ch * C + c0, J.q2 + ch * C + c0);
    } else {
      backward_rows(A, c0, w, n0, n1, J.a + c0, J.b + c0, J.mean + c0, J.invstd + c0, J.mg + c0, J.mgx + c0,
                    static_cast<const acc_t*>(nullptr));
    }
  }

  template <int BYTES>
  static FASTSMALL_INLINE void run(const RowJob<scalar_t, acc_t>& J, int64_t ch0, int64_t ch1) {
    const int64_t N = J.A.N, C = J.A.C;
    for (int64_t ch = ch0; ch < ch1; ++ch) {
      const int64_t n0 = ch * kChunk, n1 = std::min(N, n0 + kChunk);
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        // a full block passes the constant kBlock (whole vectors per row, as the column split)
        if (C - c0 >= kBlock) {
          block(J, ch, n0, n1, c0, kBlock);
        } else {
          block(J, ch, n0, n1, c0, C - c0);
        }
      }
    }
  }
};

template <typename scalar_t, typename acc_t, int PHASE>
void run_row_phase(const RowJob<scalar_t, acc_t>& J, double ns_per_element) {
  const int64_t chunks = (J.A.N + kChunk - 1) / kChunk;
  const int64_t grain = grain_for(static_cast<double>(kChunk * J.A.C) * ns_per_element);
  dispatch_simd_bytes([&](auto bytes) {
    constexpr int BYTES = decltype(bytes)::value;
    at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
      call_isa<RowChunks<scalar_t, acc_t, PHASE>, BYTES>(J, c0, c1);
    });
  });
}

// Sums a [chunks][C] array of partial sums over its chunks, per column, in float64 in chunk order.
template <typename acc_t>
void sum_chunks(const acc_t* q, int64_t chunks, int64_t C, double* s) {
  std::fill(s, s + C, 0.0);
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t c = 0; c < C; ++c) s[c] += static_cast<double>(q[ch * C + c]);
}

template <typename scalar_t, typename acc_t, bool BACKWARD>
void run_rows(const Args<scalar_t, acc_t>& A) {
  const int64_t N = A.N, C = A.C, chunks = (N + kChunk - 1) / kChunk;
  // mean / var are A's: written by the forward's batch statistics, else given (eval mode) or those
  // the forward used (backward)
  std::vector<acc_t> shift(C), q1(chunks * C), q2(chunks * C), a(C), b(C), invstd(C), mg(C), mgx(C);
  std::vector<double> s1(C), s2(C);
  RowJob<scalar_t, acc_t> J{A, shift.data(), q1.data(), q2.data(), a.data(), b.data(), A.mean, invstd.data(),
                            mg.data(), mgx.data()};
  if (!BACKWARD && A.batch_stats) {
    for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<acc_t>(A.y[c]);
    run_row_phase<scalar_t, acc_t, kForwardSums>(J, kForwardNs / 2);
    sum_chunks(q1.data(), chunks, C, s1.data());
    sum_chunks(q2.data(), chunks, C, s2.data());
    finish_statistics(N, C, shift.data(), s1.data(), s2.data(), A.mean, A.var);
  }
  for (int64_t c0 = 0; c0 < C; c0 += kBlock)
    block_affine(A, c0, std::min(kBlock, C - c0), A.mean + c0, A.var + c0, invstd.data() + c0, a.data() + c0,
                 b.data() + c0);
  if constexpr (!BACKWARD) {
    run_row_phase<scalar_t, acc_t, kForwardRows>(J, kForwardNs / 2);
  } else {
    run_row_phase<scalar_t, acc_t, kBackwardSums>(J, kBackwardNs / 2);
    sum_chunks(q1.data(), chunks, C, s1.data());
    sum_chunks(q2.data(), chunks, C, s2.data());
    finish_gradient_sums(A, 0, C, s1.data(), s2.data(), mg.data(), mgx.data());
    run_row_phase<scalar_t, acc_t, kBackwardRows>(J, kBackwardNs / 2);
  }
}

// Which split a call takes: the row split when the columns give fewer than two blocks per thread
// (and there are rows), else the column split; FASTSMALL_BN_ACT_SPLIT=rows|columns forces one
// (tests; both give the same bits).
bool use_row_split(int64_t N, int64_t C) {
  if (const char* force = std::getenv("FASTSMALL_BN_ACT_SPLIT")) {
    if (std::strcmp(force, "rows") == 0) return true;
    if (std::strcmp(force, "columns") == 0) return false;
    TORCH_CHECK(force[0] == 0 || std::strcmp(force, "auto") == 0,
                "fastsmall: FASTSMALL_BN_ACT_SPLIT must be rows, columns or auto, got '", force, "'");
  }
  if (N == 0 || C == 0) return false;  // (the column split's empty-batch statistics)
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  return blocks < 2 * static_cast<int64_t>(at::get_num_threads());
}

template <typename scalar_t, typename acc_t, bool BACKWARD>
void run_blocks(const Args<scalar_t, acc_t>& A) {
  if (use_row_split(A.N, A.C)) return run_rows<scalar_t, acc_t, BACKWARD>(A);
  const int64_t blocks = (A.C + kBlock - 1) / kBlock;
  const int64_t grain = grain_for(static_cast<double>(std::max<int64_t>(1, A.N * kBlock)) *
                                  (BACKWARD ? kBackwardNs : kForwardNs));
  dispatch_simd_bytes([&](auto bytes) {
    constexpr int BYTES = decltype(bytes)::value;
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      call_isa<Blocks<scalar_t, acc_t, BACKWARD>, BYTES>(A, b0, b1);
    });
  });
}

// What forward and backward share: the shape, y, the per-column vectors, the statistics, the
// scalars and the dropout key (the seed's value read once, on the host: a CPU tensor).
template <typename scalar_t, typename acc_t>
Args<scalar_t, acc_t> common_args(const at::Tensor& y, const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean,
                                  const at::Tensor& var, bool batch_stats, const at::Tensor& seed, double eps,
                                  double negative_slope, double p) {
  Args<scalar_t, acc_t> A;
  A.N = y.size(0);
  A.C = y.size(1);
  A.y = y.data_ptr<scalar_t>();
  A.weight = w.defined() ? w.data_ptr<acc_t>() : nullptr;
  A.bias = b.defined() ? b.data_ptr<acc_t>() : nullptr;
  A.mean = const_cast<acc_t*>(mean.data_ptr<acc_t>());
  A.var = const_cast<acc_t*>(var.data_ptr<acc_t>());
  A.batch_stats = batch_stats;
  A.eps = static_cast<acc_t>(eps);
  A.slope = static_cast<acc_t>(negative_slope);
  A.dropout = p > 0;
  A.scale = p < 1 ? static_cast<acc_t>(1.0 / (1.0 - p)) : acc_t(0);
  A.threshold = wels_threshold(p);
  if (A.dropout) {
    const int64_t s = seed.item<int64_t>();
    A.key = stream_key({kTagDropout, lo32(s), hi32(s)});
  }
  return A;
}

// ---- ops -------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_dropout_cpu(
    const at::Tensor& y_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& mean_in, const std::optional<at::Tensor>& var_in,
    const std::optional<at::Tensor>& residual_in, const at::Tensor& seed, double eps, double negative_slope,
    double p) {
  check_y(y_in, "y");
  const at::ScalarType acc = y_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = column_vector(weight, "weight", y_in, acc);
  const at::Tensor b = column_vector(bias, "bias", y_in, acc);
  at::Tensor mean = column_vector(mean_in, "mean", y_in, acc);
  at::Tensor var = column_vector(var_in, "var", y_in, acc);
  TORCH_CHECK(mean.defined() == var.defined(),
              "fastsmall: mean and var must be given together (a BatchNorm in eval mode) or both be None");
  at::Tensor residual;
  if (residual_in.has_value() && residual_in->defined()) {
    check_like(*residual_in, "residual", y_in, "y");
    TORCH_CHECK(residual_in->sizes() == y_in.sizes(), "fastsmall: residual must have y's shape ", y_in.sizes(),
                ", got ", residual_in->sizes());
    residual = residual_in->contiguous();
  }
  check_seed(seed, y_in);
  check_scalars(eps, negative_slope, p);
  const at::Tensor y = y_in.contiguous();
  const bool batch_stats = !mean.defined();
  if (batch_stats) {
    mean = at::empty({y.size(1)}, y.options().dtype(acc));
    var = at::empty({y.size(1)}, y.options().dtype(acc));
  } else {  // outputs are fresh tensors (the op never aliases its inputs)
    mean = mean.data_ptr() == mean_in->data_ptr() ? mean.clone() : mean;
    var = var.data_ptr() == var_in->data_ptr() ? var.clone() : var;
  }
  at::Tensor out = at::empty_like(y, at::MemoryFormat::Contiguous);
  dispatch_floating(y.scalar_type(), "bn_act_dropout", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    auto A = common_args<scalar_t, acc_t>(y, w, b, mean, var, batch_stats, seed, eps, negative_slope, p);
    A.residual = residual.defined() ? residual.data_ptr<scalar_t>() : nullptr;
    A.out = out.data_ptr<scalar_t>();
    if (A.N * A.C > 0 || batch_stats) run_blocks<scalar_t, acc_t, false>(A);
  });
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_dropout_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& y_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean_in, const at::Tensor& var_in,
    const at::Tensor& seed, bool batch_stats, double eps, double negative_slope, double p) {
  check_y(y_in, "y");
  check_y(grad_in, "grad");
  check_like(grad_in, "grad", y_in, "y");
  TORCH_CHECK(grad_in.sizes() == y_in.sizes(), "fastsmall: grad must have y's shape ", y_in.sizes(), ", got ",
              grad_in.sizes());
  const at::ScalarType acc = y_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = column_vector(weight, "weight", y_in, acc);
  const at::Tensor b = column_vector(bias, "bias", y_in, acc);
  const at::Tensor mean = column_vector(mean_in, "mean", y_in, acc);
  const at::Tensor var = column_vector(var_in, "var", y_in, acc);
  check_seed(seed, y_in);
  check_scalars(eps, negative_slope, p);
  const at::Tensor y = y_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_y = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor grad_w = at::empty({y.size(1)}, y.options().dtype(acc));
  at::Tensor grad_b = at::empty({y.size(1)}, y.options().dtype(acc));
  dispatch_floating(y.scalar_type(), "bn_act_dropout_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    auto A = common_args<scalar_t, acc_t>(y, w, b, mean, var, batch_stats, seed, eps, negative_slope, p);
    A.grad = grad.data_ptr<scalar_t>();
    A.out = grad_y.data_ptr<scalar_t>();
    A.grad_weight = grad_w.data_ptr<acc_t>();
    A.grad_bias = grad_b.data_ptr<acc_t>();
    run_blocks<scalar_t, acc_t, true>(A);
  });
  return {grad_y, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("bn_act_dropout", &bn_act_dropout_cpu);
  m.impl("bn_act_dropout_backward", &bn_act_dropout_backward_cpu);
}

}  // namespace fastsmall
