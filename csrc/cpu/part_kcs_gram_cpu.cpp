// Before every include, so that it covers every function of this file, the inlined headers and the
// instruction-set wrappers (isa.h) alike: no a*b+c is fused into an FMA, and each instruction set
// gives the bits of the baseline build (torch's BuildExtension compiles with -std=gnu++20, whose
// default contracts; the tests check the bits with FASTSMALL_SIMD_BYTES = 16, 32, 64).
#pragma GCC optimize("fp-contract=off")
// CPU kernels of the part-aware KCS Gram: part_kcs_gram and its backward.
// Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Only the dot products inside each part are computed, each once (the blocks
// are symmetric); the masked layout's zeros are written with one memset per pose. Poses go
// through in transposed tiles, vectors across poses, compiled for each instruction set and chosen
// at run time (isa.h). The cost per pose given to the parallel loop (ns, measured) is per dot
// product (E * D) and per output (S), which covers both layouts.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../parts.h"
#include "isa.h"
#include "pose_loop.h"
#include "simd.h"

namespace fastsmall {
namespace {

// The input of both kernels: bones [..., NB, D] checked and contiguous, and the Gram entries
// of the parts (e.i.size() = E entries, S = e.out_size outputs per pose).
struct GramInput {
  at::Tensor bones;
  GramEntries e;
  int64_t NB, B, D, E, S;
};

GramInput gram_input(const at::Tensor& bones_, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                     bool compact, const at::Tensor* grad) {
  TORCH_CHECK(bones_.dim() >= 2, "fastsmall: bones must have shape [..., NB, D], got ", bones_.sizes());
  const int64_t NB = bones_.size(-2);
  check_points(bones_, "bones", NB, "bones");
  if (grad != nullptr) check_like(*grad, "grad", bones_, "bones");
  GramInput in{bones_.contiguous(), make_gram_entries(part_bones, part_sizes, NB, compact), NB, 0, 0, 0, 0};
  in.B = batch_numel(in.bones);
  in.D = in.bones.size(-1);
  in.E = static_cast<int64_t>(in.e.i.size());
  in.S = in.e.out_size;
  return in;
}

// ---- tiles of poses (pose_loop.h) ------------------------------------------------------------
// A Gram entry's bones (i, j) are the same for every pose, so each entry is a few whole-vector
// multiply-adds with no indirect indexing inside the vectors.

constexpr int kTile = kPoseTile;

// Per-thread scratch: the bones tile; work, the output tile (forward, compact layout) or the bones'
// gradient accumulators (backward); one value per Gram entry and pose (the dots, or g_ij); and the
// output gradient's tile (backward).
struct GramScratch {
  AlignedBuffer bones, work, entries, grad;
  GramScratch(int64_t C, int64_t work_rows, int64_t E, int64_t grad_rows, size_t elem)
      : bones(C * kTile * elem), work(work_rows * kTile * elem), entries(E * kTile * elem),
        grad(grad_rows * kTile * elem) {}
};

// Forward of poses [p0, p0 + n) of a tile: the entry dots, then the output rows (compact: a
// transposed tile stored with register transposes; masked: zeroed rows and two stores per entry).
template <int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void gram_forward_tile(const GramEntries& e, const scalar_t* bones, scalar_t* out, int64_t n,
                                        int64_t NB, int64_t D, bool compact, const GramScratch& s) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int NV = kTile / Simd<acc_t, BYTES>::W;
  const int64_t E = static_cast<int64_t>(e.i.size()), S = e.out_size;
  load_rows<kTile, BYTES>(bones, n, NB * D, s.bones.as<acc_t>());
  const V* __restrict__ b = s.bones.as<V>();
  V* __restrict__ dots = s.entries.as<V>();
  for (int64_t k = 0; k < E; ++k) {
    const V* ui = b + e.i[k] * D * NV;
    const V* uj = b + e.j[k] * D * NV;
    for (int v = 0; v < NV; ++v) {
      V dot = ui[v] * uj[v] + ui[NV + v] * uj[NV + v];
      if (D == 3) dot += ui[2 * NV + v] * uj[2 * NV + v];
      dots[k * NV + v] = dot;
    }
  }
  if (compact) {
    V* __restrict__ o = s.work.as<V>();
    for (int64_t k = 0; k < E; ++k)
      for (int v = 0; v < NV; ++v) o[e.pos1[k] * NV + v] = o[e.pos2[k] * NV + v] = dots[k * NV + v];
    store_rows<kTile, BYTES>(s.work.as<acc_t>(), n, S, out);
    return;
  }
  const acc_t* d = s.entries.as<acc_t>();
  for (int64_t r = 0; r < n; ++r) {
    scalar_t* on = out + r * S;
    std::memset(static_cast<void*>(on), 0, sizeof(scalar_t) * S);
    for (int64_t k = 0; k < E; ++k) on[e.pos1[k]] = on[e.pos2[k]] = static_cast<scalar_t>(d[k * kTile + r]);
  }
}

// d<u_i, u_j>: grad_u_i += g_ij u_j, grad_u_j += g_ij u_i with g_ij = G'[pos1] + G'[pos2]
// (both mirrored outputs); on the diagonal pos1 == pos2 gives the factor 2 of d|u_i|^2. Compact
// layout: the output gradient (S = 131 values per pose) is loaded as a transposed tile too, so the
// g_ij are whole-vector adds of two of its rows (a per-pose scalar gather, two loads per entry and
// pose, took half the backward). Masked layout: only 2E of its S = P * NB^2 = 1,125 values per pose
// are read, so they are gathered per pose instead of transposing all of them.
template <int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void gram_backward_tile(const GramEntries& e, const scalar_t* grad, const scalar_t* bones,
                                         scalar_t* out, int64_t n, int64_t NB, int64_t D, bool compact,
                                         const GramScratch& s) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int NV = kTile / Simd<acc_t, BYTES>::W;
  const int64_t E = static_cast<int64_t>(e.i.size()), S = e.out_size, C = NB * D;
  load_rows<kTile, BYTES>(bones, n, C, s.bones.as<acc_t>());
  V* __restrict__ gs = s.entries.as<V>();
  if (compact) {
    load_rows<kTile, BYTES>(grad, n, S, s.grad.as<acc_t>());  // rows n.. of the tile are 0, so their g_ij too
    const V* __restrict__ gt = s.grad.as<V>();
    for (int64_t k = 0; k < E; ++k) {
      const V* g1 = gt + e.pos1[k] * NV;
      const V* g2 = gt + e.pos2[k] * NV;
      for (int v = 0; v < NV; ++v) gs[k * NV + v] = g1[v] + g2[v];
    }
  } else {
    acc_t* gk = s.entries.as<acc_t>();
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* g = grad + r * S;
      for (int64_t k = 0; k < E; ++k) gk[k * kTile + r] = acc_t(g[e.pos1[k]]) + acc_t(g[e.pos2[k]]);
    }
    for (int64_t k = 0; k < E; ++k) std::fill(gk + k * kTile + n, gk + (k + 1) * kTile, acc_t(0));
  }
  const V* __restrict__ b = s.bones.as<V>();
  const V* __restrict__ gv = gs;
  V* __restrict__ acc = s.work.as<V>();
  std::fill(acc, acc + C * NV, V{});
  for (int64_t k = 0; k < E; ++k) {
    const int64_t i = e.i[k] * D * NV, j = e.j[k] * D * NV;
    for (int64_t c = 0; c < D * NV; c += NV)
      for (int v = 0; v < NV; ++v) acc[i + c + v] += gv[k * NV + v] * b[j + c + v];
    if (i != j)
      for (int64_t c = 0; c < D * NV; c += NV)
        for (int v = 0; v < NV; ++v) acc[j + c + v] += gv[k * NV + v] * b[i + c + v];
  }
  store_rows<kTile, BYTES>(s.work.as<acc_t>(), n, C, out);
}

template <bool BACKWARD>
struct GramTileKernel {
  template <int BYTES, typename scalar_t, typename acc_t, typename... Args>
  static FASTSMALL_INLINE void run(scalar_t* /*type tag*/, acc_t* /*type tag*/, Args&&... args) {
    if constexpr (BACKWARD) {
      gram_backward_tile<BYTES, scalar_t, acc_t>(std::forward<Args>(args)...);
    } else {
      gram_forward_tile<BYTES, scalar_t, acc_t>(std::forward<Args>(args)...);
    }
  }
};

// ---- the ops ------------------------------------------------------------------------------------
// The cost per pose given to the parallel loop's grain is linear in the Gram entries (E * D) and
// the outputs (S). Measured on one thread (bench/bench_small_batch.py --calibrate; AMD EPYC, AVX2;
// H36M-16, five parts: E = 78, S = 131 compact; float32): forward 59-76 ns, backward 123-164 ns per
// pose (the per-pose scalar loops before the tiles: 190 and 800-920).

std::vector<int64_t> part_kcs_gram_shape(const GramInput& in, int64_t num_parts, bool compact) {
  std::vector<int64_t> shape = batch_shape(in.bones);
  if (compact) {
    shape.push_back(in.S);
  } else {
    shape.push_back(num_parts);
    shape.push_back(in.NB * in.NB);
  }
  return shape;
}

void part_kcs_gram_into(const GramInput& in, bool compact, const at::Tensor& out) {
  const int64_t NB = in.NB, D = in.D, S = in.S;
  dispatch_floating(in.bones.scalar_type(), "part_kcs_gram_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* bp = in.bones.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    const auto scratch = [&] { return GramScratch(NB * D, compact ? S : 0, in.E, 0, sizeof(acc_t)); };
    for_each_pose_tile<GramTileKernel<false>>(
        in.B, 0.15 * in.E * D + 0.3 * S, scratch, [&](auto&& kernel, const GramScratch& s, int64_t p0, int64_t n) {
          kernel(tag_ptr<scalar_t>(), tag_ptr<acc_t>(), in.e, bp + p0 * NB * D, op + p0 * S, n, NB, D, compact, s);
        });
  });
}

at::Tensor part_kcs_gram_cpu(const at::Tensor& bones, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                             bool compact) {
  const GramInput in = gram_input(bones, part_bones, part_sizes, compact, nullptr);
  at::Tensor out = at::empty(part_kcs_gram_shape(in, static_cast<int64_t>(part_sizes.size()), compact),
                             in.bones.options());
  part_kcs_gram_into(in, compact, out);
  return out;
}

void part_kcs_gram_out_cpu(const at::Tensor& bones, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                           bool compact, const at::Tensor& out) {
  const GramInput in = gram_input(bones, part_bones, part_sizes, compact, nullptr);
  check_out(out, "out", in.bones, "bones", part_kcs_gram_shape(in, static_cast<int64_t>(part_sizes.size()), compact));
  part_kcs_gram_into(in, compact, out);
}

at::Tensor part_kcs_gram_backward_cpu(const at::Tensor& grad_, const at::Tensor& bones_,
                                      c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes, bool compact) {
  const GramInput in = gram_input(bones_, part_bones, part_sizes, compact, &grad_);
  const int64_t NB = in.NB, D = in.D, S = in.S;
  TORCH_CHECK(grad_.numel() == in.B * S, "fastsmall: grad must have ", S, " entries per pose (the shape of ",
              "part_kcs_gram's output), got shape ", grad_.sizes());
  const at::Tensor grad = grad_.contiguous();
  at::Tensor out = at::empty(in.bones.sizes(), in.bones.options());
  dispatch_floating(in.bones.scalar_type(), "part_kcs_gram_backward_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* bp = in.bones.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    const auto scratch = [&] { return GramScratch(NB * D, NB * D, in.E, compact ? S : 0, sizeof(acc_t)); };
    for_each_pose_tile<GramTileKernel<true>>(
        in.B, 0.5 * in.E * D + 0.1 * S, scratch, [&](auto&& kernel, const GramScratch& s, int64_t p0, int64_t n) {
          kernel(tag_ptr<scalar_t>(), tag_ptr<acc_t>(), in.e, gp + p0 * S, bp + p0 * NB * D, op + p0 * NB * D, n, NB,
                 D, compact, s);
        });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("part_kcs_gram", &part_kcs_gram_cpu);
  m.impl("part_kcs_gram_backward", &part_kcs_gram_backward_cpu);
  m.impl("part_kcs_gram.out", &part_kcs_gram_out_cpu);
}

}  // namespace fastsmall
