// CPU kernels of the distribution-alignment op family (FixMatch / CReST+ pseudo-labels):
// distribution_align, softmax_batch_mean, masked_cross_entropy and its backward.
// Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py (distribution-alignment section).
//
// Layout: logits [B, C] (made contiguous) are cut into row blocks whose size depends on B and C
// only, never on the thread count; blocks are the iterations of an OpenMP-parallel loop
// (at::parallel_for). Sums over rows (the batch mean of the softmax, the loss) are accumulated
// per block and the block partials are added in block order afterwards, so every result is
// bitwise the same for any number of threads. The block kernels (tiles of 32 rows for C <= 128,
// one row at a time above) are in distribution_align_kernels.h. Small calls run on one thread
// (the grain of the block loop: ns_per_logit below, parallel.h).
//
// float16/bfloat16 are computed in float32 (at::opmath_type), float64 in float64. The kernels are
// explicit SIMD on GCC/Clang vector types (simd.h), instantiated for SSE2, AVX2+FMA and AVX-512
// and chosen at run time (isa.h); the float32 exp and log are branch-free Cephes polynomials
// (~1 ulp), float64 uses std::exp / std::log per lane.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../macros.h"
#include "distribution_align_kernels.h"
#include "dtypes.h"
#include "isa.h"
#include "parallel.h"

namespace fastsmall {
namespace {

using namespace distribution_align;

// ---- running the block kernels -----------------------------------------------------------------

enum class Pass { Align, SoftmaxMean, CrossEntropy, CrossEntropyBackward };

// The block kernel of a pass for call_isa (isa.h): tiles of R rows (R > 0) or one row at a time
// (R == 0), on vectors of BYTES bytes.
template <Pass P, int R>
struct BlockKernel {
  template <int BYTES, typename... Args>
  static FASTSMALL_INLINE void run(Args&&... args) {
    if constexpr (P == Pass::Align || P == Pass::SoftmaxMean) {
      constexpr bool ALIGN = P == Pass::Align;
      if constexpr (R > 0) {
        align_block<R, BYTES, ALIGN>(std::forward<Args>(args)...);
      } else {
        align_rows<BYTES, ALIGN>(std::forward<Args>(args)...);
      }
    } else if constexpr (P == Pass::CrossEntropy) {
      if constexpr (R > 0) {
        ce_block<R, BYTES>(std::forward<Args>(args)...);
      } else {
        ce_rows<BYTES>(std::forward<Args>(args)...);
      }
    } else {
      if constexpr (R > 0) {
        ce_backward_block<R, BYTES>(std::forward<Args>(args)...);
      } else {
        ce_backward_rows<BYTES>(std::forward<Args>(args)...);
      }
    }
  }
};

// Single-thread cost of a pass in ns per logit, measured (bench/bench_small_batch.py --calibrate,
// 2-core AMD EPYC, AVX2, float32, C = 10 and 1,000): align 1.4-2.6, softmax batch mean 1.3-1.7,
// cross-entropy 0.7-2.0, its backward 2.2-2.6. The blocks of one call are the items of its
// parallel loop, with a grain of ~80 us of this work (parallel.h): a call runs on the calling
// thread below that (at C = 10: several thousand rows), and only whole blocks go to threads, so the
// results stay bitwise independent of the thread count.
template <Pass P>
constexpr double ns_per_logit() {
  return P == Pass::Align ? 2.0 : P == Pass::SoftmaxMean ? 1.5 : P == Pass::CrossEntropy ? 1.0 : 2.5;
}

inline int64_t num_blocks(int64_t B, int64_t C) {
  const int64_t rows = rows_per_block(B, C);
  return (B + rows - 1) / rows;
}

// f(kernel, scratch, b, row0, row1) for every row block b of a [B, C] pass, in parallel (one
// block per iteration; each thread makes its scratch once). kernel(args...) runs the pass's block
// kernel with the tile rows for this C and the widest instruction set of this machine.
template <Pass P, typename acc_t, typename F>
void for_each_block(int64_t B, int64_t C, F&& f) {
  const int64_t rows = rows_per_block(B, C), blocks = num_blocks(B, C);
  constexpr bool with_bm = P == Pass::Align || P == Pass::SoftmaxMean;
  auto with_rows = [&](auto tile) {
    constexpr int R = decltype(tile)::value;
    dispatch_simd_bytes([&](auto simd) {
      constexpr int BYTES = decltype(simd)::value;
      const auto kernel = [&](auto&&... args) {
        call_isa<BlockKernel<P, R>, BYTES>(std::forward<decltype(args)>(args)...);
      };
      at::parallel_for(0, blocks, grain_for(ns_per_logit<P>() * rows * C), [&](int64_t begin, int64_t end) {
        Scratch scratch(scratch_elems(C, R), sizeof(acc_t), with_bm);
        for (int64_t b = begin; b < end; ++b) f(kernel, scratch, b, b * rows, std::min(B, (b + 1) * rows));
      });
    });
  };
  if (C <= kTileMaxC) {
    with_rows(std::integral_constant<int, 32>{});
  } else {
    with_rows(std::integral_constant<int, 0>{});
  }
}

// ---- distribution_align / softmax_batch_mean ------------------------------------------------

// ratio[j] = (target_j + eps) / (running_j + eps), target = prior^t / sum(prior^t): once per call.
template <typename acc_t>
std::vector<acc_t> alignment_ratio(const at::Tensor& prior_, const at::Tensor& running_, double temperature,
                                   double eps) {
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor prior = prior_.detach().to(acc_type).contiguous();
  const at::Tensor running = running_.detach().to(acc_type).contiguous();
  const int64_t C = prior.numel();
  const acc_t* pp = prior.const_data_ptr<acc_t>();
  const acc_t* rp = running.const_data_ptr<acc_t>();
  const acc_t t = static_cast<acc_t>(temperature), e = static_cast<acc_t>(eps);
  std::vector<acc_t> ratio(padded_classes(C), acc_t(0));  // zeros past C, for whole-vector loads
  acc_t sum = 0;
  for (int64_t j = 0; j < C; ++j) {
    ratio[j] = std::pow(pp[j], t);
    sum += ratio[j];
  }
  for (int64_t j = 0; j < C; ++j) ratio[j] = (ratio[j] / sum + e) / (rp[j] + e);
  return ratio;
}

// Runs the ALIGN / !ALIGN pass over all blocks; returns the batch mean of the softmax [C].
template <bool ALIGN, typename scalar_t>
at::Tensor run_align(const at::Tensor& z, const std::vector<at::opmath_type<scalar_t>>& ratio, double threshold,
                     AlignOutputs out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = z.size(0), C = z.size(1);
  std::vector<acc_t> partials(num_blocks(B, C) * C);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const acc_t* rp = ALIGN ? ratio.data() : nullptr;
  const acc_t thr = static_cast<acc_t>(threshold);
  for_each_block<ALIGN ? Pass::Align : Pass::SoftmaxMean, acc_t>(
      B, C, [&](auto kernel, Scratch& scratch, int64_t b, int64_t r0, int64_t r1) {
        kernel(zp, r0, r1, C, rp, thr, out, scratch, partials.data() + b * C);
      });
  at::Tensor mean = at::zeros({C}, z.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* mp = mean.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < num_blocks(B, C); ++b)
    for (int64_t j = 0; j < C; ++j) mp[j] += partials[b * C + j];
  const acc_t denom = static_cast<acc_t>(std::max<int64_t>(B, 1));
  for (int64_t j = 0; j < C; ++j) mp[j] /= denom;
  return mean;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distribution_align_cpu(
    const at::Tensor& logits_, const at::Tensor& prior, const at::Tensor& running, double temperature,
    double threshold, double eps, bool return_probs) {
  check_logits(logits_, "logits");
  check_class_vector(prior, "prior", logits_);
  check_class_vector(running, "running", logits_);
  check_align_scalars(temperature, threshold, eps);
  const at::Tensor z = logits_.detach().contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor probs = at::empty({B, return_probs ? C : 0}, z.options());
  at::Tensor label = at::empty({B}, z.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B}, z.options().dtype(at::kBool));
  at::Tensor mean;
  dispatch_floating(z.scalar_type(), "distribution_align_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> ratio = alignment_ratio<acc_t>(prior, running, temperature, eps);
    AlignOutputs out{return_probs ? probs.mutable_data_ptr<scalar_t>() : nullptr,
                     label.mutable_data_ptr<int64_t>(), mask.mutable_data_ptr<bool>()};
    mean = run_align<true, scalar_t>(z, ratio, threshold, out);
  });
  return {probs, label, mask, mean};
}

at::Tensor softmax_batch_mean_cpu(const at::Tensor& logits_) {
  check_logits(logits_, "logits");
  const at::Tensor z = logits_.detach().contiguous();
  at::Tensor mean;
  dispatch_floating(z.scalar_type(), "softmax_batch_mean_cpu", [&](auto tag) {
    mean = run_align<false, decltype(tag)>(z, {}, 0.0, AlignOutputs{nullptr, nullptr, nullptr});
  });
  return mean;
}

// ---- masked_cross_entropy ---------------------------------------------------------------------

template <typename acc_t>
MaskView<acc_t> mask_view(const at::Tensor& mask, at::Tensor& converted) {
  MaskView<acc_t> view;
  if (mask.scalar_type() == at::kBool) {
    converted = mask.contiguous();
    view.b = static_cast<const uint8_t*>(converted.const_data_ptr());
  } else {
    converted = mask.detach().to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    view.w = converted.const_data_ptr<acc_t>();
  }
  return view;
}

void check_targets_in_range(const std::vector<char>& bad, int64_t C) {
  TORCH_CHECK(std::none_of(bad.begin(), bad.end(), [](char b) { return b != 0; }),
              "fastsmall: target has class indices outside [0, C) = [0, ", C, ")");
}
at::Tensor masked_cross_entropy_cpu(const at::Tensor& logits_, const at::Tensor& target_, const at::Tensor& mask_) {
  check_logits(logits_, "logits");
  check_target_and_mask(target_, mask_, logits_);
  const at::Tensor z = logits_.contiguous();
  const at::Tensor y = target_.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor loss = at::empty({}, z.options());
  dispatch_floating(z.scalar_type(), "masked_cross_entropy_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor mask_storage;
    const MaskView<acc_t> mask = mask_view<acc_t>(mask_, mask_storage);
    const int64_t blocks = num_blocks(B, C);
    std::vector<acc_t> partials(blocks);
    std::vector<char> bad(blocks, 0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    for_each_block<Pass::CrossEntropy, acc_t>(
        B, C, [&](auto kernel, Scratch& scratch, int64_t b, int64_t r0, int64_t r1) {
          bool blk_bad = false;
          kernel(zp, yp, mask, r0, r1, C, scratch, &partials[b], &blk_bad);
          bad[b] = blk_bad;
        });
    check_targets_in_range(bad, C);
    acc_t sum = 0;
    for (int64_t b = 0; b < blocks; ++b) sum += partials[b];
    loss.fill_(static_cast<double>(sum / static_cast<acc_t>(std::max<int64_t>(B, 1))));
  });
  return loss;
}

at::Tensor masked_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_,
                                             const at::Tensor& target_, const at::Tensor& mask_) {
  check_logits(logits_, "logits");
  check_target_and_mask(target_, mask_, logits_);
  TORCH_CHECK(grad.dim() == 0, "fastsmall: grad must be a scalar (0-dim) tensor, got shape ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "fastsmall: grad must be a floating-point tensor, got ",
              grad.scalar_type());
  check_same_device(grad, "grad", logits_, "logits");
  const at::Tensor z = logits_.contiguous();
  const at::Tensor y = target_.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor gz = at::empty({B, C}, z.options());
  const double g = grad.item<double>();
  dispatch_floating(z.scalar_type(), "masked_cross_entropy_backward_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor mask_storage;
    const MaskView<acc_t> mask = mask_view<acc_t>(mask_, mask_storage);
    std::vector<char> bad(num_blocks(B, C), 0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    scalar_t* gp = gz.mutable_data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(g) / static_cast<acc_t>(std::max<int64_t>(B, 1));
    for_each_block<Pass::CrossEntropyBackward, acc_t>(
        B, C, [&](auto kernel, Scratch& scratch, int64_t b, int64_t r0, int64_t r1) {
          bool blk_bad = false;
          kernel(zp, yp, mask, scale, r0, r1, C, scratch, gp, &blk_bad);
          bad[b] = blk_bad;
        });
    check_targets_in_range(bad, C);
  });
  return gz;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("distribution_align", &distribution_align_cpu);
  m.impl("softmax_batch_mean", &softmax_batch_mean_cpu);
  m.impl("masked_cross_entropy", &masked_cross_entropy_cpu);
  m.impl("masked_cross_entropy_backward", &masked_cross_entropy_backward_cpu);
}

}  // namespace fastsmall
