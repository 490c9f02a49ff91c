// CPU kernels of the part-aware KCS Gram: part_kcs_gram and its backward.
// Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Only the dot products inside each part are computed, each once (the blocks
// are symmetric); the masked layout's zeros are written with one memset per pose. The cost per
// pose given to for_each_pose (ns, measured: pose_loop.h) is per dot product (E * D) and per
// output (S), which covers both layouts.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../parts.h"
#include "pose_loop.h"

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

at::Tensor part_kcs_gram_cpu(const at::Tensor& bones_, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                             bool compact) {
  const GramInput in = gram_input(bones_, part_bones, part_sizes, compact, nullptr);
  const GramEntries& e = in.e;
  const int64_t NB = in.NB, D = in.D, E = in.E, S = in.S;
  std::vector<int64_t> shape = batch_shape(in.bones);
  if (compact) {
    shape.push_back(S);
  } else {
    shape.push_back(static_cast<int64_t>(part_sizes.size()));
    shape.push_back(NB * NB);
  }
  at::Tensor out = at::empty(shape, in.bones.options());
  dispatch_floating(in.bones.scalar_type(), "part_kcs_gram_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = in.bones.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_each_pose(in.B, 0.8 * E * D + 0.3 * S, [&](int64_t n) {
      const scalar_t* u = bp + n * NB * D;
      scalar_t* on = op + n * S;
      if (!compact) std::memset(static_cast<void*>(on), 0, sizeof(scalar_t) * S);
      for (int64_t k = 0; k < E; ++k) {
        const scalar_t* ui = u + e.i[k] * D;
        const scalar_t* uj = u + e.j[k] * D;
        acc_t dot = acc_t(ui[0]) * acc_t(uj[0]) + acc_t(ui[1]) * acc_t(uj[1]);
        if (D == 3) dot += acc_t(ui[2]) * acc_t(uj[2]);
        on[e.pos1[k]] = static_cast<scalar_t>(dot);
        on[e.pos2[k]] = static_cast<scalar_t>(dot);
      }
    });
  });
  return out;
}

// d<u_i, u_j>: grad_u_i += g_ij u_j, grad_u_j += g_ij u_i with g_ij = G'[pos1] + G'[pos2]
// (both mirrored outputs); on the diagonal pos1 == pos2 gives the factor 2 of d|u_i|^2.
at::Tensor part_kcs_gram_backward_cpu(const at::Tensor& grad_, const at::Tensor& bones_,
                                      c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes, bool compact) {
  const GramInput in = gram_input(bones_, part_bones, part_sizes, compact, &grad_);
  const GramEntries& e = in.e;
  const int64_t NB = in.NB, D = in.D, E = in.E, S = in.S;
  TORCH_CHECK(grad_.numel() == in.B * S, "fastsmall: grad must have ", S, " entries per pose (the shape of ",
              "part_kcs_gram's output), got shape ", grad_.sizes());
  const at::Tensor grad = grad_.contiguous();
  at::Tensor out = at::empty(in.bones.sizes(), in.bones.options());
  dispatch_floating(in.bones.scalar_type(), "part_kcs_gram_backward_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = in.bones.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    auto scratch = [&] { return std::vector<acc_t>(NB * D); };
    for_each_pose(in.B, 3.5 * E * D + 0.7 * S, scratch, [&](int64_t n, std::vector<acc_t>& acc) {
      const scalar_t* u = bp + n * NB * D;
      const scalar_t* g = gp + n * S;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t k = 0; k < E; ++k) {
        const int64_t i = e.i[k], j = e.j[k];
        const acc_t gij = acc_t(g[e.pos1[k]]) + acc_t(g[e.pos2[k]]);
        for (int64_t d = 0; d < D; ++d) acc[i * D + d] += gij * acc_t(u[j * D + d]);
        if (i != j)
          for (int64_t d = 0; d < D; ++d) acc[j * D + d] += gij * acc_t(u[i * D + d]);
      }
      scalar_t* on = op + n * NB * D;
      for (int64_t k = 0; k < NB * D; ++k) on[k] = static_cast<scalar_t>(acc[k]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("part_kcs_gram", &part_kcs_gram_cpu);
  m.impl("part_kcs_gram_backward", &part_kcs_gram_backward_cpu);
}

}  // namespace fastsmall
