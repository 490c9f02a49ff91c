"""Dense-Sparse-Dense training (Han et al., ICLR 2017), run as a Knowledge Evolution special case.

>>> from fastsmall.methods import dsd
>>> summary = dsd.train(dsd.Config(sparsity=0.3, out="runs/dsd"))

Building blocks (``masks``): ``magnitude_masks`` (per-layer magnitude pruning masks),
``apply_masks_`` (the sparse-phase step, one fused ``masked_mul_`` call).
"""
from .config import Config
from .masks import apply_masks_, magnitude_masks
from .train import train

__all__ = ["magnitude_masks", "apply_masks_", "Config", "train"]
