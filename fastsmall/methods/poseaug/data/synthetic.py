"""A parametric h36m16 body: any number of plausible 2D-3D pairs, no download, reproducible.

Each pose is built in a body frame (x = the person's right, y = forward, z = up, metres):

1. bone lengths: nominal adult lengths (below) x a per-subject scale x small per-bone noise
   (left and right equal, as in H36M's templates); poses are spread over ``NUM_SUBJECTS``
   virtual subjects;
2. joint angles drawn per motion type within anatomical limits (``_RANGES``, degrees);
3. bone directions from the angles by chained rotations, bone vectors
   ``x[parent] - x[child] = -length * direction``, joints by ``kcs_inverse``;
4. a global yaw (and, for ``subset="broad"``, a small pitch and roll), feet put on the floor
   (lowest joint at z = 0), a small offset on the floor;
5. a random H36M-like camera (:func:`..camera.random_cameras`) aimed at the pelvis, world to
   camera, projection with :func:`..camera.project_to_2d`.

Poses with a joint closer than 0.5 m to the camera or off the normalised image ([-1, 1])
are redrawn (rare: cameras stand 4-6 m away), so every returned pose is valid.

``subset="narrow"`` is a source domain for cross-domain experiments: standing and walking
only, the subject facing the camera within ±30°, upright (no pitch/roll).
``subset="broad"`` has all motion types, any yaw relative to the camera and tilts of up to
±15°.
"""
from __future__ import annotations

import math

import torch

from ....ops import kcs_inverse
from ....skeleton import Skeleton
from ..camera import project_to_2d, random_cameras, world_to_camera
from .poseset import PoseSet

__all__ = ["generate", "MOTIONS", "NOMINAL_BONE_LENGTHS", "NUM_SUBJECTS"]

# Nominal adult bone lengths (m) of h36m16, bone k ending at joint k+1: pelvis half-width,
# thigh, shin, pelvis->spine, spine->thorax, thorax->head, clavicle, upper arm, forearm.
NOMINAL_BONE_LENGTHS = (0.135, 0.45, 0.45, 0.135, 0.45, 0.45, 0.24, 0.255, 0.185,
                        0.15, 0.28, 0.25, 0.15, 0.28, 0.25)
# Bones sharing a length: left/right pairs (H36M's per-subject templates are symmetric).
_LENGTH_GROUP = (0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8)
NUM_SUBJECTS = 50

MOTIONS = ("standing", "walking", "sitting", "crouching", "reaching", "bending")
_SUBSETS = {"narrow": ("standing", "walking"), "broad": MOTIONS}

# Angle parameters (degrees). Legs and arms are drawn per side from the same range.
_PARAMS = ("lean", "lat", "twist", "neck",
           "hip_flex", "hip_abd", "hip_rot", "knee", "sh_flex", "sh_abd", "sh_rot", "elbow")
_RANGES = {
    #            lean       lat        twist      neck       hip_flex   hip_abd  hip_rot    knee       sh_flex     sh_abd    sh_rot     elbow
    "standing": ((-5, 15), (-8, 8), (-20, 20), (-10, 25), (-10, 20), (-5, 15), (-15, 15), (0, 20), (-25, 40), (0, 35), (-30, 30), (0, 90)),
    "walking": ((0, 12), (-5, 5), (-10, 10), (-5, 20), (0, 0), (0, 8), (-10, 10), (0, 10), (0, 0), (5, 15), (-20, 20), (5, 45)),
    "sitting": ((-15, 25), (-8, 8), (-20, 20), (-10, 30), (65, 105), (0, 25), (-20, 20), (60, 120), (0, 60), (0, 30), (-30, 40), (30, 120)),
    "crouching": ((15, 55), (-10, 10), (-20, 20), (-20, 20), (80, 130), (5, 30), (-20, 20), (90, 150), (10, 90), (0, 40), (-30, 30), (0, 100)),
    "reaching": ((-15, 15), (-15, 15), (-30, 30), (-20, 20), (-10, 20), (-5, 15), (-15, 15), (0, 20), (40, 175), (10, 120), (-40, 40), (0, 60)),
    "bending": ((40, 95), (-10, 10), (-20, 20), (-20, 10), (-5, 15), (-5, 15), (-15, 15), (0, 30), (0, 0), (0, 25), (-20, 20), (0, 40)),
}
_TILT_DEG = {"narrow": 0.0, "broad": 15.0}
_YAW_DEG = {"narrow": 30.0, "broad": 180.0}  # body facing relative to the direction to the camera
_MIN_DEPTH = 0.5


def _rot(axis: int, deg: torch.Tensor) -> torch.Tensor:
    """Rotations ``[n, 3, 3]`` by ``deg`` about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    a = deg * (math.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    if axis == 0:
        rows = (o, z, z, z, c, -s, z, s, c)
    elif axis == 1:
        rows = (c, z, s, z, o, z, -s, z, c)
    else:
        rows = (c, -s, z, s, c, z, z, z, o)
    return torch.stack(rows, dim=-1).view(*a.shape, 3, 3)


def _apply(R: torch.Tensor, v) -> torch.Tensor:
    """``R @ v`` for a fixed vector ``v`` (3,) and rotations ``R [n, 3, 3]``."""
    return R @ R.new_tensor(v)


def _angles(motion: torch.Tensor, names: tuple[str, ...], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-pose angles (degrees): ``{param}`` for the torso, ``{param}_r`` / ``{param}_l`` for limbs."""
    n = motion.shape[0]
    table = torch.tensor([_RANGES[m] for m in names], dtype=torch.float32)  # [M, P, 2]
    lo, hi = table[motion, :, 0], table[motion, :, 1]
    out = {}
    for side in ("r", "l"):
        u = torch.rand(n, len(_PARAMS), generator=g)
        vals = lo + (hi - lo) * u
        for i, p in enumerate(_PARAMS):
            if i < 4:
                out.setdefault(p, vals[:, i])  # torso: drawn once
            else:
                out[f"{p}_{side}"] = vals[:, i]
    # walking: legs swing in antiphase, arms opposite to the legs, knees flex in swing
    walk = motion == names.index("walking") if "walking" in names else torch.zeros(n, dtype=torch.bool)
    phase = torch.rand(n, generator=g) * (2 * math.pi)
    amp = 15 + 15 * torch.rand(n, generator=g)
    swing = amp * torch.sin(phase)
    knee_swing = 55 * torch.clamp(torch.sin(phase + math.pi / 3), min=0)
    knee_stance = 55 * torch.clamp(-torch.sin(phase + math.pi / 3), min=0)
    for key, value in (("hip_flex_r", 5 + swing), ("hip_flex_l", 5 - swing),
                       ("knee_r", out["knee_r"] + knee_swing), ("knee_l", out["knee_l"] + knee_stance),
                       ("sh_flex_r", -0.7 * swing), ("sh_flex_l", 0.7 * swing)):
        out[key] = torch.where(walk, value, out[key])
    # bending: the arms hang, i.e. their flexion follows the trunk's lean
    if "bending" in names:
        bend = motion == names.index("bending")
        for side in ("r", "l"):
            hang = out["lean"] + 40 * torch.rand(n, generator=g) - 20
            out[f"sh_flex_{side}"] = torch.where(bend, hang, out[f"sh_flex_{side}"])
    return out


def _body_directions(a: dict[str, torch.Tensor]) -> torch.Tensor:
    """Unit bone directions (child - parent) ``[n, 15, 3]`` in the body frame."""
    half = _rot(2, a["twist"] / 2) @ _rot(1, a["lat"] / 2) @ _rot(0, -a["lean"] / 2)
    thorax = half @ half  # lean, bend and twist spread over the two spine segments
    dirs = [None] * 15
    for side, sign, (hip_b, thigh_b, shin_b), (sh_b, upper_b, fore_b) in (
            ("r", 1.0, (0, 1, 2), (12, 13, 14)), ("l", -1.0, (3, 4, 5), (9, 10, 11))):
        dirs[hip_b] = torch.tensor([sign, 0.0, 0.0]).expand(half.shape[0], 3)
        hip = _rot(1, -sign * a[f"hip_abd_{side}"]) @ _rot(0, a[f"hip_flex_{side}"]) @ _rot(2, sign * a[f"hip_rot_{side}"])
        dirs[thigh_b] = _apply(hip, (0.0, 0.0, -1.0))
        dirs[shin_b] = _apply(hip @ _rot(0, -a[f"knee_{side}"]), (0.0, 0.0, -1.0))
        dirs[sh_b] = _apply(thorax, (sign * 0.995, 0.0, -0.0995))  # clavicles slope slightly down
        arm = thorax @ _rot(1, -sign * a[f"sh_abd_{side}"]) @ _rot(0, a[f"sh_flex_{side}"]) @ _rot(2, sign * a[f"sh_rot_{side}"])
        dirs[upper_b] = _apply(arm, (0.0, 0.0, -1.0))
        dirs[fore_b] = _apply(arm @ _rot(0, a[f"elbow_{side}"]), (0.0, 0.0, -1.0))
    dirs[6] = _apply(half, (0.0, 0.0, 1.0))
    dirs[7] = _apply(thorax, (0.0, 0.0, 1.0))
    dirs[8] = _apply(thorax @ _rot(0, -a["neck"]), (0.0, 0.148, 0.989))  # the head sits a little forward
    return torch.stack(dirs, dim=1)


def _subject_lengths(g: torch.Generator) -> torch.Tensor:
    """``[NUM_SUBJECTS, 15]`` bone lengths: overall scale ±~5 %, per-bone ±~4 %, symmetric."""
    scale = (1 + 0.05 * torch.randn(NUM_SUBJECTS, 1, generator=g)).clamp(0.88, 1.12)
    per_group = (1 + 0.04 * torch.randn(NUM_SUBJECTS, 9, generator=g)).clamp(0.9, 1.1)
    nominal = torch.tensor(NOMINAL_BONE_LENGTHS)
    return nominal * scale * per_group[:, list(_LENGTH_GROUP)]


def _draw(n: int, names: tuple[str, ...], subset: str, lengths: torch.Tensor, sk: Skeleton,
          g: torch.Generator):
    """``n`` candidate poses (some may be invalid): camera 3D, 2D, cams, motion index, validity."""
    motion = torch.randint(len(names), (n,), generator=g)
    subject = torch.randint(NUM_SUBJECTS, (n,), generator=g)
    bones = -_body_directions(_angles(motion, names, g)) * lengths[subject].unsqueeze(-1)
    local = kcs_inverse(bones, sk)  # root at the origin

    tilt = _TILT_DEG[subset]
    pitch = (2 * torch.rand(n, generator=g) - 1) * tilt
    roll = (2 * torch.rand(n, generator=g) - 1) * tilt
    azimuth = (2 * torch.rand(n, generator=g) - 1) * math.pi  # of the camera, seen from the subject
    rel_yaw = (2 * torch.rand(n, generator=g) - 1) * _YAW_DEG[subset]
    # body forward (+y) turned by yaw points at azimuth (yaw + 90°): facing the camera when rel_yaw = 0
    yaw = azimuth * (180 / math.pi) - 90 + rel_yaw
    G = _rot(2, yaw) @ _rot(0, pitch) @ _rot(1, roll)
    world = local @ G.transpose(-1, -2)
    offset = torch.cat([(2 * torch.rand(n, 2, generator=g) - 1) * 0.5,
                        -world[..., 2].amin(dim=1, keepdim=True)], dim=-1)  # feet on the floor
    world = world + offset.unsqueeze(1)

    cams = random_cameras(n, generator=g, target=world[:, sk.root], azimuth=azimuth)
    x3d = world_to_camera(world, cams.R, cams.T)
    x2d = project_to_2d(x3d, cams.intrinsics)
    valid = (x3d[..., 2] > _MIN_DEPTH).all(1) & (x2d.abs() <= 1).all(2).all(1)
    return x3d, x2d, cams.intrinsics, motion, valid


def generate(n: int, *, subset: str = "broad", seed: int = 0, skeleton: Skeleton | None = None) -> PoseSet:
    """``n`` valid synthetic h36m16 poses (camera frame, metres) with 2D and cameras.

    Deterministic in ``(n, seed)``; different ``n`` with one seed give different draws.
    """
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {sorted(_SUBSETS)}, got {subset!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    sk = Skeleton.h36m16()
    if skeleton is not None and skeleton.parents != sk.parents:
        raise ValueError(f"the synthetic body is built for Skeleton.h36m16(); got {skeleton!r}")
    sk = skeleton or sk
    names = _SUBSETS[subset]
    g = torch.Generator().manual_seed(int(seed))
    lengths = _subject_lengths(g)
    parts, have = [], 0
    while have < n:  # rejections are rare with the default camera ranges; redraw until n are valid
        want = n - have
        x3d, x2d, cams, motion, valid = _draw(want + want // 8 + 16, names, subset, lengths, sk, g)
        idx = valid.nonzero().squeeze(1)[:want]
        parts.append((x3d[idx], x2d[idx], cams[idx], motion[idx]))
        have += idx.numel()
    if not parts:  # n == 0
        parts = [(torch.empty(0, 16, 3), torch.empty(0, 16, 2), torch.empty(0, 9), torch.empty(0, dtype=torch.int64))]
    x3d, x2d, cams, motion = (torch.cat(t) for t in zip(*parts))
    return PoseSet(x3d.float().contiguous(), x2d.float().contiguous(), cams.float().contiguous(),
                   motion.to(torch.int64), list(names), f"synthetic-{subset}", sk)
