// CPU kernels of the KCS op family: kcs_forward, bone_decompose, kcs_inverse and
// their backward ops. Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Layout: every tensor is viewed as [B, rows, D] (made contiguous), one pose per
// iteration of the parallel loop over the batch (for_each_pose, pose_loop.h). D (2 or 3)
// is a template parameter so the innermost loops unroll. float16/bfloat16 are computed
// in float32 (at::opmath_type). The second argument of for_each_pose is the kernel's measured
// single-thread cost per pose in ns, from which the loop's grain is set (pose_loop.h).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../tree.h"
#include "pose_loop.h"

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

// ---- kcs_forward --------------------------------------------------------------

at::Tensor kcs_forward_cpu(const at::Tensor& x_, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(x_, "x", parents, Rows::Joints);
  const int64_t J = in.J, NB = in.NB;
  at::Tensor out = in.empty(NB, in.D);
  dispatch_points(in.data, "kcs_forward_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* xp = in.data.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t *bp = in.tree.bone_parent.data(), *bc = in.tree.bone_child.data();
    for_each_pose(in.B, 0.6 * J * Dc, [&](int64_t n) {
      const scalar_t* xn = xp + n * J * Dc;
      scalar_t* on = op + n * NB * Dc;
      for (int64_t k = 0; k < NB; ++k) {
        const scalar_t* a = xn + bp[k] * Dc;
        const scalar_t* c = xn + bc[k] * Dc;
        for (int d = 0; d < Dc; ++d) on[k * Dc + d] = static_cast<scalar_t>(acc_t(a[d]) - acc_t(c[d]));
      }
    });
  });
  return out;
}

// Adjoint as a gather, so every output is written once: grad_x[j] = sum of the
// gradients of the bones leaving j - the gradient of the bone ending at j.
at::Tensor kcs_forward_backward_cpu(const at::Tensor& g_, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(g_, "grad_bones", parents, Rows::Bones);
  const int64_t J = in.J, NB = in.NB;
  at::Tensor out = in.empty(J, in.D);
  dispatch_points(in.data, "kcs_forward_backward_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* gp = in.data.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const Tree& t = in.tree;
    const int64_t *own = t.joint_bone.data(), *co = t.child_offset.data(), *cb = t.child_bone.data();
    for_each_pose(in.B, 1.2 * J * Dc, [&](int64_t n) {
      const scalar_t* gn = gp + n * NB * Dc;
      scalar_t* on = op + n * J * Dc;
      for (int64_t j = 0; j < J; ++j) {
        acc_t s[Dc];
        for (int d = 0; d < Dc; ++d) s[d] = own[j] >= 0 ? -acc_t(gn[own[j] * Dc + d]) : acc_t(0);
        for (int64_t i = co[j]; i < co[j + 1]; ++i)
          for (int d = 0; d < Dc; ++d) s[d] += acc_t(gn[cb[i] * Dc + d]);
        for (int d = 0; d < Dc; ++d) on[j * Dc + d] = static_cast<scalar_t>(s[d]);
      }
    });
  });
  return out;
}

// ---- bone_decompose -----------------------------------------------------------
// length = ||b||, unit = b / length (eps == 0, PoseAug) or b / max(length, eps).

// Per pose: gather the bones into one array per coordinate (structure of arrays),
// so the sqrt/divide loops over bones vectorise (-O3 -fno-math-errno), then
// interleave the results back.
template <typename acc_t, int Dc>
struct BoneArrays {
  std::vector<acc_t> storage;
  acc_t* b[Dc];
  acc_t* g[Dc];
  acc_t* len;
  acc_t* gl;
  explicit BoneArrays(int64_t NB) : storage((2 * Dc + 2) * NB) {
    for (int d = 0; d < Dc; ++d) {
      b[d] = storage.data() + d * NB;
      g[d] = storage.data() + (Dc + d) * NB;
    }
    len = storage.data() + 2 * Dc * NB;
    gl = len + NB;
  }
};

template <typename scalar_t, typename acc_t, int Dc>
inline void gather_bones(const scalar_t* xn, const int64_t* bp, const int64_t* bc, int64_t NB,
                         BoneArrays<acc_t, Dc>& a) {
  for (int64_t k = 0; k < NB; ++k)
    for (int d = 0; d < Dc; ++d) a.b[d][k] = acc_t(xn[bp[k] * Dc + d]) - acc_t(xn[bc[k] * Dc + d]);
}

// The loops below run over bones with one restrict pointer per coordinate, so
// GCC vectorises them (sqrt needs -fno-math-errno). Coordinate 2 exists for D == 3.
template <typename acc_t, int Dc>
inline void normalize_bones(BoneArrays<acc_t, Dc>& a, int64_t NB, acc_t e) {
  acc_t* __restrict__ b0 = a.b[0];
  acc_t* __restrict__ b1 = a.b[1];
  acc_t* __restrict__ b2 = a.b[Dc - 1];
  acc_t* __restrict__ len = a.len;
  for (int64_t k = 0; k < NB; ++k) {
    acc_t sq = b0[k] * b0[k] + b1[k] * b1[k];
    if constexpr (Dc == 3) sq += b2[k] * b2[k];
    const acc_t l = std::sqrt(sq);
    // max(len, 0) == len: eps == 0 is PoseAug's b / ||b|| (a true division, bit-exact).
    // std::max(l, e) is (l < e ? e : l): a NaN length stays NaN, so a bone touching a NaN
    // coordinate gets a NaN unit vector, as the reference (README "Non-finite input").
    const acc_t den = std::max(l, e);
    len[k] = l;
    b0[k] = b0[k] / den;
    b1[k] = b1[k] / den;
    if constexpr (Dc == 3) b2[k] = b2[k] / den;
  }
}

// Gradient w.r.t. each bone vector, written over a.g:
//   unit = b / den, den = max(len, eps): g / den - (b.g) b / (den^2 len), the radial
//   term where the clamp passes the gradient (len >= eps, as torch.clamp_min);
//   length = ||b||: gl b / len, 0 at b = 0 (as torch.linalg.vector_norm).
template <typename acc_t, int Dc, bool HAS_GU, bool HAS_GL>
inline void bone_gradients(BoneArrays<acc_t, Dc>& a, int64_t NB, acc_t e) {
  const acc_t* __restrict__ b0 = a.b[0];
  const acc_t* __restrict__ b1 = a.b[1];
  const acc_t* __restrict__ b2 = a.b[Dc - 1];
  acc_t* __restrict__ g0 = a.g[0];
  acc_t* __restrict__ g1 = a.g[1];
  acc_t* __restrict__ g2 = a.g[Dc - 1];
  const acc_t* __restrict__ gl = a.gl;
  for (int64_t k = 0; k < NB; ++k) {
    acc_t sq = b0[k] * b0[k] + b1[k] * b1[k];
    acc_t dot = b0[k] * g0[k] + b1[k] * g1[k];
    if constexpr (Dc == 3) {
      sq += b2[k] * b2[k];
      dot += b2[k] * g2[k];
    }
    const acc_t len = std::sqrt(sq);
    const acc_t den = std::max(len, e);
    // Divisions are computed unconditionally and then selected, so the loop has
    // no branches and vectorises; a discarded inf/NaN is harmless.
    acc_t coef = 0;  // multiplies b
    acc_t scale = 0;  // multiplies g
    if constexpr (HAS_GU) {
      scale = acc_t(1) / den;
      const acc_t radial = dot / (den * den * len);
      coef -= len >= e ? radial : acc_t(0);
    }
    if constexpr (HAS_GL) {
      // "== 0", not "> 0": a NaN length keeps its NaN gradient in every coordinate of the bone
      // (as the reference's autograd), instead of 0 * b, NaN only in the NaN coordinates.
      const acc_t along = gl[k] / len;
      coef += len == acc_t(0) ? acc_t(0) : along;
    }
    g0[k] = (HAS_GU ? g0[k] * scale : acc_t(0)) + coef * b0[k];
    g1[k] = (HAS_GU ? g1[k] * scale : acc_t(0)) + coef * b1[k];
    if constexpr (Dc == 3) g2[k] = (HAS_GU ? g2[k] * scale : acc_t(0)) + coef * b2[k];
  }
}

std::tuple<at::Tensor, at::Tensor> bone_decompose_cpu(const at::Tensor& x_, c10::IntArrayRef parents,
                                                       double eps) {
  check_eps(eps);
  const KcsInput in = kcs_input(x_, "x", parents, Rows::Joints);
  const int64_t J = in.J, NB = in.NB;
  at::Tensor unit = in.empty(NB, in.D);
  at::Tensor length = in.empty(NB, 1);
  dispatch_points(in.data, "bone_decompose_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* xp = in.data.const_data_ptr<scalar_t>();
    scalar_t* up = unit.mutable_data_ptr<scalar_t>();
    scalar_t* lp = length.mutable_data_ptr<scalar_t>();
    const int64_t *bp = in.tree.bone_parent.data(), *bc = in.tree.bone_child.data();
    const acc_t e = static_cast<acc_t>(eps);
    auto scratch = [&] { return BoneArrays<acc_t, Dc>(NB); };
    for_each_pose(in.B, 1.8 * J * Dc, scratch, [&](int64_t n, BoneArrays<acc_t, Dc>& a) {
      gather_bones<scalar_t, acc_t, Dc>(xp + n * J * Dc, bp, bc, NB, a);
      normalize_bones<acc_t, Dc>(a, NB, e);
      scalar_t* un = up + n * NB * Dc;
      for (int64_t k = 0; k < NB; ++k) {
        for (int d = 0; d < Dc; ++d) un[k * Dc + d] = static_cast<scalar_t>(a.b[d][k]);
        lp[n * NB + k] = static_cast<scalar_t>(a.len[k]);
      }
    });
  });
  return {unit, length};
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
    const Tree& t = in.tree;
    const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data();
    const int64_t *own = t.joint_bone.data(), *co = t.child_offset.data(), *cb = t.child_bone.data();
    const acc_t e = static_cast<acc_t>(eps);
    auto scratch = [&] { return BoneArrays<acc_t, Dc>(NB); };
    for_each_pose(in.B, 5.3 * J * Dc, scratch, [&](int64_t n, BoneArrays<acc_t, Dc>& a) {
      gather_bones<scalar_t, acc_t, Dc>(xp + n * J * Dc, bp, bc, NB, a);
      for (int64_t k = 0; k < NB; ++k) {
        for (int d = 0; d < Dc; ++d) a.g[d][k] = gup ? acc_t(gup[(n * NB + k) * Dc + d]) : acc_t(0);
        a.gl[k] = glp ? acc_t(glp[n * NB + k]) : acc_t(0);
      }
      if (gup && glp) {
        bone_gradients<acc_t, Dc, true, true>(a, NB, e);
      } else if (gup) {
        bone_gradients<acc_t, Dc, true, false>(a, NB, e);
      } else {
        bone_gradients<acc_t, Dc, false, true>(a, NB, e);
      }
      // Chain through the bone vectors as kcs_forward_backward does (a gather per joint).
      scalar_t* on = op + n * J * Dc;
      for (int64_t j = 0; j < J; ++j) {
        for (int d = 0; d < Dc; ++d) {
          acc_t s = own[j] >= 0 ? -a.g[d][own[j]] : acc_t(0);
          for (int64_t i = co[j]; i < co[j + 1]; ++i) s += a.g[d][cb[i]];
          on[j * Dc + d] = static_cast<scalar_t>(s);
        }
      }
    });
  });
  return out;
}

// Bones in topological order as flat offsets (joint * D, bone * D), so the
// sequential sweeps of kcs_inverse and its backward read three arrays in order.
struct TopoOffsets {
  std::vector<int64_t> child, parent, bone;
  TopoOffsets(const Tree& t, int64_t D) {
    for (const int64_t k : t.topo_bones) {
      child.push_back(t.bone_child[k] * D);
      parent.push_back(t.bone_parent[k] * D);
      bone.push_back(k * D);
    }
  }
};

// ---- kcs_inverse ----------------------------------------------------------------
// x[root] = root (or 0), then x[child] = x[parent] - bone in topological order.

at::Tensor kcs_inverse_cpu(const at::Tensor& bones_, c10::IntArrayRef parents,
                           const std::optional<at::Tensor>& root_) {
  const KcsInput in = kcs_input(bones_, "bones", parents, Rows::Bones);
  const int64_t J = in.J, NB = in.NB;
  const at::Tensor root = optional_input(root_, "root", in.data, "bones", in.shape(1, in.D),
                                         " ([..., 1, D] with the batch dims of bones)");
  at::Tensor out = in.empty(J, in.D);
  dispatch_points(in.data, "kcs_inverse_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* bptr = in.data.const_data_ptr<scalar_t>();
    const scalar_t* rptr = root.defined() ? root.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const TopoOffsets topo(in.tree, Dc);
    const int64_t r = in.tree.root;
    auto scratch = [&] { return std::vector<acc_t>(J * Dc); };
    for_each_pose(in.B, 1.4 * J * Dc, scratch, [&](int64_t n, std::vector<acc_t>& acc) {
      const scalar_t* bn = bptr + n * NB * Dc;
      for (int d = 0; d < Dc; ++d) acc[r * Dc + d] = rptr ? acc_t(rptr[n * Dc + d]) : acc_t(0);
      for (int64_t i = 0; i < NB; ++i) {
        const int64_t c = topo.child[i], p = topo.parent[i], k = topo.bone[i];
        for (int d = 0; d < Dc; ++d) acc[c + d] = acc[p + d] - acc_t(bn[k + d]);
      }
      std::copy(acc.begin(), acc.end(), op + n * J * Dc);
    });
  });
  return out;
}

// Adjoint: grad_bones[k] = -(sum of grad_x over the subtree below bone k),
// grad_root = sum of grad_x over all joints; one reverse-topological sweep.
std::tuple<at::Tensor, at::Tensor> kcs_inverse_backward_cpu(const at::Tensor& g_, c10::IntArrayRef parents) {
  const KcsInput in = kcs_input(g_, "grad_x", parents, Rows::Joints);
  const int64_t J = in.J, NB = in.NB;
  at::Tensor grad_bones = in.empty(NB, in.D);
  at::Tensor grad_root = in.empty(1, in.D);
  dispatch_points(in.data, "kcs_inverse_backward_cpu", [&](auto tag, auto dim) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int Dc = decltype(dim)::value;
    const scalar_t* gp = in.data.const_data_ptr<scalar_t>();
    scalar_t* gbp = grad_bones.mutable_data_ptr<scalar_t>();
    scalar_t* grp = grad_root.mutable_data_ptr<scalar_t>();
    const TopoOffsets topo(in.tree, Dc);
    const int64_t r = in.tree.root;
    auto scratch = [&] { return std::vector<acc_t>(J * Dc); };
    for_each_pose(in.B, 1.8 * J * Dc, scratch, [&](int64_t n, std::vector<acc_t>& acc) {
      const scalar_t* gn = gp + n * J * Dc;
      scalar_t* gbn = gbp + n * NB * Dc;
      for (int64_t i = 0; i < J * Dc; ++i) acc[i] = acc_t(gn[i]);
      for (int64_t i = NB - 1; i >= 0; --i) {
        const int64_t c = topo.child[i], p = topo.parent[i], k = topo.bone[i];
        for (int d = 0; d < Dc; ++d) {
          const acc_t sub = acc[c + d];
          gbn[k + d] = static_cast<scalar_t>(-sub);
          acc[p + d] += sub;
        }
      }
      for (int d = 0; d < Dc; ++d) grp[n * Dc + d] = static_cast<scalar_t>(acc[r * Dc + d]);
    });
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
}

}  // namespace fastsmall
