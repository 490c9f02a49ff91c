"""Procedurally generated h36m16 poses: no download, any number, reproducible.

Bones get nominal adult lengths (metres, scaled per subject) and directions that
are random perturbations of a standing rest pose, then poses are assembled with
``kcs_inverse``. Good enough to exercise and benchmark the ops; the PoseAug
pipeline brings its own, richer generator.
"""
from __future__ import annotations

import torch

from .ops import kcs_inverse
from .skeleton import Skeleton

# Nominal bone lengths of h36m16 (bone k ends at joint k+1), metres.
H36M16_BONE_LENGTHS = (0.13, 0.44, 0.45, 0.13, 0.44, 0.45, 0.23, 0.26, 0.18, 0.15, 0.28, 0.25, 0.15, 0.28, 0.25)
# Rest-pose directions of bone vectors x[parent] - x[child] (y up): a standing T-ish pose.
_REST = {
    0: (1, 0, 0), 1: (0, 1, 0), 2: (0, 1, 0), 3: (-1, 0, 0), 4: (0, 1, 0), 5: (0, 1, 0),
    6: (0, -1, 0), 7: (0, -1, 0), 8: (0, -1, 0), 9: (1, 0, 0), 10: (0, 1, 0), 11: (0, 1, 0),
    12: (-1, 0, 0), 13: (0, 1, 0), 14: (0, 1, 0),
}


def generate_h36m16(batch: int, *, spread: float = 0.5, generator: torch.Generator | None = None,
                    dtype=torch.float32, device="cpu") -> torch.Tensor:
    """``batch`` random root-relative poses ``[batch, 16, 3]`` in metres."""
    sk = Skeleton.h36m16()
    rest = torch.tensor([_REST[k] for k in range(sk.num_bones)], dtype=dtype, device=device)
    noise = torch.randn(batch, sk.num_bones, 3, generator=generator, dtype=dtype).to(device) * spread
    direction = torch.nn.functional.normalize(rest + noise, dim=-1)
    scale = 1 + 0.08 * torch.randn(batch, 1, 1, generator=generator, dtype=dtype).to(device)
    lengths = torch.tensor(H36M16_BONE_LENGTHS, dtype=dtype, device=device).view(1, -1, 1) * scale
    return kcs_inverse(direction * lengths, sk)
