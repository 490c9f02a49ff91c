// CPU kernels of the KCS op family: kcs_forward, bone_decompose, kcs_inverse and
// their backward ops. Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Layout: every tensor is viewed as [B, rows, D] (made contiguous), one pose per
// iteration of an OpenMP-parallel loop over the batch (at::parallel_for, built
// with -fopenmp). D (2 or 3) is a template parameter so the innermost loops
// unroll. float16/bfloat16 are computed in float32 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../tree.h"

namespace fastsmall {
namespace {

// Poses per parallel chunk: about at::internal::GRAIN_SIZE scalars of work.
int64_t grain(int64_t scalars_per_pose) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, scalars_per_pose));
}

template <typename F>
void dispatch_dim(int64_t D, F&& f) {
  if (D == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 3>{});
  }
}

int64_t batch_numel(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t i = 0; i < t.dim() - 2; ++i) n *= t.size(i);
  return n;
}

// ---- kcs_forward --------------------------------------------------------------

at::Tensor kcs_forward_cpu(const at::Tensor& x_, c10::IntArrayRef parents) {
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(x_, "x", J, "joints");
  const at::Tensor x = x_.contiguous();
  const int64_t B = batch_numel(x), D = x.size(-1);
  at::Tensor out = at::empty(with_tail(batch_shape(x), NB, D), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kcs_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data();
      at::parallel_for(0, B, grain(2 * J * Dc), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* xn = xp + n * J * Dc;
          scalar_t* on = op + n * NB * Dc;
          for (int64_t k = 0; k < NB; ++k) {
            const scalar_t* a = xn + bp[k] * Dc;
            const scalar_t* c = xn + bc[k] * Dc;
            for (int d = 0; d < Dc; ++d) on[k * Dc + d] = static_cast<scalar_t>(acc_t(a[d]) - acc_t(c[d]));
          }
        }
      });
    });
  });
  return out;
}

at::Tensor kcs_forward_backward_cpu(const at::Tensor& g_, c10::IntArrayRef parents) {
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(g_, "grad_bones", NB, "bones");
  const at::Tensor g = g_.contiguous();
  const int64_t B = batch_numel(g), D = g.size(-1);
  at::Tensor out = at::empty(with_tail(batch_shape(g), J, D), g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "kcs_forward_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data();
      at::parallel_for(0, B, grain(2 * J * Dc), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(J * Dc);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* gn = gp + n * NB * Dc;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t k = 0; k < NB; ++k) {
            for (int d = 0; d < Dc; ++d) {
              const acc_t v = acc_t(gn[k * Dc + d]);
              acc[bp[k] * Dc + d] += v;
              acc[bc[k] * Dc + d] -= v;
            }
          }
          std::copy(acc.begin(), acc.end(), op + n * J * Dc);
        }
      });
    });
  });
  return out;
}

// ---- bone_decompose -----------------------------------------------------------
// length = ||b||, unit = b / length (eps == 0, PoseAug) or b / max(length, eps).

std::tuple<at::Tensor, at::Tensor> bone_decompose_cpu(const at::Tensor& x_, c10::IntArrayRef parents,
                                                       double eps) {
  TORCH_CHECK(eps >= 0, "fastsmall: eps must be >= 0, got ", eps);
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(x_, "x", J, "joints");
  const at::Tensor x = x_.contiguous();
  const int64_t B = batch_numel(x), D = x.size(-1);
  at::Tensor unit = at::empty(with_tail(batch_shape(x), NB, D), x.options());
  at::Tensor length = at::empty(with_tail(batch_shape(x), NB, 1), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bone_decompose_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* up = unit.mutable_data_ptr<scalar_t>();
      scalar_t* lp = length.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data();
      const acc_t e = static_cast<acc_t>(eps);
      at::parallel_for(0, B, grain(3 * J * Dc), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* xn = xp + n * J * Dc;
          for (int64_t k = 0; k < NB; ++k) {
            acc_t b[Dc];
            acc_t sq = 0;
            for (int d = 0; d < Dc; ++d) {
              b[d] = acc_t(xn[bp[k] * Dc + d]) - acc_t(xn[bc[k] * Dc + d]);
              sq += b[d] * b[d];
            }
            const acc_t len = std::sqrt(sq);
            const acc_t denom = e > 0 ? std::max(len, e) : len;
            for (int d = 0; d < Dc; ++d) up[(n * NB + k) * Dc + d] = static_cast<scalar_t>(b[d] / denom);
            lp[n * NB + k] = static_cast<scalar_t>(len);
          }
        }
      });
    });
  });
  return {unit, length};
}

at::Tensor bone_decompose_backward_cpu(const std::optional<at::Tensor>& grad_unit_,
                                       const std::optional<at::Tensor>& grad_length_, const at::Tensor& x_,
                                       c10::IntArrayRef parents, double eps) {
  TORCH_CHECK(eps >= 0, "fastsmall: eps must be >= 0, got ", eps);
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(x_, "x", J, "joints");
  const at::Tensor x = x_.contiguous();
  const int64_t B = batch_numel(x), D = x.size(-1);
  const bool has_gu = grad_unit_.has_value() && grad_unit_->defined();
  const bool has_gl = grad_length_.has_value() && grad_length_->defined();
  at::Tensor gu, gl;
  if (has_gu) {
    check_like(*grad_unit_, "grad_unit", x, "x");
    TORCH_CHECK(grad_unit_->sizes() == at::IntArrayRef(with_tail(batch_shape(x), NB, D)),
                "fastsmall: grad_unit must have shape ", at::IntArrayRef(with_tail(batch_shape(x), NB, D)),
                ", got ", grad_unit_->sizes());
    gu = grad_unit_->contiguous();
  }
  if (has_gl) {
    check_like(*grad_length_, "grad_length", x, "x");
    TORCH_CHECK(grad_length_->sizes() == at::IntArrayRef(with_tail(batch_shape(x), NB, 1)),
                "fastsmall: grad_length must have shape ", at::IntArrayRef(with_tail(batch_shape(x), NB, 1)),
                ", got ", grad_length_->sizes());
    gl = grad_length_->contiguous();
  }
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bone_decompose_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* gup = has_gu ? gu.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* glp = has_gl ? gl.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data();
      const acc_t e = static_cast<acc_t>(eps);
      at::parallel_for(0, B, grain(4 * J * Dc), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(J * Dc);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* xn = xp + n * J * Dc;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t k = 0; k < NB; ++k) {
            acc_t b[Dc], gb[Dc];
            acc_t sq = 0;
            for (int d = 0; d < Dc; ++d) {
              b[d] = acc_t(xn[bp[k] * Dc + d]) - acc_t(xn[bc[k] * Dc + d]);
              sq += b[d] * b[d];
              gb[d] = 0;
            }
            const acc_t len = std::sqrt(sq);
            if (gup) {
              // unit = b / den, den = max(len, eps): d unit = g / den - (b.g) b / (den^2 len)
              // where the clamp passes the gradient (len >= eps, as torch.clamp_min).
              const acc_t den = e > 0 ? std::max(len, e) : len;
              const scalar_t* g = gup + (n * NB + k) * Dc;
              acc_t dot = 0;
              for (int d = 0; d < Dc; ++d) dot += b[d] * acc_t(g[d]);
              const acc_t radial = len >= e ? dot / (den * den * len) : acc_t(0);
              for (int d = 0; d < Dc; ++d) gb[d] += acc_t(g[d]) / den - radial * b[d];
            }
            if (glp && len > 0) {  // d||b|| = b / ||b||; 0 at b = 0 as torch.linalg.vector_norm
              const acc_t s = acc_t(glp[n * NB + k]) / len;
              for (int d = 0; d < Dc; ++d) gb[d] += s * b[d];
            }
            for (int d = 0; d < Dc; ++d) {
              acc[bp[k] * Dc + d] += gb[d];
              acc[bc[k] * Dc + d] -= gb[d];
            }
          }
          std::copy(acc.begin(), acc.end(), op + n * J * Dc);
        }
      });
    });
  });
  return out;
}

// ---- kcs_inverse ----------------------------------------------------------------
// x[root] = root (or 0), then x[child] = x[parent] - bone in topological order.

at::Tensor kcs_inverse_cpu(const at::Tensor& bones_, c10::IntArrayRef parents,
                           const std::optional<at::Tensor>& root_) {
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(bones_, "bones", NB, "bones");
  const at::Tensor bones = bones_.contiguous();
  const int64_t B = batch_numel(bones), D = bones.size(-1);
  const bool has_root = root_.has_value() && root_->defined();
  at::Tensor root;
  if (has_root) {
    check_like(*root_, "root", bones, "bones");
    const auto expected = with_tail(batch_shape(bones), 1, D);
    TORCH_CHECK(root_->sizes() == at::IntArrayRef(expected), "fastsmall: root must have shape ",
                at::IntArrayRef(expected), " ([..., 1, D] with the batch dims of bones), got ", root_->sizes());
    root = root_->contiguous();
  }
  at::Tensor out = at::empty(with_tail(batch_shape(bones), J, D), bones.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bones.scalar_type(), "kcs_inverse_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* bptr = bones.const_data_ptr<scalar_t>();
      const scalar_t* rptr = has_root ? root.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data(), *topo = t.topo_bones.data();
      const int64_t r = t.root;
      at::parallel_for(0, B, grain(2 * J * Dc), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(J * Dc);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* bn = bptr + n * NB * Dc;
          for (int d = 0; d < Dc; ++d) acc[r * Dc + d] = rptr ? acc_t(rptr[n * Dc + d]) : acc_t(0);
          for (int64_t i = 0; i < NB; ++i) {
            const int64_t k = topo[i];
            for (int d = 0; d < Dc; ++d) acc[bc[k] * Dc + d] = acc[bp[k] * Dc + d] - acc_t(bn[k * Dc + d]);
          }
          std::copy(acc.begin(), acc.end(), op + n * J * Dc);
        }
      });
    });
  });
  return out;
}

// Adjoint: grad_bones[k] = -(sum of grad_x over the subtree below bone k),
// grad_root = sum of grad_x over all joints; one reverse-topological sweep.
std::tuple<at::Tensor, at::Tensor> kcs_inverse_backward_cpu(const at::Tensor& g_, c10::IntArrayRef parents) {
  const Tree t = make_tree(parents);
  const int64_t J = t.num_joints, NB = t.num_bones();
  check_points(g_, "grad_x", J, "joints");
  const at::Tensor g = g_.contiguous();
  const int64_t B = batch_numel(g), D = g.size(-1);
  at::Tensor grad_bones = at::empty(with_tail(batch_shape(g), NB, D), g.options());
  at::Tensor grad_root = at::empty(with_tail(batch_shape(g), 1, D), g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "kcs_inverse_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_dim(D, [&](auto dim) {
      constexpr int Dc = decltype(dim)::value;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* gbp = grad_bones.mutable_data_ptr<scalar_t>();
      scalar_t* grp = grad_root.mutable_data_ptr<scalar_t>();
      const int64_t *bp = t.bone_parent.data(), *bc = t.bone_child.data(), *topo = t.topo_bones.data();
      const int64_t r = t.root;
      at::parallel_for(0, B, grain(2 * J * Dc), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(J * Dc);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* gn = gp + n * J * Dc;
          for (int64_t i = 0; i < J * Dc; ++i) acc[i] = acc_t(gn[i]);
          for (int64_t i = NB - 1; i >= 0; --i) {
            const int64_t k = topo[i];
            for (int d = 0; d < Dc; ++d) {
              const acc_t sub = acc[bc[k] * Dc + d];
              gbp[(n * NB + k) * Dc + d] = static_cast<scalar_t>(-sub);
              acc[bp[k] * Dc + d] += sub;
            }
          }
          for (int d = 0; d < Dc; ++d) grp[n * Dc + d] = static_cast<scalar_t>(acc[r * Dc + d]);
        }
      });
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
