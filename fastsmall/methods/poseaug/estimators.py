"""Single-frame 2D-to-3D pose estimators used by PoseAug (CVPR 2021).

Every estimator maps ``x2d [B, J, 2]`` (normalised screen coordinates) to ``[B, J, 3]``:
a root-relative 3D pose in metres, as PoseAug's released baselines do. ``J`` comes from
the skeleton (default :meth:`Skeleton.h36m16`), so the models work for any kinematic tree.

Defaults are the hyper-parameters PoseAug's released code builds each model with
(``function_baseline/model_pos_preparation.py`` with the command lines of its ``TRAIN.md``),
not the defaults of the original papers where those differ:

=================  ==========================================================  =============
model              released configuration                                      params (J=16)
=================  ==========================================================  =============
SimpleBaseline     linear 1024, 2 residual stages, BN, ReLU, dropout 0.25,     4,288,557
                   Kaiming-normal Linear weights (``init_weights``)
VideoPose3D        single frame (filter widths [1]*5: 4 residual blocks of      8,485,933
                   1x1 convs = linear layers), 1024 channels, BN momentum 0.1,
                   dropout 0.25, bias-free hidden layers
SemGCN             hid 128, 4 residual blocks, learnable edge weights on the     267,343
                   skeleton adjacency + self-loops, dropout 0, no non-local
=================  ==========================================================  =============

SimpleBaseline and VideoPose3D regress the ``J - 1`` non-root joints and put the root at the
origin; SemGCN regresses all ``J`` joints (its root output is learnt, not forced to zero, as
released). The evaluation metrics subtract the root from predictions anyway.

ST-GCN (the fourth PoseAug baseline) is not implemented here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...skeleton import Skeleton

__all__ = ["SimpleBaseline", "VideoPose3D", "SemGCN", "SemGraphConv", "GraphNonLocal", "build_estimator",
           "ESTIMATORS", "check_input_2d", "skeleton_adjacency"]


def check_input_2d(x2d: torch.Tensor, num_joints: int, name: str = "x2d") -> None:
    """Raise a clear error unless ``x2d`` is a float tensor of shape ``[B, num_joints, 2]``."""
    if not isinstance(x2d, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, {num_joints}, 2], got {type(x2d).__name__}")
    if x2d.dim() != 3 or x2d.shape[1] != num_joints or x2d.shape[2] != 2:
        raise ValueError(f"{name} must have shape [B, {num_joints}, 2] (batch, joints, xy), got {tuple(x2d.shape)}")
    if not x2d.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x2d.dtype}")


class _Estimator(nn.Module):
    """Shared plumbing: the skeleton, input checks and root padding."""

    def __init__(self, skeleton: Skeleton | None):
        super().__init__()
        self.skeleton = skeleton if skeleton is not None else Skeleton.h36m16()
        self.num_joints = self.skeleton.num_joints
        non_root = [j for j in range(self.num_joints) if j != self.skeleton.root]
        # buffer so that .to(device) moves it; not saved (it is derived from the skeleton)
        self.register_buffer("_non_root", torch.tensor(non_root, dtype=torch.long), persistent=False)

    def _insert_root(self, y: torch.Tensor) -> torch.Tensor:
        """``y [B, (J-1)*3]`` (non-root joints in index order) -> ``[B, J, 3]`` with the root at 0.

        Released code prepends three zeros, which assumes the root is joint 0; scattering
        into the non-root slots gives the same result there and works for any root index.
        """
        B = y.shape[0]
        out = y.new_zeros(B, self.num_joints, 3)
        return out.index_copy(1, self._non_root, y.view(B, self.num_joints - 1, 3))


# ---------------------------------------------------------------------------------------------
# SimpleBaseline (Martinez et al., ICCV 2017)
# ---------------------------------------------------------------------------------------------
class _ResidualLinear(nn.Module):
    """Two (Linear -> BN -> ReLU -> Dropout) layers with an identity skip."""

    def __init__(self, size: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(size, size), nn.BatchNorm1d(size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(size, size), nn.BatchNorm1d(size), nn.ReLU(), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SimpleBaseline(_Estimator):
    """Martinez et al.'s fully connected baseline, as PoseAug's ``LinearModel``.

    ``linear_size=1024, num_stages=2, dropout=0.25`` (PoseAug trains it with ``--stages 2``
    and the default ``--dropout 0.25``; the original paper used 0.5).
    """

    def __init__(self, skeleton: Skeleton | None = None, linear_size: int = 1024, num_stages: int = 2,
                 dropout: float = 0.25):
        super().__init__(skeleton)
        J = self.num_joints
        self.inp = nn.Sequential(nn.Linear(J * 2, linear_size), nn.BatchNorm1d(linear_size), nn.ReLU(),
                                 nn.Dropout(dropout))
        self.stages = nn.Sequential(*[_ResidualLinear(linear_size, dropout) for _ in range(num_stages)])
        self.out = nn.Linear(linear_size, (J - 1) * 3)
        # PoseAug's model_pos_preparation applies init_weights: Kaiming-normal Linear weights
        # (biases keep PyTorch's default init)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        check_input_2d(x2d, self.num_joints)
        y = self.out(self.stages(self.inp(x2d.reshape(x2d.shape[0], -1))))
        return self._insert_root(y)


# ---------------------------------------------------------------------------------------------
# VideoPose3D, single-frame (Pavllo et al., CVPR 2019; PoseAug's TemporalModelOptimized1f)
# ---------------------------------------------------------------------------------------------
class VideoPose3D(_Estimator):
    """VideoPose3D's temporal model on one frame: every convolution has width 1, so each is a
    linear layer over the flattened pose.

    PoseAug builds ``TemporalModelOptimized1f(filter_widths=[1] * (stages + 1))`` with the
    default ``--stages 4``: an expand layer then ``num_blocks=4`` residual blocks of two
    bias-free linear layers (BN momentum 0.1, ReLU, dropout 0.25), then a linear ``shrink``.
    Weights match the released Conv1d weights up to the trailing kernel dimension of size 1.
    """

    def __init__(self, skeleton: Skeleton | None = None, channels: int = 1024, num_blocks: int = 4,
                 dropout: float = 0.25, bn_momentum: float = 0.1):
        super().__init__(skeleton)
        J = self.num_joints

        def layer(n_in: int) -> nn.Sequential:
            # convolutions feeding a BN carry no bias in VideoPose3D (BN has its own shift)
            return nn.Sequential(nn.Linear(n_in, channels, bias=False), nn.BatchNorm1d(channels, momentum=bn_momentum),
                                 nn.ReLU(), nn.Dropout(dropout))

        self.expand = layer(J * 2)
        self.blocks = nn.ModuleList([nn.Sequential(layer(channels), layer(channels)) for _ in range(num_blocks)])
        self.shrink = nn.Linear(channels, (J - 1) * 3)

    def set_bn_momentum(self, momentum: float) -> None:
        """VideoPose3D's training decays BN momentum over epochs; PoseAug keeps 0.1."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.momentum = momentum

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        check_input_2d(x2d, self.num_joints)
        x = self.expand(x2d.reshape(x2d.shape[0], -1))
        for block in self.blocks:
            x = x + block(x)  # the residual is added after the second layer's dropout, as released
        return self._insert_root(self.shrink(x))


# ---------------------------------------------------------------------------------------------
# SemGCN (Zhao et al., CVPR 2019)
# ---------------------------------------------------------------------------------------------
def skeleton_adjacency(skeleton: Skeleton) -> torch.Tensor:
    """Boolean ``[J, J]`` adjacency of the kinematic tree (both directions) with self-loops.

    SemGCN row-normalises this matrix, but its graph convolution only uses the non-zero
    pattern (edge weights are learnt and soft-maxed), so the pattern is all we need.
    """
    J = skeleton.num_joints
    adj = torch.eye(J, dtype=torch.bool)
    for j, p in enumerate(skeleton.parents):
        if p >= 0:
            adj[j, p] = adj[p, j] = True
    return adj


class SemGraphConv(nn.Module):
    """Semantic graph convolution: ``out_i = a_ii W0 h_i + sum_{j != i} a_ij W1 h_j + b``.

    ``a_i.`` is a softmax over the learnt logits ``e`` of row ``i``'s edges (the self-loop
    included); absent edges get weight 0. ``e`` starts at 1 (uniform weights), ``W`` is
    Xavier-uniform with gain 1.414 and the bias uniform in ``+-1/sqrt(out)``, as released.
    ``e`` lists edges in row-major order of the adjacency, as the released ``m.nonzero()``.
    """

    def __init__(self, in_features: int, out_features: int, adj: torch.Tensor, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        adj = adj.bool()
        rows, cols = adj.nonzero(as_tuple=True)
        self.register_buffer("mask", adj, persistent=False)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.W = nn.Parameter(torch.empty(2, in_features, out_features))
        nn.init.xavier_uniform_(self.W, gain=1.414)
        self.e = nn.Parameter(torch.ones(1, rows.numel()))
        if bias:
            bound = 1.0 / math.sqrt(out_features)
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def edge_weights(self) -> torch.Tensor:
        """The ``[J, J]`` row-stochastic weight matrix."""
        J = self.mask.shape[0]
        logits = self.e.new_full((J, J), float("-inf")).index_put((self.rows, self.cols), self.e[0])
        return torch.softmax(logits, dim=1)  # every row has its self-loop, so no row is all -inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, J, in]
        A = self.edge_weights()
        diag = torch.diagonal(A)
        off = A - torch.diag_embed(diag)
        out = diag[:, None] * (x @ self.W[0]) + off @ (x @ self.W[1])
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, edges={self.rows.numel()}"


class _GraphConvBN(nn.Module):
    """SemGraphConv -> BN over channels -> ReLU -> Dropout (released order; its extra ReLU
    after the dropout is a no-op on non-negative values, so it is omitted)."""

    def __init__(self, adj: torch.Tensor, n_in: int, n_out: int, dropout: float):
        super().__init__()
        self.gconv = SemGraphConv(n_in, n_out, adj)
        self.bn = nn.BatchNorm1d(n_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.gconv(x).transpose(1, 2)).transpose(1, 2)
        return self.dropout(F.relu(x))


class _ResGraphConv(nn.Module):
    def __init__(self, adj: torch.Tensor, dim: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(_GraphConvBN(adj, dim, dim, dropout), _GraphConvBN(adj, dim, dim, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GraphNonLocal(nn.Module):
    """SemGCN's non-local block (concatenation form) over joints, ``[B, J, C] -> [B, J, C]``.

    Joints are reordered into ``nodes_group`` (equal-size groups); keys and values are
    max-pooled over each group (``sub_sample = group size``). Pairwise affinity is
    ``relu(w . [theta_i; phi_j]) / N``, computed as ``relu(w_t . theta_i + w_p . phi_j)``
    (the same value without materialising the concatenation). The output projection's BN
    starts at zero, so the block starts as the identity. ``nodes_group=None`` uses every
    joint on its own (no pooling), which works for any skeleton.
    """

    def __init__(self, channels: int, num_joints: int, nodes_group: Sequence[Sequence[int]] | None = None):
        super().__init__()
        if nodes_group is None:
            nodes_group = [[j] for j in range(num_joints)]
        order = [j for group in nodes_group for j in group]
        sizes = {len(g) for g in nodes_group}
        if sorted(order) != list(range(num_joints)) or len(sizes) != 1:
            raise ValueError(f"nodes_group must split joints 0..{num_joints - 1} into groups of equal size, "
                             f"got {[list(g) for g in nodes_group]}")
        self.group_size = sizes.pop()
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("restore", torch.argsort(torch.tensor(order)), persistent=False)
        inter = channels // 2
        self.inter = inter
        self.g = nn.Linear(channels, inter)
        self.theta = nn.Linear(channels, inter)
        self.phi = nn.Linear(channels, inter)
        self.concat_project = nn.Linear(2 * inter, 1, bias=False)
        self.W = nn.Linear(inter, channels)
        self.W_bn = nn.BatchNorm1d(channels)
        for lin in (self.g, self.theta, self.phi, self.concat_project, self.W):
            nn.init.kaiming_normal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.W_bn.weight)
        nn.init.zeros_(self.W_bn.bias)

    def _pool(self, y: torch.Tensor) -> torch.Tensor:  # [B, J, C] -> [B, J / group_size, C]
        if self.group_size == 1:
            return y
        B, J, C = y.shape
        return y.view(B, J // self.group_size, self.group_size, C).amax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.order]
        theta, phi, g = self.theta(x), self._pool(self.phi(x)), self._pool(self.g(x))
        w_t, w_p = self.concat_project.weight[0, : self.inter], self.concat_project.weight[0, self.inter:]
        f = F.relu((theta @ w_t)[:, :, None] + (phi @ w_p)[:, None, :]) / phi.shape[1]  # [B, J, N]
        y = self.W_bn(self.W(f @ g).transpose(1, 2)).transpose(1, 2)
        return (x + y)[:, self.restore]


class SemGCN(_Estimator):
    """Semantic GCN: input graph conv to ``hid_dim``, ``num_blocks`` residual blocks of two
    graph convs, output graph conv to 3D, all on the skeleton graph with learnt edge weights.

    PoseAug's defaults: ``hid_dim=128, num_blocks=4`` (``--stages 4``), ``dropout=0``
    (``--dropout 0`` in its TRAIN.md), ``non_local=False`` (PoseAug builds SemGCN with
    ``nodes_group=None``). ``non_local=True`` adds SemGCN's non-local block after the input
    layer and after every residual block, grouping joints by ``nodes_group``.
    """

    def __init__(self, skeleton: Skeleton | None = None, hid_dim: int = 128, num_blocks: int = 4,
                 dropout: float = 0.0, non_local: bool = False,
                 nodes_group: Sequence[Sequence[int]] | None = None):
        super().__init__(skeleton)
        adj = skeleton_adjacency(self.skeleton)
        J = self.num_joints

        def nl() -> list[nn.Module]:
            return [GraphNonLocal(hid_dim, J, nodes_group)] if non_local else []

        self.gconv_input = nn.Sequential(_GraphConvBN(adj, 2, hid_dim, dropout), *nl())
        layers: list[nn.Module] = []
        for _ in range(num_blocks):
            layers += [_ResGraphConv(adj, hid_dim, dropout), *nl()]
        self.gconv_layers = nn.Sequential(*layers)
        self.gconv_output = SemGraphConv(hid_dim, 3, adj)

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        check_input_2d(x2d, self.num_joints)
        return self.gconv_output(self.gconv_layers(self.gconv_input(x2d)))


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------
ESTIMATORS: tuple[str, ...] = ("simple_baseline", "videopose", "semgcn")
_ALIASES = {"simple_baseline": "simple_baseline", "mlp": "simple_baseline", "videopose": "videopose",
            "semgcn": "semgcn", "gcn": "semgcn"}
_CLASSES = {"simple_baseline": SimpleBaseline, "videopose": VideoPose3D, "semgcn": SemGCN}


def build_estimator(name: str, skeleton: Skeleton | None = None, **overrides) -> nn.Module:
    """Build an estimator by name with the released defaults; ``overrides`` go to its constructor.

    Names: ``simple_baseline`` (alias ``mlp``), ``videopose``, ``semgcn`` (alias ``gcn``).
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown estimator {name!r}; valid names: {sorted(_ALIASES)} "
                         f"(canonical: {list(ESTIMATORS)}; 'stgcn' is not implemented)")
    return _CLASSES[key](skeleton, **overrides)
