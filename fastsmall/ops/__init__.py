"""fastsmall's fused ops: differentiable, torch.compile-able wrappers of torch.ops.fastsmall.*.

Each op takes ``backend=None | "cpp" | "triton" | "reference"`` (see ._backend).
"""
from .kcs import bone_decompose, kcs_forward, kcs_inverse

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]

# ---- distribution alignment (section added by branch dist-align) ----
from .distribution_align import (  # noqa: E402
    DistAlign, DistAlignOutput, distribution_align, masked_cross_entropy, softmax_batch_mean,
)

__all__ += ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "DistAlign", "DistAlignOutput"]
