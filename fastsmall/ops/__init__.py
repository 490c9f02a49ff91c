"""fastsmall's fused ops: differentiable, torch.compile-able wrappers of torch.ops.fastsmall.*.

Each op takes ``backend=None | "cpp" | "triton" | "reference"`` (see ._backend).
"""
from .kcs import bone_decompose, kcs_forward, kcs_inverse

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse"]

# ---- KE re-initialisation / DSD masking (ke-reinit branch) -----------------------------
from .ke_reinit import KELS, WELS, ke_reinit_, masked_mul_  # noqa: E402

__all__ += ["ke_reinit_", "masked_mul_", "KELS", "WELS"]
# ---- end KE re-initialisation / DSD masking ---------------------------------------------
