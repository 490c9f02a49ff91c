// The fastsmall operator library: one schema per op, defined once here.
//
// Kernels are registered per device elsewhere, as in pytorch/extension-cpp:
//   CPU   -> csrc/cpu/<op family>_cpu.cpp (TORCH_LIBRARY_IMPL(fastsmall, CPU, m))
//   CUDA  -> Triton launchers in fastsmall/kernels/<op family>.py (torch.library.register_kernel)
//   Meta  -> fakes in fastsmall/ops/<op family>.py (torch.library.register_fake)
// and autograd kernels in csrc/autograd.cpp (C++, the ops called at small batches) or, for the
// others, registered from Python with torch.library.register_autograd,
// calling the dedicated *_backward ops below (never the reference).
//
// A skeleton is passed as its parent list (`int[] parents`): the op is
// self-contained, the CPU kernel needs no device tensors, and torch.compile
// bakes the list into the graph as a constant.
#include <torch/library.h>

TORCH_LIBRARY(fastsmall, m) {
  // ---- kinematic chain space (KCS) ------------------------------------------
  // x [..., J, D] -> bones [..., J-1, D], bone k = x[parent(k)] - x[child(k)].
  m.def("kcs_forward(Tensor x, int[] parents) -> Tensor");
  // .out overloads (kcs_forward, bone_decompose, kcs_inverse, part_kcs_gram): the same op writing
  // into given contiguous tensors of the output's shape and dtype (bulk use; no autograd). They
  // return nothing (an aliased return cannot be functionalised by torch.compile).
  m.def("kcs_forward.out(Tensor x, int[] parents, *, Tensor(a!) out) -> ()");
  // Adjoint of kcs_forward: grad_bones [..., J-1, D] -> grad_x [..., J, D].
  m.def("kcs_forward_backward(Tensor grad_bones, int[] parents) -> Tensor");
  // x [..., J, D] -> (unit [..., J-1, D], length [..., J-1, 1]).
  m.def("bone_decompose(Tensor x, int[] parents, float eps) -> (Tensor, Tensor)");
  m.def(
      "bone_decompose.out(Tensor x, int[] parents, float eps, *, Tensor(a!) unit, Tensor(b!) length) -> ()");
  m.def(
      "bone_decompose_backward(Tensor? grad_unit, Tensor? grad_length, Tensor x, int[] parents, "
      "float eps) -> Tensor");
  // bones [..., J-1, D] (+ optional root [..., 1, D]) -> x [..., J, D].
  m.def("kcs_inverse(Tensor bones, int[] parents, Tensor? root) -> Tensor");
  m.def("kcs_inverse.out(Tensor bones, int[] parents, Tensor? root, *, Tensor(a!) out) -> ()");
  // grad_x [..., J, D] -> (grad_bones [..., J-1, D], grad_root [..., 1, D]).
  m.def("kcs_inverse_backward(Tensor grad_x, int[] parents) -> (Tensor, Tensor)");

  // ---- part-aware KCS Gram matrices ---------------------------------------------
  // bones [..., NB, D]; parts given as concatenated bone lists (part_bones) and
  // their lengths (part_sizes). compact=false: PoseAug's layout [..., P, NB*NB]
  // (the masked Gram of each part, flattened row-major); compact=true: only each
  // part's n_p x n_p block, concatenated [..., sum n_p^2].
  m.def("part_kcs_gram(Tensor bones, int[] part_bones, int[] part_sizes, bool compact) -> Tensor");
  m.def(
      "part_kcs_gram.out(Tensor bones, int[] part_bones, int[] part_sizes, bool compact, *, Tensor(a!) out) -> ()");
  m.def(
      "part_kcs_gram_backward(Tensor grad, Tensor bones, int[] part_bones, int[] part_sizes, bool compact) "
      "-> Tensor");

  // ---- KE re-initialisation / DSD masking -----------------------------------
  // In place over a list of tensors (one call for a whole model). Masks, one
  // per tensor, exactly one kind each: a bool tensor in masks[i]; KELS
  // W[:kels_out[i], :kels_in[i]] kept (kels_out[i] != -1); WELS Bernoulli
  // (wels_rate[i]) regenerated from wels_seed[i] (wels_rate[i] != -1.0).
  // Unused entries are None / -1 / -1.0 / any. fastsmall/masks.py defines
  // the counter-based RNG and the initialisers.
  // tensors[i] = where(keep, tensors[i], draw(seed, generation, i, element; init)),
  // init in {"torch_default", "kaiming_normal", "zero"}.
  m.def(
      "ke_reinit_(Tensor(a!)[] tensors, Tensor?[] masks, int[] kels_out, int[] kels_in, "
      "float[] wels_rate, int[] wels_seed, int seed, int generation, str init) -> ()");
  // tensors[i] *= keep (DSD's sparse phase: pruned weights become w * 0).
  m.def(
      "masked_mul_(Tensor(a!)[] tensors, Tensor?[] masks, int[] kels_out, int[] kels_in, "
      "float[] wels_rate, int[] wels_seed) -> ()");

  // ---- distribution alignment (FixMatch / CReST+ pseudo-labels) --------------
  // Kernels: csrc/cpu/distribution_align_cpu.cpp,
  // fastsmall/kernels/distribution_align.py; wrappers: fastsmall/ops/distribution_align.py.
  // logits [B, C], prior [C], running [C] -> (aligned probs [B, C] ([B, 0] unless return_probs),
  // pseudo_label [B] int64, mask [B] bool, batch mean of softmax(logits) [C] in the compute dtype).
  // The outputs are targets: no gradient flows through this op.
  m.def(
      "distribution_align(Tensor logits, Tensor prior, Tensor running, float temperature, float threshold, "
      "float eps, bool return_probs) -> (Tensor, Tensor, Tensor, Tensor)");
  // logits [B, C] -> batch mean of softmax(logits) [C] (for USB's EMA, updated before aligning).
  m.def("softmax_batch_mean(Tensor logits) -> Tensor");
  // logits [B, C], target [B] int64, mask [B] bool/float -> sum_i mask_i * CE_i / B (0-dim).
  m.def("masked_cross_entropy(Tensor logits, Tensor target, Tensor mask) -> Tensor");
  // grad (0-dim) -> grad_logits [B, C].
  m.def("masked_cross_entropy_backward(Tensor grad, Tensor logits, Tensor target, Tensor mask) -> Tensor");

  // ---- MLP block (SimpleBaseline / VideoPose3D layers) -----------------------
  // Kernels: csrc/cpu/bn_act_dropout_cpu.cpp, fastsmall/kernels/bn_act_dropout.py;
  // wrapper: fastsmall/ops/bn_act_dropout.py; definition: fastsmall/reference/bn_act_dropout.py.
  // y [N, C] -> (residual + dropout_p(leaky_relu(batch_norm(y))) [N, C], mean [C], var [C]):
  // batch statistics when mean/var are None (biased var), else the given ones; the dropout
  // mask is the counter-based draw of each element keyed by seed (int64, one element), never
  // stored. mean/var outputs (compute dtype) are the statistics used, for the running update.
  m.def(
      "bn_act_dropout(Tensor y, Tensor? weight, Tensor? bias, Tensor? mean, Tensor? var, Tensor? residual, "
      "Tensor seed, float eps, float negative_slope, float p) -> (Tensor, Tensor, Tensor)");
  // -> (grad_y [N, C], grad_weight [C], grad_bias [C]) (the mask regenerated from seed).
  m.def(
      "bn_act_dropout_backward(Tensor grad, Tensor y, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
      "Tensor seed, bool batch_stats, float eps, float negative_slope, float p) -> (Tensor, Tensor, Tensor)");
}
