"""What the released PoseAug code hard-codes for its 16-joint skeleton, made a value.

The augmentor, its regularisers and the feedback loss need a few skeleton-specific
choices. ``PoseAugSpec.h36m16()`` holds the released values; ``PoseAugSpec.for_skeleton``
derives them for any :class:`fastsmall.Skeleton` (bone-length groups from the L/R joint
names, which reproduces the released 9-group map exactly on h36m16).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...skeleton import Skeleton


# name prefixes that mark the two sides of a body
_SIDE_PREFIXES = (("L", "R"), ("Left", "Right"), ("left_", "right_"), ("l_", "r_"))


def left_right_pairs(skeleton: Skeleton) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(left, right)`` joint indices paired by name prefix (``LHip``/``RHip``, ``Left*``/
    ``Right*``, ``left_*``/``right_*``, ``l_*``/``r_*``), in left-joint index order.

    For ``Skeleton.h36m16()`` this is PoseAug's ``([4, 5, 6, 10, 11, 12], [1, 2, 3, 13, 14, 15])``.
    A skeleton with no such names has no pairs (flipping then only mirrors coordinates).
    """
    index = {n: j for j, n in enumerate(skeleton.names)}
    left, right = [], []
    for j, name in enumerate(skeleton.names):
        for lp, rp in _SIDE_PREFIXES:
            if name.startswith(lp) and len(name) > len(lp) and rp + name[len(lp):] in index:
                left.append(j)
                right.append(index[rp + name[len(lp):]])
                break
    return tuple(left), tuple(right)


def symmetric_groups(skeleton: Skeleton) -> tuple[int, ...]:
    """Per bone, the index of its bone-length group: left/right twins (bones ending at paired
    joints, :func:`left_right_pairs`) share a group, groups numbered in order of first
    appearance (h36m16: PoseAug's ``blr9to15``)."""
    left, right = left_right_pairs(skeleton)
    key_of = dict(zip(right, left))  # a right joint's group is keyed by its left twin
    keys: list[int] = []
    groups = []
    for child in skeleton.tree.bone_child:
        key = key_of.get(child, child)
        if key not in keys:
            keys.append(key)
        groups.append(keys.index(key))
    return tuple(groups)


@dataclass(frozen=True)
class PoseAugSpec:
    #: bones whose direction BA leaves unchanged (released: pelvis->spine, spine->thorax, so
    #: the augmentor cannot rotate the whole body through the torso)
    frozen_angle_bones: tuple[int, ...]
    #: per bone, the bone-length ratio it takes (symmetric bones share one)
    length_groups: tuple[int, ...]
    #: length groups BL never changes (released: spine->thorax, because a tall person far
    #: away and a short one close by project alike)
    frozen_length_groups: tuple[int, ...]
    #: per joint, the weight of its error in the feedback loss
    feedback_weights: tuple[float, ...]
    #: joint groups whose mean weighted error the feedback loss compares
    feedback_groups: tuple[tuple[int, ...], ...]

    @property
    def num_length_groups(self) -> int:
        return max(self.length_groups) + 1

    def validate(self, skeleton: Skeleton) -> None:
        NB, J = skeleton.num_bones, skeleton.num_joints
        if len(self.length_groups) != NB:
            raise ValueError(f"length_groups must have one entry per bone ({NB}), got {len(self.length_groups)}")
        if sorted(set(self.length_groups)) != list(range(self.num_length_groups)):
            raise ValueError(f"length_groups must number groups 0..G-1 without gaps, got {self.length_groups}")
        for b in self.frozen_angle_bones:
            if not 0 <= b < NB:
                raise ValueError(f"frozen_angle_bones refers to bone {b}, but the skeleton has {NB} bones")
        for g in self.frozen_length_groups:
            if not 0 <= g < self.num_length_groups:
                raise ValueError(f"frozen_length_groups refers to group {g}, but there are {self.num_length_groups}")
        if len(self.feedback_weights) != J:
            raise ValueError(f"feedback_weights must have one entry per joint ({J}), got {len(self.feedback_weights)}")
        for group in self.feedback_groups:
            if not group or any(not 0 <= j < J for j in group):
                raise ValueError(f"feedback_groups must be non-empty lists of joints in [0, {J}), got {group}")

    @classmethod
    def h36m16(cls) -> "PoseAugSpec":
        return cls(
            frozen_angle_bones=(6, 7),
            length_groups=(0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8),
            frozen_length_groups=(4,),
            # released get_feedback_loss weights: hips/shoulders x5, knees/elbows x2, the rest x1
            feedback_weights=(1, 5, 2, 1, 5, 2, 1, 1, 1, 1, 5, 2, 1, 5, 2, 1),
            feedback_groups=((1, 4, 10, 13), (2, 5, 9, 11, 14), (3, 6, 12, 15)),
        )

    @classmethod
    def for_skeleton(cls, skeleton: Skeleton) -> "PoseAugSpec":
        """The released values for h36m16; for other skeletons: symmetric length groups,
        nothing frozen, every non-root joint weighted 1 in a single feedback group."""
        if skeleton.parents == Skeleton.h36m16().parents and skeleton.num_joints == 16:
            return cls.h36m16()
        non_root = tuple(j for j in range(skeleton.num_joints) if j != skeleton.root)
        return cls(frozen_angle_bones=(), length_groups=symmetric_groups(skeleton), frozen_length_groups=(),
                   feedback_weights=(1.0,) * skeleton.num_joints, feedback_groups=(non_root,))
