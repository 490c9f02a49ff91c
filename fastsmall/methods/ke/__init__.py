"""Knowledge Evolution (Taha et al., CVPR 2021): split a network into a fit and a reset
hypothesis, re-initialise the reset hypothesis every generation.

>>> from fastsmall.methods import ke
>>> summary = ke.train(ke.Config(split="kels", split_rate=0.5, generations=10, out="runs/ke"))
>>> slim = ke.extract_slim(model, 0.5)          # the fit hypothesis as a narrower network

Building blocks (``masks``): ``split_masks`` (KELS / WELS fit-hypothesis masks),
``reinitialize_`` (one fused re-initialisation call), ``prunable_layers``.
"""
from .config import Config, TrainConfig
from .masks import prunable_layers, reinitialize_, split_masks
from .slim import count_macs, count_params, extract_slim, slim_architecture
from .train import reset_hypothesis_, train

__all__ = ["split_masks", "reinitialize_", "prunable_layers", "Config", "TrainConfig", "train", "extract_slim",
           "slim_architecture", "count_params", "count_macs", "reset_hypothesis_"]
