"""PoseAug's discriminators: 3D on part-aware KCS features, 2D on the projected pose.

``PartKCSDiscriminator`` (released ``Pos3dDiscriminator``): the pose's unit bone vectors,
one Gram matrix per body part, one "KCS path" MLP per part, one score per part.
Parameters are stored stacked over parts in the released layout (first layer reads the
part's full flattened ``NB x NB`` Gram), so released weights load with
:meth:`load_released_state_dict`.

``impl="fused"`` (``kernels.py``): one ``fastsmall.ops.bone_decompose`` and one compact
``fastsmall.ops.part_kcs_gram`` (only the ``n_p x n_p`` block of each part: the other
entries of the released masked Gram are zeros), and each path's first layer reads only
the weight rows of those entries (16-49 inputs instead of 225). The paths stay separate
GEMMs: on CPU, batching the five as ``baddbmm`` measured 1.5x slower at batch 2,048.
``impl="official"`` (``official.py``): the released arithmetic -- unit bones, back to a pose, bones again,
five full masked Grams, five separate MLPs. Same function, same parameters, same gradients.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...skeleton import Skeleton
from .augmentor import init_weights
from .kernels import ChosenKernels


class _LeakyReLUFromOutput(torch.autograd.Function):
    """``F.leaky_relu`` whose backward reads the saved *output*: ``g * (slope + (1 - slope) * pos)``
    with ``pos = clamp_min(sign(y), 0)``, 1 exactly where ``y > 0`` (i.e. ``x > 0``), else 0 -- the same
    gradient as F.leaky_relu's everywhere, x == 0 included (tested).

    Why: under torch.compile the backward of F.leaky_relu needs ``x > 0``, and AOT autograd saves it
    as a bool tensor; inductor's vectorized CPU store of a bool tensor is ~20x slower than a float
    store on the AVX2 machines measured (bench/inductor_leaky_relu.py), which made the compiled 3D
    discriminator step slower than eager. Here the output is saved (the next layer's matmul saves
    it anyway) and the mask is a float expression, recomputed inside the fused backward kernel."""

    @staticmethod
    def forward(x, slope):
        return F.leaky_relu(x, slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.slope = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        pos = torch.sign(y).clamp_min(0)
        return grad * (ctx.slope + (1 - ctx.slope) * pos), None


def leaky_relu(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """``F.leaky_relu`` (the released discriminators' activation); inside a compiled graph the
    form whose backward needs no bool mask (``_LeakyReLUFromOutput``), in eager PyTorch's kernel."""
    if torch.compiler.is_compiling():
        return _LeakyReLUFromOutput.apply(x, slope)
    return F.leaky_relu(x, slope)


def _kaiming(shape) -> torch.Tensor:
    """``[P, in, out]`` weights, each part as ``nn.init.kaiming_normal_`` on ``nn.Linear(in, out).weight``."""
    w = torch.empty(shape)
    for p in range(shape[0]):
        nn.init.kaiming_normal_(w[p].transpose(0, 1))  # fan-in = in, as for the [out, in] Linear weight
    return w


def _bias(parts: int, fan_in: int, out: int) -> torch.Tensor:
    bound = 1 / fan_in ** 0.5  # nn.Linear's default bias init
    return torch.empty(parts, 1, out).uniform_(-bound, bound)


class PartKCSDiscriminator(ChosenKernels, nn.Module):
    """``forward(poses [B, J, 3]) -> scores [B, P]`` (P = parts of the skeleton)."""

    def __init__(self, skeleton: Skeleton | None = None, *, channel: int = 256, channel_mid: int = 100,
                 impl: str = "fused"):
        super().__init__()
        self.impl = impl  # -> self.kernels (fused or official arithmetic), checked here
        self.skeleton = skeleton or Skeleton.h36m16()
        if not self.skeleton.parts:
            raise ValueError("the 3D discriminator needs a skeleton with parts (Skeleton(parents, parts={...}))")
        P, NB = len(self.skeleton.parts), self.skeleton.num_bones
        F_in = NB * NB
        # [P, in, out] weights (x @ W + b): part p's KCS path is kcs_layer_1..3, layer_last, layer_pred
        self.w1 = nn.Parameter(_kaiming((P, F_in, channel)))
        self.b1 = nn.Parameter(_bias(P, F_in, channel))
        self.w2 = nn.Parameter(_kaiming((P, channel, channel)))
        self.b2 = nn.Parameter(_bias(P, channel, channel))
        self.w3 = nn.Parameter(_kaiming((P, channel, channel)))
        self.b3 = nn.Parameter(_bias(P, channel, channel))
        self.w_last = nn.Parameter(_kaiming((P, channel, channel_mid)))
        self.b_last = nn.Parameter(_bias(P, channel, channel_mid))
        self.w_pred = nn.Parameter(_kaiming((P, channel_mid, 1)))
        self.b_pred = nn.Parameter(_bias(P, channel_mid, 1))
        # compact layout: part p's n_p x n_p block sits at columns [offset_p, offset_p + n_p^2) of
        # part_kcs_gram(..., "compact") and reads these rows of the part's first-layer weight
        self.block_sizes = [len(b) ** 2 for b in self.skeleton.part_bones]
        for p, bones in enumerate(self.skeleton.part_bones):
            rows = torch.tensor([bi * NB + bj for bi in bones for bj in bones], dtype=torch.int64)
            self.register_buffer(f"compact_rows_{p}", rows, persistent=False)

    def _path(self, p: int, features: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        """Part p's KCS path (released ``KCSpath``): ``[B, F] -> [B, 1]``."""
        psi = leaky_relu(F.linear(features, w1.t(), self.b1[p, 0]))
        d1 = leaky_relu(F.linear(psi, self.w2[p].t(), self.b2[p, 0]))
        d2 = F.linear(d1, self.w3[p].t(), self.b3[p, 0]) + psi
        y = leaky_relu(F.linear(d2, self.w_last[p].t(), self.b_last[p, 0]))
        return F.linear(y, self.w_pred[p].t(), self.b_pred[p, 0])

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        sk = self.skeleton
        if poses.dim() != 3 or poses.shape[1:] != (sk.num_joints, 3):
            raise ValueError(f"poses must have shape [B, {sk.num_joints}, 3], got {tuple(poses.shape)}")
        return self.kernels.part_scores(self, poses)

    # released checkpoints name the paths kcs_path_1..5 with nn.Linear layers
    _RELEASED = (("w1", "b1", "kcs_layer_1"), ("w2", "b2", "kcs_layer_2"), ("w3", "b3", "kcs_layer_3"),
                 ("w_last", "b_last", "layer_last"), ("w_pred", "b_pred", "layer_pred"))

    @torch.no_grad()
    def load_released_state_dict(self, state: dict) -> None:
        """Load a released ``Pos3dDiscriminator`` state dict (``kcs_path_{1..5}.*``)."""
        for w, b, layer in self._RELEASED:
            for p in range(len(self.skeleton.parts)):
                prefix = f"kcs_path_{p + 1}.{layer}"
                if f"{prefix}.weight" not in state:
                    raise KeyError(f"released 3D discriminator state has no {prefix}.weight")
                getattr(self, w)[p].copy_(state[f"{prefix}.weight"].t())
                getattr(self, b)[p, 0].copy_(state[f"{prefix}.bias"])

    def released_state_dict(self) -> dict:
        out = {}
        for w, b, layer in self._RELEASED:
            for p in range(len(self.skeleton.parts)):
                out[f"kcs_path_{p + 1}.{layer}.weight"] = getattr(self, w)[p].t().detach().clone()
                out[f"kcs_path_{p + 1}.{layer}.bias"] = getattr(self, b)[p, 0].detach().clone()
        return out


class Pose2DDiscriminator(nn.Module):
    """The released ``Pos2dDiscriminator``: an MLP with one residual, ``[B, J, 2] -> [B, 1]``."""

    def __init__(self, num_joints: int = 16, width: int = 100):
        super().__init__()
        self.num_joints = num_joints
        self.pose_layer_1 = nn.Linear(num_joints * 2, width)
        self.pose_layer_2 = nn.Linear(width, width)
        self.pose_layer_3 = nn.Linear(width, width)
        self.pose_layer_4 = nn.Linear(width, width)
        self.layer_last = nn.Linear(width, width)
        self.layer_pred = nn.Linear(width, 1)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.num_joints, 2):
            raise ValueError(f"x must have shape [B, {self.num_joints}, 2], got {tuple(x.shape)}")
        x = x.reshape(x.size(0), -1)
        d1 = leaky_relu(self.pose_layer_1(x))
        d2 = leaky_relu(self.pose_layer_2(d1))
        d3 = leaky_relu(self.pose_layer_3(d2) + d1)
        d4 = self.pose_layer_4(d3)
        return self.layer_pred(leaky_relu(self.layer_last(d4)))
