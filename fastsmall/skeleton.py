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
from functools import cached_property, lru_cache
from itertools import accumulate
from typing import Mapping, Sequence

import torch

__all__ = ["Skeleton", "Tree", "tree_of", "tree_levels", "device_table", "gram_entries", "part_table", "as_skeleton",
           "split_parts"]

_INT = {int}  # ``_INT.issuperset(map(type, seq))``: every entry is exactly an int (no bool, no float)
_SHOW = 10  # at most this many joints are listed in an error message


def _listed(items: Sequence) -> str:
    """A list for an error message, shortened when long."""
    items = list(items[:_SHOW + 1]) if isinstance(items, (list, tuple)) else list(items)
    return f"{items[:_SHOW]}"[:-1] + ", ...]" if len(items) > _SHOW else f"{items}"


def _index_sequence(seq, name: str) -> list:
    """``seq`` (list, tuple, 1-D tensor / array, range) as a list of entries to check one by one."""
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1 or seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor, got a {seq.dim()}-D {seq.dtype} tensor")
        return seq.tolist()
    if isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__") or not hasattr(seq, "__len__") \
            or isinstance(seq, Mapping):
        raise TypeError(f"{name} must be a sequence of ints (a list, tuple, 1-D tensor or array), "
                        f"got {type(seq).__name__}")
    if getattr(seq, "ndim", 1) != 1:  # numpy arrays
        raise TypeError(f"{name} must be 1-D, got an array of shape {tuple(seq.shape)}")
    return list(seq)


def _exact_int(v, what: str) -> int:
    """``v`` as an int: ints (numpy's too) pass, bools and floats (even 1.0) are rejected."""
    if type(v) is int:
        return v
    if not isinstance(v, bool) and type(v).__name__ != "bool_":
        try:
            return operator.index(v)  # ints of any kind, never floats
        except TypeError:
            pass
    raise ValueError(f"{what} is {v!r} ({type(v).__name__}): each entry must be an int")


def parents_tuple(parents) -> tuple[int, ...]:
    """``parents`` as a tuple of ints, its entries' *types* checked (not yet the tree).

    This runs before any cache lookup: a cache keyed on values treats ``1.0`` and ``True`` as ``1``.
    A non-sequence raises TypeError; an entry that is not an int (a float, a bool, a list) ValueError.
    """
    if type(parents) is tuple and _INT.issuperset(map(type, parents)):
        return parents
    entries = _index_sequence(parents, "parents")
    if _INT.issuperset(map(type, entries)):
        return tuple(entries)
    return tuple(_exact_int(p, f"parents must be a sequence of ints, but parents[{j}]")
                 for j, p in enumerate(entries))


@dataclass(frozen=True, eq=False)
class Tree:
    """Index tables derived from a parent list (all tuples), built in O(J).

    ``depth`` is O(J) but computed on first use; ``path_bones`` and ``subtree_joints`` hold O(sum of depths) entries -- O(J^2) for a chain --
    so they are computed on first use only (cached on the Tree); so are the padded tables that
    ``device_table`` makes of them, and the dense ``path_matrix`` ([J, J-1]).
    """

    parents: tuple[int, ...]
    root: int
    bone_parent: tuple[int, ...]  # [NB] parent joint of bone k
    bone_child: tuple[int, ...]  # [NB] child joint of bone k
    joint_bone: tuple[int, ...]  # [J] bone ending at joint j, -1 for the root
    topo_bones: tuple[int, ...]  # [NB] parents before children (breadth-first)
    child_bones: tuple[tuple[int, ...], ...]  # [J] bones whose parent joint is j

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_bones(self) -> int:
        return len(self.parents) - 1

    @cached_property
    def depth(self) -> tuple[int, ...]:
        """[J] number of bones on the path root -> j (0 for the root); O(J), computed on first use."""
        depth = [0] * self.num_joints
        parents, child = self.parents, self.bone_child
        for k in self.topo_bones:
            j = child[k]
            depth[j] = depth[parents[j]] + 1
        return tuple(depth)

    @cached_property
    def path_bones(self) -> tuple[tuple[int, ...], ...]:
        """[J] bones on the path root -> j, root first (lazy: O(sum of depths))."""
        path: list[tuple[int, ...]] = [()] * self.num_joints
        parents, joint_bone, child = self.parents, self.joint_bone, self.bone_child
        for k in self.topo_bones:
            j = child[k]
            path[j] = path[parents[j]] + (joint_bone[j],)
        return tuple(path)

    @cached_property
    def subtree_joints(self) -> tuple[tuple[int, ...], ...]:
        """[NB] joints at or below the child of bone k, ascending (lazy: O(sum of subtree sizes))."""
        subtree: list[list[int]] = [[j] for j in range(self.num_joints)]
        parents, child = self.parents, self.bone_child
        for k in reversed(self.topo_bones):
            j = child[k]
            subtree[parents[j]].extend(subtree[j])
        return tuple(tuple(sorted(subtree[j])) for j in child)

    # identity of a Tree is its parent list (the tables derive from it)
    def __eq__(self, other):
        return isinstance(other, Tree) and self.parents == other.parents

    def __hash__(self):
        return hash(self.parents)


def _derive_tree(parents: tuple[int, ...]) -> Tree:
    """Validate a tuple of ints as a tree and derive its tables, in O(J)."""
    J = len(parents)
    if J == 0:
        raise ValueError("parents must list at least one joint, got an empty list")
    roots = []
    for j, p in enumerate(parents):
        if p == -1:
            roots.append(j)
        elif not 0 <= p < J:
            raise ValueError(f"parents[{j}] = {p} is out of range: expected -1 (root) or a joint index in [0, {J})")
        elif p == j:
            raise ValueError(f"parents[{j}] = {j} makes joint {j} its own parent")
    if len(roots) != 1:
        raise ValueError(f"parents must have exactly one root (-1), found {len(roots)}: joints {_listed(roots)}")
    root = roots[0]

    non_root = [j for j in range(J) if j != root]
    joint_bone = [-1] * J
    for k, j in enumerate(non_root):
        joint_bone[j] = k
    # children as a CSR list: by_parent[off[j]:off[j + 1]] are j's children, in index order
    by_parent = sorted(non_root, key=parents.__getitem__)  # stable
    counts = [0] * (J + 1)
    for j in non_root:
        counts[parents[j] + 1] += 1
    off = list(accumulate(counts))
    order = [root]
    for j in order:  # breadth-first; grows while iterating, each joint at most once
        order.extend(by_parent[off[j]:off[j + 1]])
    if len(order) != J:  # a joint on a cycle is never reached from the root
        reached = bytearray(J)
        for j in order:
            reached[j] = 1
        unreached = [j for j in range(J) if not reached[j]]
        raise ValueError(f"parents contains a cycle: joints {_listed(unreached)} are not reachable "
                         f"from the root {root}")
    bones_by_parent = [joint_bone[c] for c in by_parent]
    return Tree(
        parents=parents,
        root=root,
        bone_parent=tuple(parents[j] for j in non_root),
        bone_child=tuple(non_root),
        joint_bone=tuple(joint_bone),
        topo_bones=tuple(joint_bone[j] for j in order[1:]),
        child_bones=tuple([tuple(bones_by_parent[a:b]) if a != b else () for a, b in zip(off, off[1:])]),
    )


def _tree_uncached(parents) -> Tree:
    """:func:`tree_of` without its cache (what torch.compile traces)."""
    return _derive_tree(parents_tuple(parents))


_TREES: dict[tuple, Tree] = {}
_TREES_MAX = 256


def tree_of(parents) -> Tree:
    """Validate a parent list and derive its tables (cached); ValueError says what is wrong.

    The entries' types are checked before the cache is consulted (``(1.0,)`` and ``(True,)``
    hash and compare equal to ``(1,)``); a Skeleton's own ``parents`` tuple skips that check.
    """
    if torch.compiler.is_compiling():
        return _tree_uncached(parents)
    if type(parents) is not tuple:
        parents = tuple(parents) if isinstance(parents, (list, range)) else parents_tuple(parents)
    try:
        tree = _TREES.get(parents)
    except TypeError:  # unhashable entries: the type check says which
        tree = None
    if tree is not None and (tree.parents is parents or _INT.issuperset(map(type, parents))):
        return tree
    parents = parents_tuple(parents)
    tree = _TREES.get(parents)
    if tree is None:
        tree = _derive_tree(parents)
        if len(_TREES) >= _TREES_MAX:
            del _TREES[next(iter(_TREES))]  # the oldest
        _TREES[parents] = tree
    return tree


tree_of.__wrapped__ = _tree_uncached  # as functools' caches spell "the function without the cache"


def _padded(rows: Sequence[Sequence[int]], min_width: int = 1) -> list[list[int]]:
    width = max([min_width] + [len(r) for r in rows])
    return [list(r) + [-1] * (width - len(r)) for r in rows]


def _path_rows(tree: Tree) -> list[list[int]]:
    """The path matrix as nested lists, row j = row of j's parent plus bone j (O(J * NB))."""
    rows = [[0] * tree.num_bones for _ in range(tree.num_joints)]
    for k in tree.topo_bones:
        j = tree.bone_child[k]
        rows[j] = rows[tree.parents[j]].copy()
        rows[j][k] = 1
    return rows


def _path_matrix(tree: Tree, dtype: torch.dtype) -> torch.Tensor:
    """[J, NB], 1 where bone k lies on the path root -> j: dense, O(J * NB), built on first use."""
    if torch.compiler.is_compiling():
        return torch.tensor(_path_rows(tree), dtype=dtype).reshape(tree.num_joints, tree.num_bones)
    out = torch.zeros(tree.num_joints, tree.num_bones, dtype=dtype)
    one = torch.ones((), dtype=dtype)
    for k in tree.topo_bones:  # parents before children: a row is its parent's row plus one bone
        j = tree.bone_child[k]
        out[j] = out[tree.parents[j]]
        out[j, k] = one
    return out


def _levels(tree: Tree) -> tuple[tuple[int, int], ...]:
    """Depth levels as ranges ``[a, b)`` of positions in the breadth-first joint order
    ``(root, child of topo_bones[0], child of topo_bones[1], ...)``: level 0 is ``(0, 1)``, the
    root; level L holds the joints at depth L (``topo_bones`` is breadth-first, so the depth never
    decreases along it). O(J). No cached_property here: torch.compile traces this (Python 3.11's
    cached_property takes a lock, which Dynamo cannot enter)."""
    depth = [0] * tree.num_joints
    starts = [0]
    previous = 0  # the depth at the previous position
    for i, k in enumerate(tree.topo_bones, start=1):
        j = tree.bone_child[k]
        depth[j] = depth[tree.parents[j]] + 1
        if depth[j] != previous:
            starts.append(i)
            previous = depth[j]
    return tuple(zip(starts, starts[1:] + [tree.num_joints]))


@lru_cache(maxsize=256)
def tree_levels(parents: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The depth levels of a tree (see ``_levels``), cached per parent tuple."""
    return _levels(tree_of(parents))


def _level_tables(tree: Tree) -> dict[str, list[int]]:
    """The tables of a level-by-level tree walk (the reference kcs_inverse), in O(J):
    ``bfs_slot`` [J], the position of joint j in the breadth-first order of ``Tree.levels``;
    ``level_parent_slot`` [NB], for ``topo_bones[i]`` the position of its parent joint within
    the previous level (an index into that level's rows)."""
    order = [tree.root] + [tree.bone_child[k] for k in tree.topo_bones]
    slot = [0] * tree.num_joints
    for i, j in enumerate(order):
        slot[j] = i
    level_start = [0] * tree.num_joints  # the first position of each joint's level
    for a, b in _levels(tree):
        for i in range(a, b):
            level_start[i] = a
    parent_slot = [slot[tree.bone_parent[k]] - level_start[slot[tree.bone_parent[k]]] for k in tree.topo_bones]
    return {"bfs_slot": slot, "level_parent_slot": parent_slot}


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
    if name == "topo_bones":  # [NB]
        return list(tree.topo_bones)
    if name in ("bfs_slot", "level_parent_slot"):
        return _level_tables(tree)[name]
    raise KeyError(name)


_TABLES: dict[tuple, torch.Tensor] = {}


def device_table(parents: tuple[int, ...], name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tree table as a tensor on ``device``, built once per (tree, device, dtype), on first use.

    Kernels and references call this on every op call: after the first call it is
    a dict lookup, with no host-to-device copy. Sizes: ``parents`` [J], ``bone_parent``,
    ``bone_child`` [J-1], ``joint_bone`` [J], ``child_bones`` [J, max children],
    ``path_bones`` [J, max depth], ``subtree_joints`` [J-1, max subtree size] (the padded ones
    are O(J^2) for a chain or a star), ``path_matrix`` [J, J-1] (dense, always O(J^2)),
    ``topo_bones`` [J-1], ``bfs_slot`` [J] and ``level_parent_slot`` [J-1] (see ``_level_tables``).
    """
    if type(parents) is not tuple or not _INT.issuperset(map(type, parents)):
        parents = tree_of(parents).parents  # the key is compared by value: check the types first
    key = (parents, name, device, dtype)
    table = _TABLES.get(key)
    if table is None:
        tree = tree_of(parents)
        if name == "path_matrix":
            table = _path_matrix(tree, dtype).to(device)
        else:
            table = torch.tensor(_build_table(tree, name), dtype=dtype, device=device)
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
    out["masks"] = [[1 if k in members else 0 for k in range(NB)] for members in map(set, parts)]
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
        # O(J + total part length) time and memory: see Tree for the tables built on first use
        self.tree = tree_of(parents_tuple(parents))
        J, NB = self.tree.num_joints, self.tree.num_bones
        if names is None:
            names = tuple(f"joint{j}" for j in range(J))
        else:
            if isinstance(names, (str, bytes)) or isinstance(names, Mapping) or not hasattr(names, "__iter__"):
                raise TypeError(f"names must be a sequence of joint names (str), got {type(names).__name__}")
            names = tuple(str(n) for n in names)
        if len(names) != J:
            raise ValueError(f"names has {len(names)} entries but parents has {J} joints")
        if len(set(names)) != J:
            seen: set[str] = set()
            dup = next(n for n in names if n in seen or seen.add(n))
            raise ValueError(f"names must be unique, but {dup!r} names more than one joint "
                             f"(names {_listed(names)})")
        self.names = names
        self.parts = self._checked_parts(parts, NB)
        checked = self.parts
        # the parts as the part_kcs_gram op takes them (concatenated bone lists, their lengths)
        self.op_parts = (tuple(b for bones in checked.values() for b in bones),
                         tuple(len(bones) for bones in checked.values()))

    @staticmethod
    def _checked_parts(parts, NB: int) -> dict[str, tuple[int, ...]]:
        if parts is None:
            return {}
        if not isinstance(parts, Mapping):
            raise TypeError(f"parts must be a mapping {{part name: [bone indices]}}, got {type(parts).__name__}")
        checked: dict[str, tuple[int, ...]] = {}
        for part, bones in parts.items():
            what = f"part {part!r}"
            if isinstance(bones, torch.Tensor):
                bones = _index_sequence(bones, what)
            elif isinstance(bones, (str, bytes)) or isinstance(bones, Mapping) or not hasattr(bones, "__iter__"):
                raise TypeError(f"{what} must be a sequence of bone indices (ints), got {type(bones).__name__}")
            bones = tuple(bones)
            for b in bones:
                if type(b) is not int:
                    _exact_int(b, f"{what} must list bone indices (ints), but an entry")
                if not 0 <= b < NB:
                    raise ValueError(
                        f"{what} refers to bone {b!r}, but the skeleton has {NB} bones (indices 0..{NB - 1})"
                    )
            bones = tuple(operator.index(b) for b in bones)
            if len(set(bones)) != len(bones):
                raise ValueError(f"{what} lists a bone more than once: {_listed(bones)}")
            if not bones:
                raise ValueError(f"{what} is empty")
            name = str(part)
            if name in checked:
                raise ValueError(f"part names must be unique as strings, but {part!r} and another part are both "
                                 f"named {name!r}")
            checked[name] = bones
        return checked

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
def _skeleton_of_parents(parents: tuple[int, ...]) -> Skeleton:
    return Skeleton(parents)


def as_skeleton(skeleton) -> Skeleton:
    """A Skeleton, or a parent list made one (cached: the ops call this per call).

    The entries' types are checked before the cache lookup (a cache compares ``1.0`` and ``True``
    equal to ``1``): only exact ints reach it unchecked, anything else is checked (numpy ints are
    accepted, bools, floats and nested lists raise ValueError naming ``parents``).
    """
    if isinstance(skeleton, Skeleton):
        return skeleton
    if isinstance(skeleton, (list, tuple)):
        parents = tuple(skeleton)
        if not _INT.issuperset(map(type, parents)):
            parents = parents_tuple(parents)
        return _skeleton_of_parents(parents)
    raise TypeError(f"skeleton must be a fastsmall.Skeleton or a list of parent indices, got {type(skeleton).__name__}")


def split_parts(part_bones, part_sizes) -> tuple[tuple[int, ...], ...]:
    """Concatenated part bone lists and their lengths (the ops' encoding) as a tuple of bone tuples."""
    parts, start = [], 0
    for n in part_sizes:
        parts.append(tuple(part_bones[start:start + n]))
        start += n
    return tuple(parts)

