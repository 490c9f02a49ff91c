"""CReST / CReST+ (Wei et al., CVPR 2021) on FixMatch.

>>> from fastsmall.methods import crest
>>> summary = crest.train(crest.Config(generations=3, plus=True, out="runs/crest"))
"""
from .config import Config
from .train import train

__all__ = ["Config", "train"]
