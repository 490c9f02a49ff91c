"""Plain-PyTorch references for every fastsmall op, one module per op family.

These define what the ops compute: tests compare every backend with them and
benchmarks use them as the eager and ``torch.compile`` baselines. They are
differentiable through ordinary autograd. float16/bfloat16 inputs are computed
in float32 and returned in their own dtype, as the kernels do
(fastsmall._checks.compute_dtype). A skeleton argument is a Skeleton or a parent
list, so each reference also has the signature of its registered op.
"""
from .bn_act_dropout import bn_act_dropout, dropout_keep_mask
from .distribution_align import (DIST_ALIGN_EPS, distribution_align, distribution_align_target,
                                 masked_cross_entropy, softmax_batch_mean)
from .kcs import bone_decompose, kcs_forward, kcs_inverse
from .ke_reinit import ke_draws, ke_keep_mask, ke_reinit_, ke_uniform_bits, masked_mul_
from .part_kcs_gram import part_kcs_gram

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse", "part_kcs_gram",
           "ke_uniform_bits", "ke_keep_mask", "ke_draws", "ke_reinit_", "masked_mul_",
           "distribution_align", "softmax_batch_mean", "masked_cross_entropy", "distribution_align_target",
           "DIST_ALIGN_EPS", "bn_act_dropout", "dropout_keep_mask"]
