"""BVH motion capture: a small parser, forward kinematics in torch, and a PoseSet loader.

BVH: a ``HIERARCHY`` of ``ROOT``/``JOINT``/``End Site`` blocks with ``OFFSET x y z`` and
``CHANNELS n ...`` (any subset and order of X/Y/Zposition and X/Y/Zrotation), then ``MOTION``
with ``Frames: T``, ``Frame Time: dt`` and T lines of channel values.

Kinematics (the usual BVH reading): a joint's local rotation is the product of its rotation
channels *in the order listed*, e.g. ``Zrotation Yrotation Xrotation`` -> ``Rz @ Ry @ Rx``
(degrees); its local translation is its ``OFFSET``, with any position channel replacing that
axis of the offset (roots: the channel gives the position; CMU's root offsets are zero).
``world_rot[j] = world_rot[parent] @ local_rot[j]`` and
``pos[j] = pos[parent] + world_rot[parent] @ local_translation[j]``.

**CMU rig and units** (cgspeed's conversion of the CMU database): 31 joints, y up, lengths in
CMU's ASF units. CMU's ASF files declare ``:units length 0.45``: one unit is 1/0.45 inch, so
``CMU_UNITS_TO_METRES = 0.0254 / 0.45`` (0.05644 m; the factor usually quoted for the cgspeed
files). With it subject 01 (``01_01.bvh``) maps to h36m16 thighs of 0.40-0.42 m, shins of
0.42 m, upper arms of 0.28-0.30 m and forearms of 0.20 m: adult-sized (H36M's subjects:
thigh 0.43-0.49 m, shin 0.44-0.46 m, upper arm 0.26-0.30 m, forearm 0.24-0.26 m). CMU's hip
joints are narrower than H36M's (pelvis half-width 0.075 m vs 0.12-0.15 m); nothing is
rescaled to hide that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ....skeleton import Skeleton
from ..camera import project_to_2d, random_cameras, world_to_camera
from ._common import DataFormatError
from .poseset import PoseSet

__all__ = ["BVH", "BVHFormatError", "parse_bvh", "bvh_forward_kinematics", "load_bvh", "CMU31_TO_H36M16",
           "SKELETON_MAPS", "CMU_UNITS_TO_METRES"]

CMU_UNITS_TO_METRES = 0.0254 / 0.45

# h36m16 joint -> CMU joint name(s); several names mean their midpoint. Why these:
# * Hip: H36M's pelvis joint lies between its two hip joints (level with them). CMU's "Hips"
#   root sits ~0.10 m above its hip joints, which would make the hip bones slope steeply down
#   and the pelvis->spine bone too long, so the midpoint of the two UpLegs is used.
# * RHip/RKnee/RFoot = RightUpLeg/RightLeg/RightFoot: CMU names the joint at the *start* of a
#   segment, so UpLeg is the hip joint, Leg the knee and Foot the ankle (as in H36M).
# * Spine = Spine (0.22 m above the hip midpoint, as H36M's 0.22-0.26 m); Spine1 is 0.33 m up.
# * Thorax = Neck1, the base of the neck at shoulder height (H36M's thorax); CMU's "Neck"
#   has zero offset from Spine1, i.e. sits at the chest.
# * Head = the end site of Head: CMU's "Head" joint is the top of the neck (0.10 m above
#   Neck1), its end site the top of the head (0.20 m above Neck1; H36M's thorax->head
#   bone is 0.17-0.21 m).
# * LShoulder = LeftArm (the shoulder joint; CMU's "LeftShoulder" is the clavicle's root at the
#   spine), LElbow = LeftForeArm, LWrist = LeftHand; likewise on the right.
CMU31_TO_H36M16: dict[str, tuple[str, ...]] = {
    "Hip": ("LeftUpLeg", "RightUpLeg"),
    "RHip": ("RightUpLeg",), "RKnee": ("RightLeg",), "RFoot": ("RightFoot",),
    "LHip": ("LeftUpLeg",), "LKnee": ("LeftLeg",), "LFoot": ("LeftFoot",),
    "Spine": ("Spine",), "Thorax": ("Neck1",), "Head": ("HeadEnd",),
    "LShoulder": ("LeftArm",), "LElbow": ("LeftForeArm",), "LWrist": ("LeftHand",),
    "RShoulder": ("RightArm",), "RElbow": ("RightForeArm",), "RWrist": ("RightHand",),
}
SKELETON_MAPS: dict[str, Mapping[str, Sequence[str]]] = {"cmu31-to-h36m16": CMU31_TO_H36M16}

_CHANNELS = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")
_MIN_DEPTH = 0.5


class BVHFormatError(DataFormatError):
    """A malformed BVH file; the message names the file and the line."""


@dataclass
class BVH:
    """A parsed BVH file. Joints in file order (parents first); end sites kept separately."""

    path: str
    names: list[str]
    parents: list[int]
    offsets: torch.Tensor  # [J, 3] float64
    channels: list[tuple[str, ...]]  # per joint
    end_sites: list[tuple[int, tuple[float, float, float]]]  # (parent joint, offset)
    motion: torch.Tensor  # [T, sum of channel counts] float64
    frame_time: float

    @property
    def num_frames(self) -> int:
        return self.motion.shape[0]

    @property
    def num_joints(self) -> int:
        return len(self.names)


def _float(tok: str, path, lineno: int, what: str) -> float:
    try:
        value = float(tok)
    except ValueError:
        raise BVHFormatError(f"{path}, line {lineno}: {what} must be a number, got {tok!r}") from None
    if not math.isfinite(value):
        raise BVHFormatError(f"{path}, line {lineno}: {what} must be finite, got {tok!r}")
    return value


def parse_bvh(path: str | Path) -> BVH:
    """Parse a BVH file; :class:`BVHFormatError` names the file and line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BVH file not found: {path}")
    lines = path.read_text(errors="replace").splitlines()

    # ---- hierarchy: a token stream that remembers line numbers ----
    tokens: list[tuple[str, int]] = []
    motion_line = None
    for lineno, line in enumerate(lines, 1):
        words = line.split()
        if words and words[0] == "MOTION":
            motion_line = lineno
            break
        tokens.extend((w, lineno) for w in words)
    if not tokens or tokens[0][0] != "HIERARCHY":
        raise BVHFormatError(f"{path}, line {tokens[0][1] if tokens else 1}: expected 'HIERARCHY' to start the file")
    if motion_line is None:
        raise BVHFormatError(f"{path}, line {len(lines)}: no 'MOTION' section")

    names, parents, offsets, channels, end_sites = [], [], [], [], []
    stack: list[int] = []  # open blocks: joint index, or -1 - index into end_sites
    pending = None  # ("joint", name) or ("end",) waiting for its "{"
    i = 1
    closed_root = False

    def take(n: int, what: str) -> list[tuple[str, int]]:
        nonlocal i
        if i + n > len(tokens):
            raise BVHFormatError(f"{path}, line {tokens[-1][1]}: {what} is cut short before 'MOTION'")
        out = tokens[i:i + n]
        i += n
        return out

    while i < len(tokens):
        tok, ln = tokens[i]
        i += 1
        if closed_root:
            raise BVHFormatError(f"{path}, line {ln}: unexpected {tok!r} after the root's closing '}}' "
                                 "(only one ROOT is supported)")
        if pending is not None and tok != "{":
            raise BVHFormatError(f"{path}, line {ln}: expected '{{' after {pending[0]!r}, got {tok!r}")
        if tok in ("ROOT", "JOINT"):
            if (tok == "ROOT") != (not stack and not names):
                where = "the first joint must be ROOT" if tok == "JOINT" else "ROOT may only open the hierarchy"
                raise BVHFormatError(f"{path}, line {ln}: {where}")
            if stack and stack[-1] < 0:
                raise BVHFormatError(f"{path}, line {ln}: an End Site cannot have child joints")
            (name, nln), = take(1, f"{tok} name")
            if nln != ln:
                raise BVHFormatError(f"{path}, line {ln}: {tok} needs a name on the same line")
            if name in names:
                raise BVHFormatError(f"{path}, line {ln}: joint name {name!r} used twice")
            pending = (f"{tok} {name}", name)
        elif tok == "End":
            (site, _), = take(1, "End Site")
            if site != "Site":
                raise BVHFormatError(f"{path}, line {ln}: expected 'End Site', got 'End {site}'")
            if not stack or stack[-1] < 0:
                raise BVHFormatError(f"{path}, line {ln}: End Site outside a joint")
            pending = ("End Site", None)
        elif tok == "{":
            if pending is None:
                raise BVHFormatError(f"{path}, line {ln}: unexpected '{{'")
            if pending[1] is None:
                end_sites.append((stack[-1], None))
                stack.append(-len(end_sites))
            else:
                names.append(pending[1])
                parents.append(stack[-1] if stack else -1)
                offsets.append(None)
                channels.append(())
                stack.append(len(names) - 1)
            pending = None
        elif tok == "}":
            if not stack:
                raise BVHFormatError(f"{path}, line {ln}: unmatched '}}'")
            top = stack.pop()
            if (top >= 0 and offsets[top] is None) or (top < 0 and end_sites[-1 - top][1] is None):
                what = names[top] if top >= 0 else "End Site"
                raise BVHFormatError(f"{path}, line {ln}: {what} has no OFFSET")
            closed_root = not stack
        elif tok == "OFFSET":
            if not stack:
                raise BVHFormatError(f"{path}, line {ln}: OFFSET outside a joint")
            vals = take(3, "OFFSET")
            if any(v_ln != ln for _, v_ln in vals):
                raise BVHFormatError(f"{path}, line {ln}: OFFSET needs 3 numbers on its line")
            off = tuple(_float(v, path, ln, "OFFSET") for v, _ in vals)
            if stack[-1] >= 0:
                offsets[stack[-1]] = off
            else:
                end_sites[-1 - stack[-1]] = (end_sites[-1 - stack[-1]][0], off)
        elif tok == "CHANNELS":
            if not stack or stack[-1] < 0:
                raise BVHFormatError(f"{path}, line {ln}: CHANNELS outside a joint")
            (count, _), = take(1, "CHANNELS")
            if not count.isdigit():
                raise BVHFormatError(f"{path}, line {ln}: CHANNELS count must be an integer, got {count!r}")
            chans = tuple(c for c, _ in take(int(count), "CHANNELS"))
            bad = [c for c in chans if c not in _CHANNELS]
            if bad or len(set(chans)) != len(chans):
                raise BVHFormatError(f"{path}, line {ln}: bad channel list {list(chans)} "
                                     f"(allowed: {', '.join(_CHANNELS)}, each at most once)")
            channels[stack[-1]] = chans
        else:
            raise BVHFormatError(f"{path}, line {ln}: unexpected {tok!r} in HIERARCHY")
    if stack or pending is not None or not names:
        raise BVHFormatError(f"{path}, line {motion_line}: HIERARCHY is not closed before 'MOTION'")

    # ---- motion ----
    rest = [(n, lines[n - 1].split()) for n in range(motion_line + 1, len(lines) + 1)]
    rest = [(n, w) for n, w in rest if w]
    if len(rest) < 2 or rest[0][1][:1] != ["Frames:"] or len(rest[0][1]) != 2 or not rest[0][1][1].isdigit():
        ln = rest[0][0] if rest else motion_line
        raise BVHFormatError(f"{path}, line {ln}: expected 'Frames: <count>' after MOTION")
    frames = int(rest[0][1][1])
    if rest[1][1][:2] != ["Frame", "Time:"] or len(rest[1][1]) != 3:
        raise BVHFormatError(f"{path}, line {rest[1][0]}: expected 'Frame Time: <seconds>'")
    frame_time = _float(rest[1][1][2], path, rest[1][0], "Frame Time")
    width = sum(len(c) for c in channels)
    data = rest[2:]
    if len(data) != frames:
        ln = data[-1][0] if data else rest[1][0]
        raise BVHFormatError(f"{path}, line {ln}: 'Frames: {frames}' but {len(data)} frame lines follow")
    for n, words in data:
        if len(words) != width:
            raise BVHFormatError(f"{path}, line {n}: expected {width} channel values, got {len(words)}")
    try:
        motion = np.array([w for _, words in data for w in words], dtype=np.float64).reshape(frames, width)
    except ValueError:
        for n, words in data:  # find the offending line
            for w in words:
                _float(w, path, n, "a channel value")
        raise
    if not np.isfinite(motion).all():  # nan / inf parse as floats: name the first such line
        for n, words in data:
            for w in words:
                _float(w, path, n, "a channel value")
    return BVH(str(path), names, parents, torch.tensor(offsets, dtype=torch.float64), channels,
               [(p, o) for p, o in end_sites], torch.from_numpy(motion), frame_time)


def _axis_rotation(axis: str, deg: torch.Tensor) -> torch.Tensor:
    a = deg * (math.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    rows = {"X": (o, z, z, z, c, -s, z, s, c),
            "Y": (c, z, s, z, o, z, -s, z, c),
            "Z": (c, -s, z, s, c, z, z, z, o)}[axis]
    return torch.stack(rows, -1).view(*a.shape, 3, 3)


def bvh_forward_kinematics(bvh: BVH, *, frames: slice | torch.Tensor | None = None,
                           include_end_sites: bool = False) -> tuple[list[str], list[int], torch.Tensor]:
    """World positions of every joint: ``(names, parents, positions [T, J(+E), 3])`` in file units.

    ``include_end_sites`` appends end sites named ``<parent>End`` (e.g. ``HeadEnd``).
    """
    motion = bvh.motion if frames is None else bvh.motion[frames]
    T = motion.shape[0]
    rot: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    col = 0
    for j, (parent, chans) in enumerate(zip(bvh.parents, bvh.channels)):
        t = bvh.offsets[j].expand(T, 3).clone()
        R = torch.eye(3, dtype=motion.dtype).expand(T, 3, 3)
        for ch in chans:
            values = motion[:, col]
            col += 1
            axis = "XYZ".index(ch[0])
            if ch.endswith("position"):
                t[:, axis] = values
            else:
                R = R @ _axis_rotation(ch[0], values)
        if parent < 0:
            rot.append(R)
            pos.append(t)
        else:
            rot.append(rot[parent] @ R)
            pos.append(pos[parent] + (rot[parent] @ t.unsqueeze(-1)).squeeze(-1))
    names, parents = list(bvh.names), list(bvh.parents)
    if include_end_sites:
        for parent, off in bvh.end_sites:
            names.append(f"{bvh.names[parent]}End")
            parents.append(parent)
            pos.append(pos[parent] + rot[parent] @ torch.tensor(off, dtype=motion.dtype))
    return names, parents, torch.stack(pos, dim=1)


def _bvh_files(paths_or_dir) -> list[Path]:
    if isinstance(paths_or_dir, (str, Path)):
        p = Path(paths_or_dir)
        if p.is_dir():
            files = sorted(p.glob("*.bvh"))
            if not files:
                raise FileNotFoundError(f"no .bvh files in directory {p}")
            return files
        return [p]
    return [Path(p) for p in paths_or_dir]


def _to_h36m16(bvh: BVH, mapping: Mapping[str, Sequence[str]], sk: Skeleton, stride: int) -> torch.Tensor:
    """``[T, 16, 3]`` h36m16 joints in BVH units and axes."""
    names, _, pos = bvh_forward_kinematics(bvh, frames=slice(None, None, stride), include_end_sites=True)
    missing_out = [j for j in sk.names if j not in mapping]
    if missing_out:
        raise ValueError(f"skeleton map lacks h36m16 joints {missing_out}")
    index = {n: i for i, n in enumerate(names)}
    wanted = [[s] if isinstance(s, str) else list(s) for s in (mapping[j] for j in sk.names)]
    unknown = sorted({n for src in wanted for n in src if n not in index})
    if unknown:
        raise BVHFormatError(f"{bvh.path}: joints {unknown} of the skeleton map are not in the file "
                             f"(it has {bvh.names}; end sites are named '<parent>End')")
    return torch.stack([pos[:, [index[n] for n in src]].mean(1) for src in wanted], dim=1)


def load_bvh(paths_or_dir: str | Path | Iterable[str | Path], *,
             skeleton_map: str | Mapping[str, Sequence[str]] = "cmu31-to-h36m16",
             units_to_metres: float = CMU_UNITS_TO_METRES, stride: int = 1, seed: int = 0,
             views: int = 1) -> PoseSet:
    """BVH files (a directory means its ``*.bvh``, sorted) as an h36m16 :class:`PoseSet`.

    Per frame: map to h36m16, scale to metres, y-up BVH world -> z-up world (floor at the
    file's lowest joint), move the pelvis over the origin (its height kept), then view it
    from ``views`` random H36M-like cameras (:func:`..camera.random_cameras`, aimed at the
    pelvis, drawn independently per frame and view); a camera under which a joint would be
    nearer than 0.5 m or off the image is redrawn. Deterministic in ``seed``. Actions are the
    file stems. ``stride`` keeps every ``stride``-th frame (CMU is 120 Hz).
    """
    if isinstance(skeleton_map, str):
        if skeleton_map not in SKELETON_MAPS:
            raise ValueError(f"unknown skeleton_map {skeleton_map!r}; known: {sorted(SKELETON_MAPS)}")
        skeleton_map = SKELETON_MAPS[skeleton_map]
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be a positive int, got {views!r}")
    if not units_to_metres > 0:
        raise ValueError(f"units_to_metres must be positive, got {units_to_metres!r}")
    sk = Skeleton.h36m16()
    g = torch.Generator().manual_seed(int(seed))
    files = _bvh_files(paths_or_dir)
    out3, out2, outc, outa, action_names = [], [], [], [], []
    for fi, path in enumerate(files):
        joints = _to_h36m16(parse_bvh(path), skeleton_map, sk, stride) * units_to_metres
        world = torch.stack([joints[..., 0], -joints[..., 2], joints[..., 1]], dim=-1)  # y-up -> z-up, proper rotation
        world[..., 2] -= world[..., 2].min()
        world[..., :2] -= world[:, sk.root:sk.root + 1, :2].clone()
        world = world.repeat(views, 1, 1)
        x3d, x2d, cams = _view(world, sk.root, g, path)
        action_names.append(path.stem)
        out3.append(x3d), out2.append(x2d), outc.append(cams)
        outa.append(torch.full((x3d.shape[0],), fi, dtype=torch.int64))
    return PoseSet(torch.cat(out3).float(), torch.cat(out2).float(), torch.cat(outc).float(), torch.cat(outa),
                   action_names, "bvh:" + "+".join(action_names), sk)


def _view(world: torch.Tensor, root: int, g: torch.Generator, path, tries: int = 50):
    """Camera-frame 3D, 2D and intrinsics for ``world [N, J, 3]``, one valid random camera per pose."""
    n = world.shape[0]
    x3d = torch.empty_like(world)
    x2d = world.new_empty(n, world.shape[1], 2)
    cams = world.new_empty(n, 9)
    todo = torch.arange(n)
    for _ in range(tries):
        c = random_cameras(todo.numel(), generator=g, target=world[todo, root], dtype=world.dtype)
        p3 = world_to_camera(world[todo], c.R, c.T)
        p2 = project_to_2d(p3, c.intrinsics)
        ok = (p3[..., 2] > _MIN_DEPTH).all(1) & (p2.abs() <= 1).all(2).all(1)
        x3d[todo[ok]], x2d[todo[ok]], cams[todo[ok]] = p3[ok], p2[ok], c.intrinsics[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            return x3d, x2d, cams
    raise DataFormatError(f"{path}: {todo.numel()} frames fit no camera (joints > 4 m from the pelvis? "
                          "wrong units_to_metres?)")
