// Before every include, so that it covers this file's functions, the inlined headers and the
// instruction-set wrappers (isa.h): no a*b+c is fused into an FMA (torch's BuildExtension compiles
// with -std=gnu++20, whose default contracts), so every instruction set gives the same bits.
#pragma GCC optimize("fp-contract=off")
// CPU kernels of the KCS op family: kcs_forward, bone_decompose, kcs_inverse and
// their backward ops. Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Layout: every tensor is viewed as [B, rows, D] (made contiguous), and every kernel runs over
// tiles of kPoseTile poses held transposed (for_each_pose_tile, pose_loop.h), so that each
// operation is a whole vector over the poses of a tile, compiled per instruction set (isa.h).
// D (2 or 3) is a template parameter so the per-coordinate loops unroll. float16/bfloat16 are
// computed in float32 (at::opmath_type). The grain of the parallel loop over tiles comes from
// each kernel's measured single-thread cost per pose (ns, at its call site; pose_loop.h).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../tree.h"
#include "isa.h"
#include "pose_loop.h"
#include "simd.h"

namespace fastsmall {
namespace {

enum class Rows { Joints, Bones };

// The input of a KCS kernel: the skeleton's tree and a checked, contiguous [..., rows, D]
// tensor, rows = the skeleton's joints or bones.
struct KcsInput {
  Tree tree;
  at::Tensor data;
  int64_t J, NB, B, D;
  std::vector<int64_t> shape(int64_t rows, int64_t cols) const { return with_tail(batch_shape(data), rows, cols); }
  at::Tensor empty(int64_t rows, int64_t cols) const { return at::empty(shape(rows, cols), data.options()); }
};

KcsInput kcs_input(const at::Tensor& t, const char* name, c10::IntArrayRef parents, Rows rows) {
  KcsInput in{make_tree(parents), at::Tensor(), 0, 0, 0, 0};
  in.J = in.tree.num_joints;
  in.NB = in.tree.num_bones();
  if (rows == Rows::Joints) {
    check_points(t, name, in.J, "joints");
  } else {
    check_points(t, name, in.NB, "bones");
  }
  in.data = t.contiguous();
  in.B = batch_numel(in.data);
  in.D = in.data.size(-1);
  return in;
}

// ---- bone_decompose -----------------------------------------------------------
// length = ||b||, unit = b / length (eps == 0, PoseAug) or b / max(length, eps).
//
// Tiles of kPoseTile poses, transposed (pose_loop.h): each loop below runs over the poses of a
// tile for one bone, so the square roots and the true divisions (kept on purpose: eps == 0 is
// bit-compatible with PoseAug's b / ||b||) vectorise across poses at the instruction set's width
// (-fno-math-errno). The backward recomputes the bone vectors and lengths from x: saving them
// would write and read back 4 floats per bone (16 bytes) to spare a subtraction, a square root
// and a division that the tile does at vector width (measured: the backward's cost is the
// gradient formula, not the recomputation).

constexpr int R = kPoseTile;

// O[j] = sum of G over the bones leaving joint j - G[the bone ending at j], rows of R lanes
// ([NB * D][R] -> [J * D][R]): the adjoint of kcs_forward, as a gather so every row is written once.
template <typename acc_t, int Dc>
FASTSMALL_INLINE void kcs_adjoint_tile(const acc_t* G, acc_t* O, const Tree& t) {
  const int64_t *own = t.joint_bone.data(), *co = t.child_offset.data(), *cb = t.child_bone.data();
  for (int64_t j = 0; j < t.num_joints; ++j) {
    for (int d = 0; d < Dc; ++d) {
      acc_t* __restrict__ o = O + (j * Dc + d) * R;
      if (own[j] >= 0) {
        const acc_t* __restrict__ mine = G + (own[j] * Dc + d) * R;
        for (int r = 0; r < R; ++r) o[r] = -mine[r];
      } else {
        std::fill(o, o + R, acc_t(0));
      }
      for (int64_t i = co[j]; i < co[j + 1]; ++i) {
        const acc_t* __restrict__ child = G + (cb[i] * Dc + d) * R;
        for (int r = 0; r < R; ++r) o[r] += child[r];
      }
    }
  }
}


// Per-thread scratch, all [rows][R] tiles: the joints (in), the bones' outputs or gradients (work),
// the lengths or their gradients (len), and the joints' gradients (out, backward only).
struct BoneScratch {
  AlignedBuffer in, work, len, out;
  BoneScratch(int64_t J, int64_t NB, int64_t D, size_t elem, bool backward)
      : in(J * D * R * elem), work(NB * D * R * elem), len(NB * R * elem), out(backward ? J * D * R * elem : 0) {}
};

// The bone vector b = x[parent] - x[child] of bone k for the poses of a tile.
template <typename acc_t, int Dc>
struct TileBone {
  const acc_t* __restrict__ p;
  const acc_t* __restrict__ c;
  TileBone(const acc_t* X, int64_t parent, int64_t child) : p(X + parent * Dc * R), c(X + child * Dc * R) {}
  FASTSMALL_INLINE acc_t operator()(int d, int r) const { return p[d * R + r] - c[d * R + r]; }
};

template <int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void bone_decompose_tile(std::integral_constant<int, Dc>, const scalar_t* x, scalar_t* unit,
                                          scalar_t* length, int64_t n, const Tree& t, acc_t e,
                                          const BoneScratch& s) {
  const int64_t J = t.num_joints, NB = t.num_bones();
  acc_t* X = s.in.as<acc_t>();
  load_rows<R, BYTES>(x, n, J * Dc, X);
  for (int64_t k = 0; k < NB; ++k) {
    const TileBone<acc_t, Dc> b(X, t.bone_parent[k], t.bone_child[k]);
    acc_t* __restrict__ u = s.work.as<acc_t>() + k * Dc * R;
    acc_t* __restrict__ len = s.len.as<acc_t>() + k * R;
    for (int r = 0; r < R; ++r) {
      const acc_t b0 = b(0, r), b1 = b(1, r), b2 = Dc == 3 ? b(Dc - 1, r) : acc_t(0);
      acc_t sq = b0 * b0 + b1 * b1;
      if constexpr (Dc == 3) sq += b2 * b2;
      const acc_t l = std::sqrt(sq);
      // max(len, 0) == len: eps == 0 is PoseAug's b / ||b|| (a true division, bit-exact).
      // std::max(l, e) is (l < e ? e : l): a NaN length stays NaN, so a bone touching a NaN
      // coordinate gets a NaN unit vector, as the reference (README "Non-finite input").
      const acc_t den = std::max(l, e);
      len[r] = l;
      u[r] = b0 / den;
      u[R + r] = b1 / den;
      if constexpr (Dc == 3) u[2 * R + r] = b2 / den;
    }
  }
  store_rows<R, BYTES>(s.work.as<acc_t>(), n, NB * Dc, unit);
  store_rows<R, BYTES>(s.len.as<acc_t>(), n, NB, length);
}

// Gradient w.r.t. each bone vector, then chained to the joints:
//   unit = b / den, den = max(len, eps): g / den - (b.g) b / (den^2 len), the radial
//   term where the clamp passes the gradient (len >= eps, as torch.clamp_min);
//   length = ||b||: gl b / len, 0 at b = 0 (as torch.linalg.vector_norm);
//   grad_x[j] = sum of the gradients of the bones leaving j - the gradient of the bone ending at j.
template <bool HAS_GU, bool HAS_GL, int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void bone_decompose_backward_tile(std::integral_constant<int, Dc>, const scalar_t* gu,
                                                   const scalar_t* gl, const scalar_t* x, scalar_t* out, int64_t n,
                                                   const Tree& t, acc_t e, const BoneScratch& s) {
  const int64_t J = t.num_joints, NB = t.num_bones();
  acc_t* X = s.in.as<acc_t>();
  acc_t* G = s.work.as<acc_t>();  // grad_unit in, grad of the bone vectors out
  acc_t* GL = s.len.as<acc_t>();
  load_rows<R, BYTES>(x, n, J * Dc, X);
  if constexpr (HAS_GU) load_rows<R, BYTES>(gu, n, NB * Dc, G);
  if constexpr (HAS_GL) load_rows<R, BYTES>(gl, n, NB, GL);
  for (int64_t k = 0; k < NB; ++k) {
    const TileBone<acc_t, Dc> b(X, t.bone_parent[k], t.bone_child[k]);
    acc_t* __restrict__ g = G + k * Dc * R;
    const acc_t* __restrict__ glk = GL + k * R;
    for (int r = 0; r < R; ++r) {
      const acc_t b0 = b(0, r), b1 = b(1, r), b2 = Dc == 3 ? b(Dc - 1, r) : acc_t(0);
      const acc_t g0 = HAS_GU ? g[r] : acc_t(0), g1 = HAS_GU ? g[R + r] : acc_t(0);
      const acc_t g2 = HAS_GU && Dc == 3 ? g[(Dc - 1) * R + r] : acc_t(0);
      acc_t sq = b0 * b0 + b1 * b1;
      acc_t dot = b0 * g0 + b1 * g1;
      if constexpr (Dc == 3) {
        sq += b2 * b2;
        dot += b2 * g2;
      }
      const acc_t len = std::sqrt(sq);
      const acc_t den = std::max(len, e);
      // Divisions are computed unconditionally and then selected, so the loop has no branches
      // and vectorises; a discarded inf/NaN is harmless.
      acc_t coef = 0;   // multiplies b
      acc_t scale = 0;  // multiplies g
      if constexpr (HAS_GU) {
        scale = acc_t(1) / den;
        const acc_t radial = dot / (den * den * len);
        coef -= len >= e ? radial : acc_t(0);
      }
      if constexpr (HAS_GL) {
        // "== 0", not "> 0": a NaN length keeps its NaN gradient in every coordinate of the bone
        // (as the reference's autograd), instead of 0 * b, NaN only in the NaN coordinates.
        const acc_t along = glk[r] / len;
        coef += len == acc_t(0) ? acc_t(0) : along;
      }
      g[r] = (HAS_GU ? g0 * scale : acc_t(0)) + coef * b0;
      g[R + r] = (HAS_GU ? g1 * scale : acc_t(0)) + coef * b1;
      if constexpr (Dc == 3) g[2 * R + r] = (HAS_GU ? g2 * scale : acc_t(0)) + coef * b2;
    }
  }
  acc_t* O = s.out.as<acc_t>();
  kcs_adjoint_tile<acc_t, Dc>(G, O, t);
  store_rows<R, BYTES>(O, n, J * Dc, out);
}

struct BoneDecomposeTile {
  template <int BYTES, typename... Args>
  static FASTSMALL_INLINE void run(Args&&... args) {
    bone_decompose_tile<BYTES>(std::forward<Args>(args)...);
  }
};

template <bool HAS_GU, bool HAS_GL>
struct BoneDecomposeBackwardTile {
  template <int BYTES, typename... Args>
  static FASTSMALL_INLINE void run(Args&&... args) {
    bone_decompose_backward_tile<HAS_GU, HAS_GL, BYTES>(std::forward<Args>(args)...);
  }
};

// Costs per pose for the grain (ns, one thread; bench/bench_small_batch.py --calibrate, AMD EPYC,
// AVX2, H36M-16, D = 3, float32, 1,024-4,096 poses): forward 31-48 (the per-pose loop before the
// tiles: 87-116), backward 49-65 (255-389); written below per joint coordinate (J * D = 48).

void bone_decompose_into(const KcsInput& in, double eps, const at::Tensor& unit, const at::Tensor& length) {
  const int64_t J = in.J, NB = in.NB;
  dispatch_points(in.data, "bone_decompose_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* xp = in.data.const_data_ptr<scalar_t>();
    scalar_t* up = unit.mutable_data_ptr<scalar_t>();
    scalar_t* lp = length.mutable_data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    const auto scratch = [&] { return BoneScratch(J, NB, Dc, sizeof(acc_t), false); };
    for_each_pose_tile<BoneDecomposeTile>(
        in.B, 0.8 * J * Dc, scratch, [&](auto&& kernel, const BoneScratch& s, int64_t p0, int64_t n) {
          kernel(dim, xp + p0 * J * Dc, up + p0 * NB * Dc, lp + p0 * NB, n, in.tree, e, s);
        });
  });
}

std::tuple<at::Tensor, at::Tensor> bone_decompose_cpu(const at::Tensor& x, c10::IntArrayRef parents, double eps) {
  check_eps(eps);
  const KcsInput in = kcs_input(x, "x", parents, Rows::Joints);
  at::Tensor unit = in.empty(in.NB, in.D);
  at::Tensor length = in.empty(in.NB, 1);
  bone_decompose_into(in, eps, unit, length);
  return {unit, length};
}

void bone_decompose_out_cpu(const at::Tensor& x, c10::IntArrayRef parents, double eps, const at::Tensor& unit,
                            const at::Tensor& length) {
  check_eps(eps);
  const KcsInput in = kcs_input(x, "x", parents, Rows::Joints);
  check_out(unit, "unit", in.data, "x", in.shape(in.NB, in.D));
  check_out(length, "length", in.data, "x", in.shape(in.NB, 1));
  TORCH_CHECK(at::get_overlap_status(unit, length) == at::MemOverlapStatus::No,
              "fastsmall: unit shares memory with length");
  bone_decompose_into(in, eps, unit, length);
}

at::Tensor bone_decompose_backward_cpu(const std::optional<at::Tensor>& grad_unit_,
                                       const std::optional<at::Tensor>& grad_length_, const at::Tensor& x_,
                                       c10::IntArrayRef parents, double eps) {
  check_eps(eps);
  const KcsInput in = kcs_input(x_, "x", parents, Rows::Joints);
  const int64_t J = in.J, NB = in.NB;
  const at::Tensor gu = optional_input(grad_unit_, "grad_unit", in.data, "x", in.shape(NB, in.D));
  const at::Tensor gl = optional_input(grad_length_, "grad_length", in.data, "x", in.shape(NB, 1));
  at::Tensor out = at::empty(in.data.sizes(), in.data.options());
  dispatch_points(in.data, "bone_decompose_backward_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* xp = in.data.const_data_ptr<scalar_t>();
    const scalar_t* gup = gu.defined() ? gu.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* glp = gl.defined() ? gl.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    const auto scratch = [&] { return BoneScratch(J, NB, Dc, sizeof(acc_t), true); };
    auto run = [&](auto kernel_tag) {
      using Kernel = decltype(kernel_tag);
      for_each_pose_tile<Kernel>(
          in.B, 1.2 * J * Dc, scratch, [&](auto&& kernel, const BoneScratch& s, int64_t p0, int64_t n) {
            kernel(dim, gup ? gup + p0 * NB * Dc : gup, glp ? glp + p0 * NB : glp, xp + p0 * J * Dc,
                   op + p0 * J * Dc, n, in.tree, e, s);
          });
    };
    if (gup && glp) {
      run(BoneDecomposeBackwardTile<true, true>{});
    } else if (gup) {
      run(BoneDecomposeBackwardTile<true, false>{});
    } else {
      run(BoneDecomposeBackwardTile<false, true>{});
    }
  });
  return out;
}

// ---- the linear kernels: kcs_forward, kcs_inverse and their adjoints ----------------------------
// Also on tiles of poses (a per-pose loop spent ~30-100 ns per pose on indirect scalar indexing;
// bench/RESULTS.md): each statement below is one whole-vector operation over the R poses of a
// tile, in the per-pose loop's order, so the bits are those of the per-pose loop on every
// instruction set (the sums of the adjoints keep their order).

// The scratch of a linear kernel: its input tile, its output tile and (kcs_inverse) the root tile.
struct LinearScratch {
  AlignedBuffer in, out, root;
  LinearScratch(int64_t in_rows, int64_t out_rows, int64_t root_rows, size_t elem)
      : in(in_rows * R * elem), out(out_rows * R * elem), root(root_rows * R * elem) {}
};

// bones[k] = x[parent(k)] - x[child(k)].
template <int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void kcs_forward_tile(std::integral_constant<int, Dc>, const acc_t*, const scalar_t* x,
                                       scalar_t* bones, int64_t n, const Tree& t, const LinearScratch& s) {
  const int64_t J = t.num_joints, NB = t.num_bones();
  acc_t* X = s.in.as<acc_t>();
  acc_t* O = s.out.as<acc_t>();
  load_rows<R, BYTES>(x, n, J * Dc, X);
  for (int64_t k = 0; k < NB; ++k) {
    const acc_t* __restrict__ p = X + t.bone_parent[k] * Dc * R;
    const acc_t* __restrict__ c = X + t.bone_child[k] * Dc * R;
    acc_t* __restrict__ o = O + k * Dc * R;
    for (int r = 0; r < Dc * R; ++r) o[r] = p[r] - c[r];
  }
  store_rows<R, BYTES>(O, n, NB * Dc, bones);
}

template <int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void kcs_forward_backward_tile(std::integral_constant<int, Dc>, const acc_t*,
                                                const scalar_t* grad_bones, scalar_t* grad_x, int64_t n,
                                                const Tree& t, const LinearScratch& s) {
  load_rows<R, BYTES>(grad_bones, n, t.num_bones() * Dc, s.in.as<acc_t>());
  kcs_adjoint_tile<acc_t, Dc>(s.in.as<acc_t>(), s.out.as<acc_t>(), t);
  store_rows<R, BYTES>(s.out.as<acc_t>(), n, t.num_joints * Dc, grad_x);
}

// x[root] = root (or 0), then x[child(k)] = x[parent(k)] - bones[k] in topological order.
template <int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void kcs_inverse_tile(std::integral_constant<int, Dc>, const acc_t*, const scalar_t* bones,
                                       const scalar_t* root, scalar_t* x, int64_t n, const Tree& t,
                                       const LinearScratch& s) {
  const int64_t J = t.num_joints, NB = t.num_bones();
  acc_t* Bt = s.in.as<acc_t>();
  acc_t* X = s.out.as<acc_t>();
  load_rows<R, BYTES>(bones, n, NB * Dc, Bt);
  acc_t* xr = X + t.root * Dc * R;
  if (root) {
    load_rows<R, BYTES>(root, n, Dc, s.root.as<acc_t>());
    std::copy(s.root.as<acc_t>(), s.root.as<acc_t>() + Dc * R, xr);
  } else {
    std::fill(xr, xr + Dc * R, acc_t(0));
  }
  for (const int64_t k : t.topo_bones) {
    const acc_t* __restrict__ p = X + t.bone_parent[k] * Dc * R;
    const acc_t* __restrict__ b = Bt + k * Dc * R;
    acc_t* __restrict__ c = X + t.bone_child[k] * Dc * R;
    for (int r = 0; r < Dc * R; ++r) c[r] = p[r] - b[r];
  }
  store_rows<R, BYTES>(X, n, J * Dc, x);
}

// Adjoint: grad_bones[k] = -(sum of grad_x over the subtree below bone k), grad_root = sum of
// grad_x over all joints; one reverse-topological sweep accumulating into the parents.
template <int BYTES, typename scalar_t, typename acc_t, int Dc>
FASTSMALL_INLINE void kcs_inverse_backward_tile(std::integral_constant<int, Dc>, const acc_t*, const scalar_t* grad_x,
                                                scalar_t* grad_bones, scalar_t* grad_root, int64_t n, const Tree& t,
                                                const LinearScratch& s) {
  const int64_t J = t.num_joints, NB = t.num_bones();
  acc_t* A = s.in.as<acc_t>();
  acc_t* GB = s.out.as<acc_t>();
  load_rows<R, BYTES>(grad_x, n, J * Dc, A);
  for (auto k_it = t.topo_bones.rbegin(); k_it != t.topo_bones.rend(); ++k_it) {
    const int64_t k = *k_it;
    const acc_t* __restrict__ sub = A + t.bone_child[k] * Dc * R;
    acc_t* __restrict__ p = A + t.bone_parent[k] * Dc * R;
    acc_t* __restrict__ gb = GB + k * Dc * R;
    for (int r = 0; r < Dc * R; ++r) {
      gb[r] = -sub[r];
      p[r] += sub[r];
    }
  }
  store_rows<R, BYTES>(GB, n, NB * Dc, grad_bones);
  store_rows<R, BYTES>(A + t.root * Dc * R, n, Dc, grad_root);
}

#define FASTSMALL_TILE_KERNEL(NAME, FN)                          \
  struct NAME {                                                  \
    template <int BYTES, typename... Args>                       \
    static FASTSMALL_INLINE void run(Args&&... args) {           \
      FN<BYTES>(std::forward<Args>(args)...);                    \
    }                                                            \
  };
FASTSMALL_TILE_KERNEL(KcsForwardTile, kcs_forward_tile)
FASTSMALL_TILE_KERNEL(KcsForwardBackwardTile, kcs_forward_backward_tile)
FASTSMALL_TILE_KERNEL(KcsInverseTile, kcs_inverse_tile)
FASTSMALL_TILE_KERNEL(KcsInverseBackwardTile, kcs_inverse_backward_tile)
#undef FASTSMALL_TILE_KERNEL

// Costs per pose for the grain (ns, one thread, see bone_decompose's): written per joint coordinate.
constexpr double KCS_FORWARD_NS = 0.2, KCS_FORWARD_BACKWARD_NS = 0.3, KCS_INVERSE_NS = 0.3,
                 KCS_INVERSE_BACKWARD_NS = 0.4;

// The four linear kernels' common frame: the dtype and D of `in`, a LinearScratch of (in_rows,
// out_rows, root_rows) rows of D coordinates, and f(kernel, scratch, p0, n, dim, scalar tag, compute
// tag) for every tile of poses [p0, p0 + n).
template <typename Kernel, typename F>
void linear_tiles(const KcsInput& in, const char* name, double ns_per_coordinate, int64_t in_rows, int64_t out_rows,
                  int64_t root_rows, F&& f) {
  dispatch_points(in.data, name, [&](auto tag, auto dim) {
    using acc_t = at::opmath_type<decltype(tag)>;
    constexpr int Dc = decltype(dim)::value;
    const auto scratch = [&] { return LinearScratch(in_rows * Dc, out_rows * Dc, root_rows * Dc, sizeof(acc_t)); };
    for_each_pose_tile<Kernel>(in.B, ns_per_coordinate * in.J * Dc, scratch,
                               [&](auto&& kernel, const LinearScratch& s, int64_t p0, int64_t n) {
                                 f(kernel, s, p0, n, dim, tag, tag_ptr<acc_t>());
                               });
  });
}

void kcs_forward_into(const KcsInput& in, const at::Tensor& out) {
  linear_tiles<KcsForwardTile>(
      in, "kcs_forward_cpu", KCS_FORWARD_NS, in.J, in.NB, 0,
      [&](auto&& kernel, const LinearScratch& s, int64_t p0, int64_t n, auto dim, auto tag, auto acc) {
        using scalar_t = decltype(tag);
        constexpr int Dc = decltype(dim)::value;
        kernel(dim, acc, in.data.const_data_ptr<scalar_t>() + p0 * in.J * Dc,
               out.mutable_data_ptr<scalar_t>() + p0 * in.NB * Dc, n, in.tree, s);
      });
}

at::Tensor kcs_forward_cpu(const at::Tensor& x, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(x, "x", parents, Rows::Joints);
  at::Tensor out = in.empty(in.NB, in.D);
  kcs_forward_into(in, out);
  return out;
}

void kcs_forward_out_cpu(const at::Tensor& x, c10::IntArrayRef parents, const at::Tensor& out) {
  const KcsInput in = kcs_input(x, "x", parents, Rows::Joints);
  check_out(out, "out", in.data, "x", in.shape(in.NB, in.D));
  kcs_forward_into(in, out);
}

at::Tensor kcs_forward_backward_cpu(const at::Tensor& grad_bones, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(grad_bones, "grad_bones", parents, Rows::Bones);
  at::Tensor out = in.empty(in.J, in.D);
  linear_tiles<KcsForwardBackwardTile>(
      in, "kcs_forward_backward_cpu", KCS_FORWARD_BACKWARD_NS, in.NB, in.J, 0,
      [&](auto&& kernel, const LinearScratch& s, int64_t p0, int64_t n, auto dim, auto tag, auto acc) {
        using scalar_t = decltype(tag);
        constexpr int Dc = decltype(dim)::value;
        kernel(dim, acc, in.data.const_data_ptr<scalar_t>() + p0 * in.NB * Dc,
               out.mutable_data_ptr<scalar_t>() + p0 * in.J * Dc, n, in.tree, s);
      });
  return out;
}

at::Tensor kcs_inverse_root(const KcsInput& in, const std::optional<at::Tensor>& root) {
  return optional_input(root, "root", in.data, "bones", in.shape(1, in.D), " ([..., 1, D] with the batch dims of bones)");
}

void kcs_inverse_into(const KcsInput& in, const at::Tensor& root, const at::Tensor& out) {
  linear_tiles<KcsInverseTile>(
      in, "kcs_inverse_cpu", KCS_INVERSE_NS, in.NB, in.J, 1,
      [&](auto&& kernel, const LinearScratch& s, int64_t p0, int64_t n, auto dim, auto tag, auto acc) {
        using scalar_t = decltype(tag);
        constexpr int Dc = decltype(dim)::value;
        const scalar_t* rp = root.defined() ? root.const_data_ptr<scalar_t>() + p0 * Dc : nullptr;
        kernel(dim, acc, in.data.const_data_ptr<scalar_t>() + p0 * in.NB * Dc, rp,
               out.mutable_data_ptr<scalar_t>() + p0 * in.J * Dc, n, in.tree, s);
      });
}

at::Tensor kcs_inverse_cpu(const at::Tensor& bones, c10::IntArrayRef parents, const std::optional<at::Tensor>& root_) {
  const KcsInput in = kcs_input(bones, "bones", parents, Rows::Bones);
  const at::Tensor root = kcs_inverse_root(in, root_);
  at::Tensor out = in.empty(in.J, in.D);
  kcs_inverse_into(in, root, out);
  return out;
}

void kcs_inverse_out_cpu(const at::Tensor& bones, c10::IntArrayRef parents, const std::optional<at::Tensor>& root_,
                         const at::Tensor& out) {
  const KcsInput in = kcs_input(bones, "bones", parents, Rows::Bones);
  const at::Tensor root = kcs_inverse_root(in, root_);
  check_out(out, "out", in.data, "bones", in.shape(in.J, in.D));
  if (root.defined()) check_out(out, "out", root, "root", in.shape(in.J, in.D));
  kcs_inverse_into(in, root, out);
}

std::tuple<at::Tensor, at::Tensor> kcs_inverse_backward_cpu(const at::Tensor& grad_x, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(grad_x, "grad_x", parents, Rows::Joints);
  at::Tensor grad_bones = in.empty(in.NB, in.D);
  at::Tensor grad_root = in.empty(1, in.D);
  linear_tiles<KcsInverseBackwardTile>(
      in, "kcs_inverse_backward_cpu", KCS_INVERSE_BACKWARD_NS, in.J, in.NB, 0,
      [&](auto&& kernel, const LinearScratch& s, int64_t p0, int64_t n, auto dim, auto tag, auto acc) {
        using scalar_t = decltype(tag);
        constexpr int Dc = decltype(dim)::value;
        kernel(dim, acc, in.data.const_data_ptr<scalar_t>() + p0 * in.J * Dc,
               grad_bones.mutable_data_ptr<scalar_t>() + p0 * in.NB * Dc,
               grad_root.mutable_data_ptr<scalar_t>() + p0 * Dc, n, in.tree, s);
      });
  return {grad_bones, grad_root};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("kcs_forward", &kcs_forward_cpu);
  m.impl("kcs_forward_backward", &kcs_forward_backward_cpu);
  m.impl("bone_decompose", &bone_decompose_cpu);
  m.impl("bone_decompose_backward", &bone_decompose_backward_cpu);
  m.impl("kcs_inverse", &kcs_inverse_cpu);
  m.impl("kcs_inverse_backward", &kcs_inverse_backward_cpu);
  m.impl("kcs_forward.out", &kcs_forward_out_cpu);
  m.impl("bone_decompose.out", &bone_decompose_out_cpu);
  m.impl("kcs_inverse.out", &kcs_inverse_out_cpu);
}

}  // namespace fastsmall
