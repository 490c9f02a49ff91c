"""fastsmall: fused PyTorch ops and training pipelines for learning from small data.

>>> import fastsmall as fs
>>> sk = fs.Skeleton.h36m16()
>>> bones = fs.ops.kcs_forward(x, sk)
"""
from . import _extension
from . import ops, reference
from .skeleton import Skeleton

__version__ = "0.1.0"
__all__ = ["Skeleton", "ops", "reference", "__version__"]
