"""Kinematic trees: joints, bones and body parts.

Conventions (those of PoseAug's released code):

* joints are indexed 0..J-1 and exactly one joint is the root (``parents[root] == -1``);
* bone ``k`` ends at the ``k``-th non-root joint in index order, so for ``h36m16``
  bone ``i`` ends at joint ``i + 1``;
* a bone vector points from the child to the parent: ``x[parent] - x[child]``
  (PoseAug's ``get_BoneVecbypose3d``);
* parts are ordered lists of bone indices (PoseAug's part-aware discriminator).

The parent list need not be topologically ordered; the tables below are.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import torch

__all__ = ["Skeleton", "Tree", "tree_of", "device_table", "gram_entries", "part_table", "as_skeleton", "split_parts"]


@dataclass(frozen=True)
class Tree:
    """Index tables derived from a parent list (all tuples, hashable)."""

    parents: tuple[int, ...]
    root: int
    bone_parent: tuple[int, ...]  # [NB] parent joint of bone k
    bone_child: tuple[int, ...]  # [NB] child joint of bone k
    joint_bone: tuple[int, ...]  # [J] bone ending at joint j, -1 for the root
    topo_bones: tuple[int, ...]  # [NB] parents before children
    child_bones: tuple[tuple[int, ...], ...]  # [J] bones whose parent joint is j
    path_bones: tuple[tuple[int, ...], ...]  # [J] bones on the path root -> j
    subtree_joints: tuple[tuple[int, ...], ...]  # [NB] joints at or below the child of bone k

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_bones(self) -> int:
        return len(self.parents) - 1


@lru_cache(maxsize=256)
def tree_of(parents: tuple[int, ...]) -> Tree:
    """Validate a parent list and derive its tables; ValueError says what is wrong."""
    parents = tuple(parents)
    J = len(parents)
    if J == 0:
        raise ValueError("parents must list at least one joint, got an empty list")
    for j, p in enumerate(parents):
        if not isinstance(p, int) or isinstance(p, bool):
            raise ValueError(f"parents[{j}] must be an int, got {p!r}")
        if p != -1 and not 0 <= p < J:
            raise ValueError(f"parents[{j}] = {p} is out of range: expected -1 (root) or a joint index in [0, {J})")
        if p == j:
            raise ValueError(f"parents[{j}] = {j} makes joint {j} its own parent")
    roots = [j for j, p in enumerate(parents) if p == -1]
    if len(roots) != 1:
        raise ValueError(f"parents must have exactly one root (-1), found {len(roots)}: joints {roots}")
    root = roots[0]

    children: list[list[int]] = [[] for _ in range(J)]
    for j, p in enumerate(parents):
        if p != -1:
            children[p].append(j)
    order = [root]
    for j in order:  # breadth-first; grows while iterating
        order.extend(children[j])
    if len(order) != J:
        unreached = sorted(set(range(J)) - set(order))
        raise ValueError(f"parents contains a cycle: joints {unreached} are not reachable from the root {root}")

    non_root = [j for j in range(J) if j != root]
    joint_bone = [-1] * J
    for k, j in enumerate(non_root):
        joint_bone[j] = k
    path: list[tuple[int, ...]] = [()] * J
    for j in order[1:]:
        path[j] = path[parents[j]] + (joint_bone[j],)
    subtree: list[list[int]] = [[j] for j in range(J)]
    for j in reversed(order[1:]):
        subtree[parents[j]].extend(subtree[j])
    return Tree(
        parents=parents,
        root=root,
        bone_parent=tuple(parents[j] for j in non_root),
        bone_child=tuple(non_root),
        joint_bone=tuple(joint_bone),
        topo_bones=tuple(joint_bone[j] for j in order[1:]),
        child_bones=tuple(tuple(joint_bone[c] for c in children[j]) for j in range(J)),
        path_bones=tuple(path),
        subtree_joints=tuple(tuple(sorted(subtree[j])) for j in non_root),
    )


def _padded(rows: Sequence[Sequence[int]], min_width: int = 1) -> list[list[int]]:
    width = max([min_width] + [len(r) for r in rows])
    return [list(r) + [-1] * (width - len(r)) for r in rows]


def _build_table(tree: Tree, name: str) -> list:
    if name == "parents":
        return list(tree.parents)
    if name == "bone_parent":
        return list(tree.bone_parent)
    if name == "bone_child":
        return list(tree.bone_child)
    if name == "joint_bone":
        return list(tree.joint_bone)
    if name == "child_bones":  # [J, max children], -1 padded
        return _padded(tree.child_bones)
    if name == "path_bones":  # [J, max depth], -1 padded
        return _padded(tree.path_bones)
    if name == "subtree_joints":  # [NB, max subtree size], -1 padded
        return _padded(tree.subtree_joints) if tree.num_bones else []
    if name == "path_matrix":  # [J, NB], 1 where bone k lies on the path root -> j
        return [[1 if k in tree.path_bones[j] else 0 for k in range(tree.num_bones)] for j in range(tree.num_joints)]
    raise KeyError(name)


_TABLES: dict[tuple, torch.Tensor] = {}


def device_table(parents: tuple[int, ...], name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tree table as a tensor on ``device``, built once per (tree, device, dtype).

    Kernels and references call this on every op call: after the first call it is
    a dict lookup, with no host-to-device copy.
    """
    key = (parents, name, device, dtype)
    table = _TABLES.get(key)
    if table is None:
        # under torch.compile, skip lru_cache's wrapper (dynamo would warn that it ignores it)
        tree = tree_of.__wrapped__(parents) if torch.compiler.is_compiling() else tree_of(parents)
        table = torch.tensor(_build_table(tree, name), dtype=dtype, device=device)
        if name == "path_matrix":
            table = table.reshape(len(parents), len(parents) - 1)
        _TABLES[key] = table
    return table


@lru_cache(maxsize=256)
def gram_entries(parts: tuple[tuple[int, ...], ...], num_bones: int, compact: bool) -> dict:
    """Entries of the part-aware Gram (see csrc/parts.h), and per-bone gather lists for its adjoint.

    Entries cover each part's block with a <= b: ``G[pos1] = G[pos2] = <u_i, u_j>``.
    ``per_bone[k]`` lists (pos1, pos2, other bone) for every entry touching bone k, so that
    ``grad_u_k = sum (G'[pos1] + G'[pos2]) u_other`` (the diagonal counts once, pos1 == pos2).
    """
    NB = num_bones
    out = {"i": [], "j": [], "pos1": [], "pos2": []}
    per_bone: list[list[tuple[int, int, int]]] = [[] for _ in range(NB)]
    compact_positions = []  # masked-layout position of each compact entry, in order
    offset = 0
    for p, bones in enumerate(parts):
        n = len(bones)
        for a in range(n):
            for b in range(n):
                compact_positions.append(p * NB * NB + bones[a] * NB + bones[b])
            for b in range(a, n):
                i, j = bones[a], bones[b]
                pos1 = offset + a * n + b if compact else p * NB * NB + i * NB + j
                pos2 = offset + b * n + a if compact else p * NB * NB + j * NB + i
                for key, value in zip(("i", "j", "pos1", "pos2"), (i, j, pos1, pos2)):
                    out[key].append(value)
                per_bone[i].append((pos1, pos2, j))
                if i != j:
                    per_bone[j].append((pos1, pos2, i))
        offset += n * n
    out["out_size"] = offset if compact else len(parts) * NB * NB
    width = max([1] + [len(c) for c in per_bone])
    for idx, name in enumerate(("bone_pos1", "bone_pos2", "bone_other")):
        out[name] = [[c[idx] for c in contribs] + [-1] * (width - len(contribs)) for contribs in per_bone]
    out["masks"] = [[1 if k in bones else 0 for k in range(NB)] for bones in parts]
    out["compact_positions"] = compact_positions
    return out


def part_table(parts: tuple, num_bones: int, compact: bool, name: str, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """A table of :func:`gram_entries` as a tensor on ``device``, built once per (parts, device, dtype)."""
    key = ("parts", parts, num_bones, compact, name, device, dtype)
    table = _TABLES.get(key)
    if table is None:
        entries = (gram_entries.__wrapped__ if torch.compiler.is_compiling() else gram_entries)(
            parts, num_bones, compact)
        table = torch.tensor(entries[name], dtype=dtype, device=device)
        _TABLES[key] = table
    return table


class Skeleton:
    """A kinematic tree with optional joint names and body parts.

    >>> sk = Skeleton.h36m16()
    >>> Skeleton(parents=[-1, 0, 1], parts={"chain": [0, 1]}, names=["a", "b", "c"])

    ``parts`` maps a part name to the bone indices it contains, in order; the
    mapping's order is the order of part outputs (e.g. of the part-aware
    discriminator). Invalid input raises ``ValueError`` naming what is wrong.
    """

    def __init__(
        self,
        parents: Sequence[int],
        parts: Mapping[str, Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
    ):
        if isinstance(parents, torch.Tensor):
            parents = parents.tolist()
        try:
            # operator.index accepts ints (numpy's too) and rejects floats such as 0.5
            parents = tuple(p if isinstance(p, bool) else operator.index(p) for p in parents)
        except TypeError as exc:
            raise ValueError(f"parents must be a sequence of ints, got {list(parents)!r}") from exc
        self.tree = tree_of(parents)
        J, NB = self.tree.num_joints, self.tree.num_bones
        if names is None:
            names = [f"joint{j}" for j in range(J)]
        names = tuple(str(n) for n in names)
        if len(names) != J:
            raise ValueError(f"names has {len(names)} entries but parents has {J} joints")
        if len(set(names)) != J:
            raise ValueError(f"names must be unique, got {list(names)}")
        checked: dict[str, tuple[int, ...]] = {}
        for part, bones in (parts or {}).items():
            bones = tuple(bones)
            for b in bones:
                if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < NB:
                    raise ValueError(
                        f"part {part!r} refers to bone {b!r}, but the skeleton has {NB} bones (indices 0..{NB - 1})"
                    )
            if len(set(bones)) != len(bones):
                raise ValueError(f"part {part!r} lists a bone more than once: {list(bones)}")
            if not bones:
                raise ValueError(f"part {part!r} is empty")
            checked[str(part)] = bones
        self.names = names
        self.parts = checked
        # the parts as the part_kcs_gram op takes them (concatenated bone lists, their lengths)
        self.op_parts = (tuple(b for bones in checked.values() for b in bones),
                         tuple(len(bones) for bones in checked.values()))

    # ---- tree facts --------------------------------------------------------------
    @property
    def parents(self) -> tuple[int, ...]:
        return self.tree.parents

    @property
    def num_joints(self) -> int:
        return self.tree.num_joints

    @property
    def num_bones(self) -> int:
        return self.tree.num_bones

    @property
    def root(self) -> int:
        return self.tree.root

    @property
    def bone_names(self) -> tuple[str, ...]:
        """A bone is named after the joint it ends at."""
        return tuple(self.names[j] for j in self.tree.bone_child)

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(self.parts)

    @property
    def part_bones(self) -> tuple[tuple[int, ...], ...]:
        """The bone lists of the parts, in part order."""
        return tuple(self.parts.values())

    def __eq__(self, other):
        return isinstance(other, Skeleton) and (self.parents, self.parts, self.names) == (
            other.parents, other.parts, other.names)

    def __hash__(self):
        return hash((self.parents, tuple(self.parts.items()), self.names))

    def __repr__(self):
        return f"Skeleton(num_joints={self.num_joints}, root={self.names[self.root]!r}, parts={list(self.parts)})"

    # ---- standard skeletons -------------------------------------------------------
    @classmethod
    def h36m16(cls) -> "Skeleton":
        """PoseAug's 16-joint Human3.6M skeleton (H36M's 17 without Neck/Nose).

        Parts are PoseAug's 3D-discriminator parts in its output order. PoseAug
        calls the third and fourth parts "left leg" and "right leg", but they hold
        the right-leg (bones 1, 2) and left-leg (bones 4, 5) bones of H36M: they are
        named here for what they contain, in PoseAug's order.
        """
        return cls(
            parents=[-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14],
            names=["Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Head",
                   "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist"],
            parts={
                "left_arm": [7, 9, 10, 11],
                "right_arm": [7, 12, 13, 14],
                "right_leg": [0, 1, 2, 3, 6],
                "left_leg": [0, 3, 4, 5, 6],
                "torso": [0, 3, 6, 7, 8, 9, 12],
            },
        )

    @classmethod
    def h36m17(cls) -> "Skeleton":
        """The 17-joint Human3.6M skeleton (with Neck/Nose); parts as ``h36m16`` plus the neck bone."""
        return cls(
            parents=[-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15],
            names=["Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Neck/Nose",
                   "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist"],
            parts={
                "left_arm": [7, 10, 11, 12],
                "right_arm": [7, 13, 14, 15],
                "right_leg": [0, 1, 2, 3, 6],
                "left_leg": [0, 3, 4, 5, 6],
                "torso": [0, 3, 6, 7, 8, 9, 10, 13],
            },
        )


# ---- skeletons as the ops take them ------------------------------------------------------------

@lru_cache(maxsize=64)
def _skeleton_of_parents(parents: tuple) -> Skeleton:
    return Skeleton(parents)


def as_skeleton(skeleton) -> Skeleton:
    """A Skeleton, or a parent list made one (cached: the ops call this per call)."""
    if isinstance(skeleton, Skeleton):
        return skeleton
    if isinstance(skeleton, (list, tuple)):
        return _skeleton_of_parents(tuple(skeleton))
    raise TypeError(f"skeleton must be a fastsmall.Skeleton or a list of parent indices, got {type(skeleton).__name__}")


def split_parts(part_bones, part_sizes) -> tuple[tuple[int, ...], ...]:
    """Concatenated part bone lists and their lengths (the ops' encoding) as a tuple of bone tuples."""
    parts, start = [], 0
    for n in part_sizes:
        parts.append(tuple(part_bones[start:start + n]))
        start += n
    return tuple(parts)

