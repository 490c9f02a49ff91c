"""CReST's official pseudo-label arithmetic (google-research/crest, FixMatch + distribution
alignment): what ``--impl official`` trains and the step benchmark times as the baseline.

fastsmall's op references (``fastsmall/reference/``) were written from exactly this code --
``p = softmax(z) * p_target / p_model``, renormalised, argmax and a confidence mask; the
masked cross-entropy over the whole unlabelled batch -- so the official path runs them
(``backend="reference"``): plain PyTorch, one op at a time, as the released code computes it.
"""
from __future__ import annotations

from .kernels import FusedPseudoLabels


class OfficialPseudoLabels(FusedPseudoLabels):
    backend = "reference"
