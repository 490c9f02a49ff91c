"""fastsmall's fused ops: differentiable, torch.compile-able wrappers of torch.ops.fastsmall.*.

Each op takes ``backend=None | "cpp" | "triton" | "reference"`` (see ._dispatch).
"""
from .bn_act_dropout import bn_act_dropout, bn_act_dropout_layer, bn_act_dropout_seed, bn_act_dropout_sequential
from .distribution_align import DistAlignOutput, distribution_align, masked_cross_entropy, softmax_batch_mean
from .kcs import bone_decompose, kcs_forward, kcs_inverse
from .ke_reinit import KELS, WELS, ke_reinit_, masked_mul_
from .part_kcs_gram import part_kcs_gram
from .running_distribution import DistAlign

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse", "part_kcs_gram", "ke_reinit_", "masked_mul_",
           "KELS", "WELS", "distribution_align", "softmax_batch_mean", "masked_cross_entropy", "DistAlign",
           "DistAlignOutput", "bn_act_dropout", "bn_act_dropout_seed",
           "bn_act_dropout_layer", "bn_act_dropout_sequential"]
