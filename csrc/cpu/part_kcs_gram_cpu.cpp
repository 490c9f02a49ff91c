// CPU kernels of the part-aware KCS Gram: part_kcs_gram and its backward.
// Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py.
//
// Only the dot products inside each part are computed, each once (the blocks
// are symmetric); the masked layout's zeros are written with one memset per pose.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../parts.h"

namespace fastsmall {
namespace {

at::Tensor part_kcs_gram_cpu(const at::Tensor& bones_, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                             bool compact) {
  TORCH_CHECK(bones_.dim() >= 2, "fastsmall: bones must have shape [..., NB, D], got ", bones_.sizes());
  const int64_t NB = bones_.size(-2);
  check_points(bones_, "bones", NB, "bones");
  const GramEntries e = make_gram_entries(part_bones, part_sizes, NB, compact);
  const at::Tensor bones = bones_.contiguous();
  const int64_t B = batch_numel(bones), D = bones.size(-1), E = static_cast<int64_t>(e.i.size());
  std::vector<int64_t> shape(bones.sizes().begin(), bones.sizes().end() - 2);
  if (compact) {
    shape.push_back(e.out_size);
  } else {
    shape.push_back(static_cast<int64_t>(part_sizes.size()));
    shape.push_back(NB * NB);
  }
  at::Tensor out = at::empty(shape, bones.options());
  const int64_t S = e.out_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bones.scalar_type(), "part_kcs_gram_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = bones.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain(S + E * D), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
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
      }
    });
  });
  return out;
}

// d<u_i, u_j>: grad_u_i += g_ij u_j, grad_u_j += g_ij u_i with g_ij = G'[pos1] + G'[pos2]
// (both mirrored outputs); on the diagonal pos1 == pos2 gives the factor 2 of d|u_i|^2.
at::Tensor part_kcs_gram_backward_cpu(const at::Tensor& grad_, const at::Tensor& bones_,
                                      c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes, bool compact) {
  TORCH_CHECK(bones_.dim() >= 2, "fastsmall: bones must have shape [..., NB, D], got ", bones_.sizes());
  const int64_t NB = bones_.size(-2);
  check_points(bones_, "bones", NB, "bones");
  check_like(grad_, "grad", bones_, "bones");
  const GramEntries e = make_gram_entries(part_bones, part_sizes, NB, compact);
  const at::Tensor bones = bones_.contiguous();
  const int64_t B = batch_numel(bones), D = bones.size(-1), E = static_cast<int64_t>(e.i.size());
  const int64_t S = e.out_size;
  TORCH_CHECK(grad_.numel() == B * S, "fastsmall: grad must have ", S, " entries per pose (the shape of ",
              "part_kcs_gram's output), got shape ", grad_.sizes());
  const at::Tensor grad = grad_.contiguous();
  at::Tensor out = at::empty(bones.sizes(), bones.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bones.scalar_type(), "part_kcs_gram_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = bones.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain(2 * E * D), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(NB * D);
      for (int64_t n = begin; n < end; ++n) {
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
      }
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
