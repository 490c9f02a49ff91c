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
STGCN              single frame: graph-conv blocks 128, 128, 256 on 4 spatial    3,627,843
                   partitions, max-pool to 5 body parts, 2 blocks of 512 on the  (released,
                   part graph, global + part features copied back to joints,     17-joint
                   embedded-Gaussian non-local, released per-layer dropouts      graph:
                   (``--dropout -1``)                                            3,627,847)
=================  ==========================================================  =============

SimpleBaseline and VideoPose3D regress the ``J - 1`` non-root joints and put the root at the
origin; SemGCN and STGCN regress all ``J`` joints (their root output is learnt, not forced to
zero, as released). The evaluation metrics subtract the root from predictions anyway.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ...skeleton import Skeleton

__all__ = ["SimpleBaseline", "VideoPose3D", "SemGCN", "SemGraphConv", "GraphNonLocal", "STGCN", "build_estimator",
           "ESTIMATORS", "check_input_2d", "skeleton_adjacency", "stgcn_graph", "spatial_partitions"]


def check_input_2d(x2d: torch.Tensor, num_joints: int, name: str = "x2d") -> None:
    """Raise a clear error unless ``x2d`` is a float tensor of shape ``[B, num_joints, 2]``."""
    if not isinstance(x2d, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, {num_joints}, 2], got {type(x2d).__name__}")
    if x2d.dim() != 3 or x2d.shape[1] != num_joints or x2d.shape[2] != 2:
        raise ValueError(f"{name} must have shape [B, {num_joints}, 2] (batch, joints, xy), got {tuple(x2d.shape)}")
    if not x2d.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x2d.dtype}")


IMPLS = ("fused", "official")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _layer(layer: nn.Sequential, x: torch.Tensor, fused: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``[residual +] layer(x)`` for ``layer = Sequential(Linear, BatchNorm1d, ReLU, Dropout)``.

    Fused: the Linear (an aten GEMM), then one ``fastsmall.ops.bn_act_dropout`` for BatchNorm,
    ReLU, Dropout and the residual, its dropout mask regenerated in the backward (no
    ``bernoulli_``, no mask tensor). Same modules, parameters and state dict either way.
    """
    if not fused:
        out = layer(x)
        return out if residual is None else residual + out
    return ops.bn_act_dropout_sequential(layer, x, residual)


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

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if not fused:
            return x + self.body(x)
        return _layer(self.body[4:], _layer(self.body[:4], x, True), True, residual=x)


class SimpleBaseline(_Estimator):
    """Martinez et al.'s fully connected baseline, as PoseAug's ``LinearModel``.

    ``linear_size=1024, num_stages=2, dropout=0.25`` (PoseAug trains it with ``--stages 2``
    and the default ``--dropout 0.25``; the original paper used 0.5).
    """

    def __init__(self, skeleton: Skeleton | None = None, linear_size: int = 1024, num_stages: int = 2,
                 dropout: float = 0.25, impl: str = "fused"):
        super().__init__(skeleton)
        self.impl = _check_impl(impl)
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
        fused = self.impl == "fused"
        x = _layer(self.inp, x2d.reshape(x2d.shape[0], -1), fused)
        for stage in self.stages:
            x = stage(x, fused)
        return self._insert_root(self.out(x))


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
                 dropout: float = 0.25, bn_momentum: float = 0.1, impl: str = "fused"):
        super().__init__(skeleton)
        self.impl = _check_impl(impl)
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
        fused = self.impl == "fused"
        x = _layer(self.expand, x2d.reshape(x2d.shape[0], -1), fused)
        for block in self.blocks:
            # the residual is added after the second layer's dropout, as released
            x = _layer(block[1], _layer(block[0], x, fused), fused, residual=x)
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

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if not fused:
            return x + self.body(x)
        return _layer(self.body[4:], _layer(self.body[:4], x, True), True, residual=x)


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
# ST-GCN, single-frame (Cai et al., ICCV 2019; PoseAug's WrapSTGCN / st_gcn_single_frame_test)
# ---------------------------------------------------------------------------------------------
def _tree_distances(skeleton: Skeleton) -> list[list[int]]:
    """``[J][J]`` hop distances along the kinematic tree (breadth-first from every joint)."""
    J = skeleton.num_joints
    nbrs: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(skeleton.parents):
        if p >= 0:
            nbrs[j].append(p)
            nbrs[p].append(j)
    dist = []
    for s in range(J):
        d = [-1] * J
        d[s] = 0
        queue = [s]
        for u in queue:  # grows while iterating
            for v in nbrs[u]:
                if d[v] < 0:
                    d[v] = d[u] + 1
                    queue.append(v)
        dist.append(d)
    return dist


def stgcn_graph(skeleton: Skeleton) -> tuple[int, tuple[tuple[int, ...], ...], tuple[tuple[int, int], ...]]:
    """The skeleton facts ST-GCN's graphs are built from: ``(center, groups, symmetric_pairs)``.

    * ``center``: the joint the spatial partitions measure distances from. The released
      ``hm36_gt`` layout hard-codes the Spine; here it is the tree's centre (the joint whose
      farthest joint is nearest), which is the Spine on H36M; between two centres the one
      nearer the root wins, then the lower index.
    * ``groups``: the body parts ST-GCN max-pools to. A *limb* is a chain (a subtree with no
      branching) hanging off a joint that has several children, and limbs come in mirror
      pairs: the only two sibling chains of one length. Pairs are listed first, those that
      branch farther from the root first, the chain whose first joint's name starts with
      "L" first within a pair (else the lower index); every other joint forms the last,
      central group. On H36M this gives the released groups exactly, in the released order
      (left arm, right arm, left leg, right leg, torso with head). A skeleton without mirror
      pairs (e.g. a single chain) falls back to one group holding every joint: the pooled
      branch then sees one node, a global feature broadcast back to all joints.
    * ``symmetric_pairs``: corresponding joints of paired limbs (hip-hip, knee-knee, ...):
      the released layout's ``sym_base`` links, on H36M the same six pairs.
    """
    J, parents = skeleton.num_joints, skeleton.parents
    dist = _tree_distances(skeleton)
    depth = dist[skeleton.root]
    center = min(range(J), key=lambda j: (max(dist[j]), depth[j], j))
    children: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(parents):
        if p >= 0:
            children[p].append(j)

    def chain(j: int) -> list[int] | None:  # the subtree of j if it is a path, top to bottom
        out = [j]
        while len(children[out[-1]]) == 1:
            out.append(children[out[-1]][0])
        return out if not children[out[-1]] else None

    pairs: list[tuple[int, list[int], list[int]]] = []  # (branching joint, first chain, second chain)
    for b in range(J):
        if len(children[b]) < 2:
            continue
        by_length: dict[int, list[list[int]]] = {}
        for c in children[b]:
            ch = chain(c)
            if ch is not None:
                by_length.setdefault(len(ch), []).append(ch)
        for chains in by_length.values():
            if len(chains) == 2:
                first, second = sorted(chains, key=lambda ch: ch[0])
                if skeleton.names[second[0]][:1].upper() == "L" and skeleton.names[first[0]][:1].upper() == "R":
                    first, second = second, first
                pairs.append((b, first, second))
    pairs.sort(key=lambda t: (-depth[t[0]], t[0]))
    limbs = [tuple(ch) for _, first, second in pairs for ch in (first, second)]
    in_limb = {j for limb in limbs for j in limb}
    body = tuple(j for j in range(J) if j not in in_limb)
    sym = tuple((a, b) for _, first, second in pairs for a, b in zip(first, second))
    return center, tuple(limbs) + (body,), sym


def spatial_partitions(num_nodes: int, edges: Sequence[tuple[int, int]], symmetric: Sequence[tuple[int, int]],
                       center_distance: Sequence[int]) -> torch.Tensor:
    """ST-GCN's "spatial" partitioning with symmetric links: ``[4, V, V]``, ``A[k, v, w]`` the
    weight of node ``v``'s feature in node ``w``'s output for kernel ``k``.

    The graph is ``edges`` plus ``symmetric`` links plus self-loops, column-normalised (each
    node averages over its neighbourhood, the released ``normalize_digraph``); its entries are
    split into k=0 the node itself, k=1 neighbours farther from the centre (centrifugal), k=2
    neighbours nearer the centre (centripetal), k=3 the mirror partner. The released code also
    builds a same-distance class at hop 1 and drops it; on a tree with mirror links no
    neighbour is at the same distance, so nothing is dropped here either.
    """
    V = num_nodes
    adj = torch.eye(V, dtype=torch.float64)
    for a, b in list(edges) + list(symmetric):
        adj[a, b] = adj[b, a] = 1.0
    norm = adj / adj.sum(0, keepdim=True)
    is_sym = torch.zeros(V, V, dtype=torch.bool)
    for a, b in symmetric:
        is_sym[a, b] = is_sym[b, a] = True
    d = torch.tensor(list(center_distance), dtype=torch.float64)
    off = ~torch.eye(V, dtype=torch.bool)
    farther = d[:, None] > d[None, :]  # farther[v, w]: v is farther from the centre than w
    nearer = d[:, None] < d[None, :]
    A = torch.stack([torch.diag(torch.diagonal(norm)),
                     norm * (off & ~is_sym & farther),
                     norm * (off & ~is_sym & nearer),
                     norm * is_sym])
    return A.float()


class _STGCNBlock(nn.Module):
    """The released ``st_gcn`` unit on one frame, ``[B, C_in, V] -> [B, C_out, V]``:
    graph conv (a 1x1 conv to ``K * C_out`` channels, then each kernel's features are
    propagated with its partition) -> BN -> ReLU -> Dropout -> 1x1 conv -> BN -> Dropout,
    plus a residual (none, identity, or 1x1 conv + BN when the width changes), then ReLU.

    The released "temporal" conv has kernel (1, 1) in the single-frame model, so it is a
    pointwise conv here too. ``edge_importance`` multiplies the partitions by a learnt mask
    (Yan et al.'s ST-GCN); the released single-frame model has none.
    """

    def __init__(self, n_in: int, n_out: int, A: torch.Tensor, dropout: float, residual: bool = True,
                 edge_importance: bool = False):
        super().__init__()
        self.register_buffer("A", A, persistent=False)
        self.K, self.n_out = A.shape[0], n_out
        self.gcn = nn.Conv1d(n_in, n_out * self.K, 1)
        self.tcn = nn.Sequential(nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Conv1d(n_out, n_out, 1), nn.BatchNorm1d(n_out), nn.Dropout(dropout))
        if not residual:
            self.residual = None
        elif n_in == n_out:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv1d(n_in, n_out, 1), nn.BatchNorm1d(n_out))
        self.importance = nn.Parameter(torch.ones_like(A)) if edge_importance else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A = self.A if self.importance is None else self.A * self.importance
        B, _, V = x.shape
        y = torch.einsum("bkcv,kvw->bcw", self.gcn(x).view(B, self.K, self.n_out, V), A)
        y = self.tcn(y)
        if self.residual is not None:
            y = y + self.residual(x)
        return F.relu(y)


class _GaussianNonLocal(nn.Module):
    """Embedded-Gaussian non-local block over the joints, ``[B, C, V] -> [B, C, V]``:
    ``x + BN(W softmax_w(theta_v . phi_w) g_w)`` with ``C / 2`` inner channels, no
    sub-sampling (the released ``st_gcn_NONLocalBlock2D(sub_sample=False)``). The output BN
    starts at zero, so the block starts as the identity, as released.
    """

    def __init__(self, channels: int):
        super().__init__()
        inter = max(channels // 2, 1)
        self.g = nn.Conv1d(channels, inter, 1)
        self.theta = nn.Conv1d(channels, inter, 1)
        self.phi = nn.Conv1d(channels, inter, 1)
        self.W = nn.Conv1d(inter, channels, 1)
        self.W_bn = nn.BatchNorm1d(channels)
        nn.init.zeros_(self.W_bn.weight)
        nn.init.zeros_(self.W_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.softmax(self.theta(x).transpose(1, 2) @ self.phi(x), dim=-1)  # [B, V, V]
        y = (f @ self.g(x).transpose(1, 2)).transpose(1, 2)  # [B, inter, V]
        return x + self.W_bn(self.W(y))


class STGCN(_Estimator):
    """The single-frame ST-GCN PoseAug uses as its fourth baseline (Cai et al.'s model, run on
    one frame; PoseAug's ``WrapSTGCN``).

    Joint graph: ``data_bn`` over the 2J inputs, then graph-conv blocks of widths ``channels``
    (released 128, 128, 256; the first without residual) on the skeleton with 4 spatial
    partitions (self / centrifugal / centripetal / mirror partner, :func:`spatial_partitions`).
    Features are max-pooled to the body parts of :func:`stgcn_graph` and two blocks of width
    ``pool_channels`` (512) run on the part graph (limbs linked to the central group, mirror
    limbs linked). A global max over parts -> 1x1 conv + BN + ReLU + Dropout, concatenated to
    every part -> 1x1 conv to ``channels[-1]`` + BN + ReLU + Dropout, is copied back to the
    joints of each part and concatenated to the joint features; an embedded-Gaussian non-local
    block over the joints and a 1x1 conv (after dropout) give the 3D joints. All J joints are
    regressed (the root too, as released).

    ``dropout=None`` is the released default setting (``--dropout -1``, used to pretrain
    ST-GCN in PoseAug's TRAIN.md): 0.05 in the blocks, 0.25 after the global conv, 0.1 after
    the part conv and before the output conv. A number uses that rate everywhere (PoseAug's
    augmentation stage builds ST-GCN with ``--dropout 0``). The released ``data_bn`` passes
    its momentum 0.1 in BatchNorm's ``eps`` slot, so its eps is 0.1; that is kept.

    Simplified from the released code, with the same function on one frame: the time and
    person axes (T = M = 1) are dropped, so tensors are ``[B, C, J]`` and the released
    ``(1, 1)`` Conv2d/BatchNorm2d layers are Conv1d/BatchNorm1d with the same parameters up to
    a trailing kernel dimension of 1. The released wrapper maps PoseAug's 16 joints to its
    hard-coded 17-joint H36M graph by inserting a Neck/Nose joint at the Thorax-Head midpoint
    and drops it from the output; here the graph is the skeleton's own tree (built from
    ``sk.parents``), so on ``h36m16`` the Thorax links to the Head directly and ``data_bn``
    has 2 x 16 channels (4 parameters fewer than released); on ``h36m17`` the graph, groups
    and parameter count are the released ones. The part groups and mirror links, hard-coded in
    the released layout, are derived by :func:`stgcn_graph`. ``edge_importance=True`` adds
    Yan et al.'s learnt edge-importance masks (one per block); the released model has none.
    """

    def __init__(self, skeleton: Skeleton | None = None, channels: Sequence[int] = (128, 128, 256),
                 pool_channels: int = 512, dropout: float | None = None, edge_importance: bool = False):
        super().__init__(skeleton)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1 or pool_channels < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths and pool_channels positive, "
                             f"got channels={list(channels)}, pool_channels={pool_channels}")
        if dropout is None:
            p_block, p_global, p_part, p_out = 0.05, 0.25, 0.1, 0.1
        else:
            p_block = p_global = p_part = p_out = float(dropout)
        J = self.num_joints
        center, groups, sym = stgcn_graph(self.skeleton)
        self.groups = groups
        dist = _tree_distances(self.skeleton)[center]
        bones = [(j, p) for j, p in enumerate(self.skeleton.parents) if p >= 0]
        A = spatial_partitions(J, bones, sym, dist)
        # part graph: limbs (listed in mirror pairs) around the central group, the last node
        P = len(groups)
        A_part = spatial_partitions(P, [(i, P - 1) for i in range(P - 1)],
                                    [(i, i + 1) for i in range(0, P - 1, 2)], [1] * (P - 1) + [0])

        # eps=0.1: the released BatchNorm1d(2J, self.momentum) sets eps, not momentum
        self.data_bn = nn.BatchNorm1d(J * 2, eps=0.1)
        widths = (2,) + channels
        self.blocks = nn.ModuleList([
            _STGCNBlock(widths[i], widths[i + 1], A, p_block, residual=i > 0, edge_importance=edge_importance)
            for i in range(len(channels))])
        self.part_blocks = nn.ModuleList([
            _STGCNBlock(channels[-1], pool_channels, A_part, p_block, edge_importance=edge_importance),
            _STGCNBlock(pool_channels, pool_channels, A_part, p_block, edge_importance=edge_importance)])
        self.global_conv = nn.Sequential(nn.Conv1d(pool_channels, pool_channels, 1), nn.BatchNorm1d(pool_channels),
                                         nn.ReLU(), nn.Dropout(p_global))
        self.part_conv = nn.Sequential(nn.Conv1d(2 * pool_channels, channels[-1], 1), nn.BatchNorm1d(channels[-1]),
                                       nn.ReLU(), nn.Dropout(p_part))
        self.non_local = _GaussianNonLocal(2 * channels[-1])
        self.out = nn.Sequential(nn.Dropout(p_out), nn.Conv1d(2 * channels[-1], 3, 1))

        # max-pooling gathers [P, longest group] joint indices; shorter groups repeat their first
        # joint, which leaves the max (and, summed over the copies, its gradient) unchanged
        longest = max(len(g) for g in groups)
        pool_index = [list(g) + [g[0]] * (longest - len(g)) for g in groups]
        part_of = [0] * J
        for i, g in enumerate(groups):
            for j in g:
                part_of[j] = i
        self.register_buffer("pool_index", torch.tensor(pool_index, dtype=torch.long), persistent=False)
        self.register_buffer("part_of", torch.tensor(part_of, dtype=torch.long), persistent=False)

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        check_input_2d(x2d, self.num_joints)
        B, J = x2d.shape[:2]
        # the released data_bn normalises the (joint, xy) channels, joint-major, as reshape gives
        x = self.data_bn(x2d.reshape(B, J * 2)).view(B, J, 2).transpose(1, 2)  # [B, 2, J]
        for block in self.blocks:
            x = block(x)
        parts = x[:, :, self.pool_index].amax(dim=-1)  # [B, C, P]
        for block in self.part_blocks:
            parts = block(parts)
        glob = self.global_conv(parts.amax(dim=-1, keepdim=True))  # [B, pool, 1]
        parts = self.part_conv(torch.cat([glob.expand_as(parts), parts], dim=1))  # [B, C, P]
        x = torch.cat([x, parts[:, :, self.part_of]], dim=1)  # [B, 2C, J]
        return self.out(self.non_local(x)).transpose(1, 2)  # [B, J, 3]


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------
ESTIMATORS: tuple[str, ...] = ("simple_baseline", "videopose", "semgcn", "stgcn")
_ALIASES = {"simple_baseline": "simple_baseline", "mlp": "simple_baseline", "videopose": "videopose",
            "semgcn": "semgcn", "gcn": "semgcn", "stgcn": "stgcn", "st_gcn": "stgcn"}
_CLASSES = {"simple_baseline": SimpleBaseline, "videopose": VideoPose3D, "semgcn": SemGCN, "stgcn": STGCN}


_FUSABLE = ("simple_baseline", "videopose")  # built of Linear -> BatchNorm1d -> ReLU -> Dropout layers


def build_estimator(name: str, skeleton: Skeleton | None = None, *, impl: str = "fused", **overrides) -> nn.Module:
    """Build an estimator by name with the released defaults; ``overrides`` go to its constructor.

    Names: ``simple_baseline`` (alias ``mlp``), ``videopose``, ``semgcn`` (alias ``gcn``),
    ``stgcn`` (alias ``st_gcn``). ``impl="fused"`` runs SimpleBaseline's and VideoPose3D's
    BatchNorm -> ReLU -> Dropout (-> residual) tails as one ``fastsmall.ops.bn_act_dropout``
    (dropout masks from fastsmall's counter-based RNG); ``"official"`` runs the released modules
    one by one (``torch.bernoulli`` masks). Same parameters and state dicts; SemGCN and ST-GCN
    are the same in both.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown estimator {name!r}; valid names: {sorted(_ALIASES)} "
                         f"(canonical: {list(ESTIMATORS)})")
    _check_impl(impl)
    if key in _FUSABLE:
        overrides["impl"] = impl
    return _CLASSES[key](skeleton, **overrides)
