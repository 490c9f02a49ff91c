"""One training step of every method, built the way its trainer builds it, for timing side by side:
``bench/bench_steps.py`` (the step table and profile shares) and the main job (``fastsmall.demo``,
the speed-up it prints) call the same builders. Each builder takes a method's Config fields
(``impl``, ``compile``, ``precision``, ...) and returns a no-argument function that runs one step
(CReST+), one epoch (KE, DSD) or one G+D iteration (PoseAug).
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

import torch

from .common import Distributed
from .crest.config import Config as CrestConfig
from .crest.train import CReSTTrainer
from .dsd.config import Config as DSDConfig
from .dsd.train import DSDTrainer
from .ke.config import Config as KEConfig
from .ke.train import KETrainer

__all__ = ["crest", "ke", "dsd", "poseaug", "poseaug_configs", "methods", "CNN_CONFIGS", "POSEAUG_BATCH",
           "time_interleaved"]

CNN_CONFIGS = {
    "official fp32": dict(impl="official"),
    "fastsmall fp32": {},
    "+ compile": dict(compile=True),
    "+ bf16 + channels-last": dict(precision="bf16", channels_last=True),
    "+ all three": dict(precision="bf16", channels_last=True, compile=True),
}
POSEAUG_BATCH = 1024


def crest(**kw):
    cfg = CrestConfig(plus=True, quiet=True, out=tempfile.mkdtemp(), steps_per_epoch=1, epochs=10 ** 6, **kw)
    t = CReSTTrainer(cfg, Distributed(torch.device("cpu")))
    t._fresh_generation_state()
    t.steps_total = 10 ** 6
    return t._train_epoch


def ke(**kw):
    cfg = KEConfig(quiet=True, out=tempfile.mkdtemp(), epochs=10, warmup_epochs=1, **kw)
    t = KETrainer(cfg, Distributed(torch.device("cpu")))
    t.build_model()
    return t.train_epoch


def dsd(**kw):
    """An epoch of the sparse phase (generation 2): masks from the initial weights, masked_mul_ per step."""
    cfg = DSDConfig(quiet=True, out=tempfile.mkdtemp(), epochs=10, warmup_epochs=1, **kw)
    t = DSDTrainer(cfg, Distributed(torch.device("cpu")))
    t.build_model()
    t.generation = 2
    t.begin_generation()  # magnitude masks, first prune, fresh optimizer
    return t.train_epoch


def poseaug_configs() -> tuple[dict, str | None]:
    """PoseAug's configurations, and a note on what is skipped (Config without compile / precision)."""
    from fastsmall.methods.poseaug.config import Config
    fields = {f.name for f in dataclasses.fields(Config)}
    configs = {"official fp32": dict(impl="official"), "fastsmall fp32": dict(impl="fused")}
    missing = [f for f in ("compile", "precision") if f not in fields]
    if "compile" in fields:
        configs["+ compile"] = dict(impl="fused", compile=True)
    if "precision" in fields:
        configs["+ bf16"] = dict(impl="fused", precision="bf16")
    if not missing:
        configs["+ compile + bf16"] = dict(impl="fused", compile=True, precision="bf16")
    note = (f"poseaug's Config has no field {' / '.join(missing)}: those rows are skipped" if missing else None)
    return configs, note


_POSES = {}


def poseaug(**kw):
    """One PoseAug G+D iteration at B = 1,024 with the SimpleBaseline estimator (bench/poseaug_paired.py)."""
    from fastsmall.methods.poseaug.config import Config
    from fastsmall.methods.poseaug.data import synthetic
    from fastsmall.methods.poseaug.estimators import build_estimator
    from fastsmall.methods.poseaug.gan import AugmentationGAN
    if "poses" not in _POSES:
        _POSES["poses"] = synthetic.generate(POSEAUG_BATCH, seed=0)
    poses = _POSES["poses"]
    torch.manual_seed(0)
    cfg = Config(quiet=True, out=tempfile.mkdtemp(), **kw)
    gan = AugmentationGAN(cfg, poses.skeleton, torch.device("cpu"))
    model = build_estimator("simple_baseline", poses.skeleton, impl=cfg.impl).train()

    def iteration():
        out, rt_2d, _ = gan.generator_step(poses.poses_3d, poses.cams, model, epoch=5)
        gan.discriminator_step(poses.poses_3d, poses.poses_2d, out["pose_ba"], rt_2d)

    return iteration


def methods():
    """(key, title, make, unit, configurations, note) of every row."""
    pa_configs, pa_note = poseaug_configs()
    return [
        ("crest", "CReST+ step (digits-LT, 32 + 2 x 224 images)", crest, "step", CNN_CONFIGS, None),
        ("ke", "KE epoch (digits-small, 100 images, batch 32)", ke, "epoch", CNN_CONFIGS, None),
        ("dsd", "DSD sparse-phase epoch (digits-small, 100 images, batch 32, 30 % pruned)", dsd, "epoch",
         CNN_CONFIGS, None),
        ("poseaug", f"PoseAug G+D iteration (B = {POSEAUG_BATCH:,}, SimpleBaseline estimator)", poseaug, "iteration",
         pa_configs, pa_note),
    ]



def time_interleaved(runs: dict, repeats: int, steps: int) -> dict:
    """Median ms per step of each ``runs[label]()``, the labels timed in turn within every repeat
    (a drift of the machine's speed hits all of them alike)."""
    times = {label: [] for label in runs}
    for _ in range(repeats):
        for label, fn in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[label].append((time.perf_counter() - start) / steps * 1e3)
    return {label: statistics.median(v) for label, v in times.items()}
