"""Training and evaluation sets for a PoseAug run, from the config.

Training: ``synthetic`` (generated here, ``subset`` narrow/broad), ``h36m`` (S1, S5-S8 of the
VideoPose3D files) or ``bvh`` (motion capture; the last 20 % of the frames are held out).
Evaluation: the source's own test split, plus every ``--eval kind:path`` entry. 3DHP is
evaluated with the test-time flip, as released (it does not help on H36M there).
"""
from __future__ import annotations

import torch

from .config import Config
from .data import PoseSet, bvh, h36m, mpi3dhp, synthetic

TEST_SEED_OFFSET = 1_000_003  # synthetic test poses never share a seed with training poses


def _source_split(cfg: Config) -> tuple[PoseSet, str, PoseSet]:
    """The training set and the source's own test split (name, set); each file is read once."""
    if cfg.data == "synthetic":
        name = f"synthetic-{cfg.subset}"
        return synthetic.generate(cfg.train_size, subset=cfg.subset, seed=cfg.seed), name, _load_eval(name, None, cfg)[0]
    if cfg.data == "h36m":
        kw = dict(cameras=cfg.cameras, stride=cfg.stride, keypoints=cfg.keypoints)
        return (h36m.load_h36m(cfg.data_dir, h36m.H36M_TRAIN, **kw), "h36m",
                h36m.load_h36m(cfg.data_dir, h36m.H36M_TEST, **kw))
    if cfg.data == "bvh":
        train, test = _split_frames(bvh.load_bvh(cfg.data_dir, skeleton_map=cfg.skeleton_map, stride=cfg.stride,
                                                 seed=cfg.seed))
        return train, "bvh", test
    raise ValueError(f"data must be one of synthetic, h36m, bvh, got {cfg.data!r}")


def _split_frames(poses: PoseSet, held_out: float = 0.2) -> tuple[PoseSet, PoseSet]:
    """Contiguous split: neighbouring mocap frames are near-duplicates, so a random split
    would leak training poses into the test set."""
    cut = int(len(poses) * (1 - held_out))
    return (poses.subset(torch.arange(cut), poses.name + "-train"),
            poses.subset(torch.arange(cut, len(poses)), poses.name + "-test"))


def _load_eval(kind: str, path: str | None, cfg: Config) -> tuple[PoseSet, bool]:
    if kind.startswith("synthetic"):
        subset = kind.split("-", 1)[1]
        return synthetic.generate(cfg.test_size, subset=subset, seed=cfg.seed + TEST_SEED_OFFSET), False
    if kind == "h36m":
        return h36m.load_h36m(path, h36m.H36M_TEST, cameras=None, stride=cfg.stride, keypoints=cfg.keypoints), False
    if kind == "3dhp":
        return mpi3dhp.load_3dhp(path), True
    if kind == "bvh":
        return bvh.load_bvh(path, skeleton_map=cfg.skeleton_map, stride=cfg.stride,
                            seed=cfg.seed + TEST_SEED_OFFSET), False
    raise ValueError(f"unknown evaluation kind {kind!r}")


def load_datasets(cfg: Config) -> tuple[PoseSet, dict[str, tuple[PoseSet, bool]]]:
    """The training set and the evaluation sets, name -> (pose set, test-time flip); the first
    evaluation set is the source's own test split."""
    train_set, name, test_set = _source_split(cfg)
    sets: dict[str, tuple[PoseSet, bool]] = {name: (test_set, False)}
    for spec in cfg.eval:
        kind, _, path = spec.partition(":")
        if kind in sets and not path:  # the source's own test split already covers it
            continue
        name = kind if kind not in sets else f"{kind}:{path}"
        sets[name] = _load_eval(kind, path or None, cfg)
    for name, (pose_set, _) in sets.items():
        if pose_set.skeleton.num_joints != train_set.skeleton.num_joints:
            raise ValueError(f"evaluation set {name!r} has {pose_set.skeleton.num_joints} joints, the training data "
                             f"{train_set.skeleton.num_joints}")
    return train_set, sets
