"""PoseAug training, as the released ``run_poseaug.py``:

    stage 0 (unless --pretrained): train the estimator on real data       (poseaug-baseline)
    evaluate the estimator
    for epoch e = 1 .. E:
        swap bone lengths of the training poses for random templates, re-project
        for each batch (X, camera) of the swapped set:
            augmentor step (adversarial 2D + 3D, regularisers, feedback after the warm-up)
            every df-th iteration: discriminator steps on real targets vs pooled fakes
            keep the augmented pairs (X'_rt, x'_rt) that stay inside the image
        if e > warm-up: train the estimator once on the augmented pairs, once on real data
        evaluate; decay every learning rate linearly

``augment=False`` is the baseline at equal schedule: the same stage 0 and the same real
passes after the warm-up, without the augmentor. Checkpoints (atomic) after every epoch;
``resume=True`` continues a killed run and ends with the same metrics: every epoch reseeds
noise, permutations and pool draws from (seed, stage, epoch, rank). Under torchrun each
rank takes its share of every batch and gradients are averaged (BatchNorm statistics stay
per rank, as with DistributedDataParallel; rank 0's are broadcast after every epoch).

``--compile`` / ``--precision`` (``methods/common/speed.py``, ``gan.py``): the estimator's training
step (forward and MSE loss; AOTAutograd compiles the backward) is one static-shape graph for the
full batches; the last batch of a pass, whose size follows the number of kept augmented poses
and so changes every epoch, runs one graph compiled with a dynamic batch size (padding is not
exact: BatchNorm in train mode would see the pad rows). See ``_estimator_steps``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ...skeleton import Skeleton
from ..common import CheckpointError, Distributed, derive_seed, load_checkpoint, save_checkpoint
from ..common.speed import StepSpeed
from ..common.trainer import Trainer, run_trainer
from .camera import project_to_2d
from .config import Config
from .data import PoseSet
from .datasets import load_datasets
from .diagnostics import AugmentorMonitor, real_depth
from .estimators import build_estimator
from .gan import AugmentationGAN, set_requires_grad
from .metrics import evaluate

STAGE_BASELINE, STAGE_POSEAUG = 0, 1


def estimator_overrides(cfg: Config) -> dict:
    if cfg.estimator_width is None:
        return {}
    w = cfg.estimator_width
    if cfg.estimator == "stgcn":  # released widths (128, 128, 256) and 512 on the part graph, scaled
        return {"channels": (max(1, w // 2), max(1, w // 2), w), "pool_channels": 2 * w}
    key = {"simple_baseline": "linear_size", "videopose": "channels", "semgcn": "hid_dim"}[cfg.estimator]
    return {key: w}


def linear_decay(epoch: int, epochs: int) -> float:
    """Released ``get_scheduler(policy='lambda', nepoch_fix=0)``: 1 - e / (E + 1)."""
    return 1.0 - epoch / float(epochs + 1)


def swap_bone_lengths(poses: PoseSet, templates: torch.Tensor, generator: torch.Generator) -> PoseSet:
    """Released ``random_bl_aug``: every pose takes the bone lengths of a random template
    (same directions, same root, same camera) and is re-projected."""
    sk = poses.skeleton
    pick = torch.randint(0, templates.shape[0], (len(poses),), generator=generator, device=templates.device)
    unit, _ = ops.bone_decompose(poses.poses_3d, sk)
    root = poses.poses_3d[:, sk.root:sk.root + 1]
    poses_3d = ops.kcs_inverse(unit * templates[pick].unsqueeze(-1), sk, root)
    return PoseSet(poses_3d, project_to_2d(poses_3d, poses.cams), poses.cams, poses.actions,
                   list(poses.action_names), poses.name + "+bl-swap", sk)


class PoseAugTrainer(Trainer):
    method = "poseaug"

    def __init__(self, cfg: Config, dist: Distributed, *, stage0_only: bool = False):
        super().__init__(cfg, dist)
        self.speed = StepSpeed(cfg, self.device, self.say)
        self.stage0_only = stage0_only
        train_set, self.eval_sets = load_datasets(cfg)  # eval: name -> (PoseSet on CPU, flip)
        self.train_set = train_set.to(self.device)
        self.skeleton: Skeleton = self.train_set.skeleton
        self.templates = self._bone_length_templates()
        self.real_depth = real_depth(self.train_set.poses_3d, self.skeleton)  # what a trained augmentor keeps
        self.per_rank = max(2, cfg.batch_size // dist.world_size)
        self.stage0_epochs = 0 if cfg.pretrained else cfg.baseline_epochs
        self.poseaug_epochs = 0 if stage0_only else cfg.epochs
        # progress (all of it is in the checkpoint)
        self.stage, self.epoch, self.iteration = STAGE_BASELINE, 0, 0
        self.records: list[dict] = []
        self._build()

    # ---- models --------------------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        torch.manual_seed(derive_seed(cfg.seed, 7))
        self.estimator = build_estimator(cfg.estimator, self.skeleton, impl=cfg.impl,
                                         **estimator_overrides(cfg)).to(self.device)
        self.gan = (AugmentationGAN(cfg, self.skeleton, self.device, speed=self.speed)
                    if cfg.augment and not self.stage0_only else None)
        self._fresh_estimator_optimizer(cfg.lr_p)
        self._estimator_full, self._estimator_ragged = self._estimator_steps()

    def _fresh_estimator_optimizer(self, lr: float):
        self.lr_estimator = lr
        self.opt_p = self.speed.adam(self.estimator.parameters(), lr=lr)

    def _bone_length_templates(self) -> torch.Tensor:
        if self.cfg.bl_templates:
            path = self.cfg.bl_templates
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"bl_templates {path}: cannot read a .npy array ({exc})") from None
            if not isinstance(array, np.ndarray):  # an .npz archive
                raise ValueError(f"bl_templates {path}: expected a .npy array [S, {self.skeleton.num_bones}], "
                                 f"got an .npz archive (save the array alone with np.save)")
            if array.ndim != 2 or array.shape[1] != self.skeleton.num_bones or not np.issubdtype(array.dtype, np.number):
                raise ValueError(f"bl_templates {path}: expected shape [S, {self.skeleton.num_bones}] (numeric bone "
                                 f"lengths in metres), got {array.dtype} {tuple(array.shape)}")
            if array.shape[0] == 0 or not np.isfinite(array).all() or (array <= 0).any():
                raise ValueError(f"bl_templates {path}: every bone length must be finite and > 0 "
                                 f"({array.shape[0]} templates)")
            return torch.from_numpy(array.astype(np.float32)).to(self.device)
        _, lengths = ops.bone_decompose(self.train_set.poses_3d, self.skeleton)
        return lengths.squeeze(-1)

    def _sync_buffers(self) -> None:
        self.dist.broadcast_buffers(self.estimator, *(self.gan.models if self.gan else []))

    # ---- batches -------------------------------------------------------------------------
    def _shard(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """This rank's batches of one epoch: a permutation shared by all ranks, split into global
        batches, each sharded by rank. Like the released DataLoader the last batch may be
        partial, but a batch of fewer than 2 poses per rank is dropped (BatchNorm needs 2)."""
        perm = torch.randperm(n, generator=generator)
        W, b = self.dist.world_size, self.per_rank
        batches = []
        for start in range(0, n - n % W, b * W):
            chunk = perm[start:min(start + b * W, n - n % W)]
            mine = chunk[self.dist.rank::W]
            if mine.numel() >= 2:
                batches.append(mine)
        return batches

    def _epoch_generator(self, salt: int, device=None) -> torch.Generator:
        """A generator seeded from (seed, stage, epoch, salt): an epoch replays exactly on resume."""
        return torch.Generator(device=device or "cpu").manual_seed(
            derive_seed(self.cfg.seed, self.stage, self.epoch, salt))

    # ---- estimator training (released train_posenet) ---------------------------------------
    def _estimator_loss(self, inputs_2d: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The estimator step's forward and loss (predictions float32 before the loss under bf16)."""
        with self.speed.autocast():
            pred = self.estimator(inputs_2d)
        return F.mse_loss(pred.float(), target)

    def _estimator_loss_ragged(self, inputs_2d: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The same, for a pass's last, partial batch (its own code object: its own compiled graph)."""
        return self._estimator_loss(inputs_2d, target)

    def _estimator_steps(self):
        """(full-batch step, partial-batch step). Under --compile: a static-shape graph for the
        full batches and one graph with a dynamic batch size for the last, partial batch of a pass,
        whose size changes with the kept-pose count every epoch. Measured (README, "Fast training
        steps"): the dynamic graph runs a partial batch faster than eager and than padding to the
        static batch (which is not exact either: BatchNorm in train mode would see the pad rows),
        and a static graph per size would recompile every epoch (45 s each for SimpleBaseline)."""
        return (self.speed.compile(self._estimator_loss),
                self.speed.compile(self._estimator_loss_ragged, dynamic=True))

    def _train_estimator(self, poses_3d: torch.Tensor, poses_2d: torch.Tensor, salt: int, desc: str) -> float:
        n = poses_3d.shape[0]
        if self.dist.enabled:  # every rank must take the same number of steps
            counts = self.dist.all_gather_cat(torch.tensor([n], device=self.device))
            n = int(counts.min())
        batches = self._shard(n, self._epoch_generator(salt))
        set_requires_grad([self.estimator], True)
        self.estimator.train()
        total, count = 0.0, 0
        for idx in self.progress(batches, desc=desc):
            idx = idx.to(self.device)
            target = poses_3d[idx] - poses_3d[idx, :1]
            step = self._estimator_full if idx.numel() == self.per_rank else self._estimator_ragged
            loss = step(poses_2d[idx], target)
            self.opt_p.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.average_gradients(self.estimator)
            if self.cfg.max_norm:
                nn.utils.clip_grad_norm_(self.estimator.parameters(), max_norm=self.cfg.max_norm)
            self.opt_p.step()
            total, count = total + float(loss.detach()), count + 1
        return total / max(count, 1)

    def _set_estimator_lr(self, scale: float) -> None:
        for group in self.opt_p.param_groups:
            group["lr"] = self.lr_estimator * scale

    # ---- one PoseAug epoch (released train_gan + train_posenet) --------------------------------
    def _poseaug_epoch(self) -> dict:
        cfg, gan = self.cfg, self.gan
        torch.manual_seed(derive_seed(cfg.seed, self.stage, self.epoch, self.dist.rank, 3))
        # pool draws differ per rank; the bone-length swap is the same on every rank
        pool_rng = self._epoch_generator(100 + self.dist.rank, self.device)
        swapped = swap_bone_lengths(self.train_set, self.templates, self._epoch_generator(1, self.device))
        n = len(swapped)
        sums: dict[str, float] = {}
        g_steps = d_steps = 0
        self.estimator.train()
        for m in gan.models:
            m.train()
        for gan_pass in range(cfg.gan_passes):
            g_batches, d3_batches, d2_batches = (self._shard(n, self._epoch_generator(10 * gan_pass + s))
                                                 for s in (2, 3, 4))
            kept_3d, kept_2d = [], []  # the estimator trains on the last pass's augmented poses
            monitor = AugmentorMonitor(self.skeleton)  # has the augmentor learned? (the last pass's poses)
            for s in self.progress(range(len(g_batches)), desc=f"poseaug epoch {self.epoch}"
                                   + (f" pass {gan_pass}" if cfg.gan_passes > 1 else "")):
                idx = g_batches[s].to(self.device)
                out, rt_2d, log = gan.generator_step(swapped.poses_3d[idx], swapped.cams[idx], self.estimator,
                                                     self.epoch, self.dist.average_gradients)
                if self.iteration % cfg.df == 0:
                    d3, d2 = d3_batches[s].to(self.device), d2_batches[s].to(self.device)
                    log.update(gan.discriminator_step(swapped.poses_3d[d3], swapped.poses_2d[d2], out["pose_ba"],
                                                      rt_2d, generator=pool_rng,
                                                      average_gradients=self.dist.average_gradients))
                    d_steps += 1
                # released keeps the augmented pairs with no projected coordinate above 1
                valid = (rt_2d > 1).sum((1, 2)) < 1
                kept_3d.append(out["pose_rt"].detach()[valid])
                kept_2d.append(rt_2d[valid])
                monitor.add(out, valid)
                for k, v in log.items():
                    sums[k] = sums.get(k, 0.0) + v
                self.iteration += 1
                g_steps += 1
        record = {k: v / max(d_steps if k.startswith("d_") else g_steps, 1) for k, v in sums.items()}
        J = self.skeleton.num_joints
        fake_3d = torch.cat(kept_3d) if kept_3d else self.train_set.poses_3d.new_empty(0, J, 3)
        fake_2d = torch.cat(kept_2d) if kept_2d else self.train_set.poses_2d.new_empty(0, J, 2)
        record["augmented_kept"] = fake_3d.shape[0]
        record.update(monitor.summary())
        record.update(self.real_depth)
        if self.epoch + 1 > cfg.warmup:
            record["estimator_loss_augmented"] = self._train_estimator(fake_3d, fake_2d, 5, "estimator (augmented)")
            record["estimator_loss_real"] = self._train_estimator(self.train_set.poses_3d, self.train_set.poses_2d, 6,
                                                                  "estimator (real)")
        self._last_augmented = {**out, "source": swapped.poses_3d[idx]}  # the last batch, for the plot
        return record

    def _baseline_epoch(self) -> dict:
        """Stage 0, or an epoch of the no-augmentation baseline: one pass over real data."""
        torch.manual_seed(derive_seed(self.cfg.seed, self.stage, self.epoch, self.dist.rank, 3))
        if self.stage == STAGE_POSEAUG and self.epoch + 1 <= self.cfg.warmup:
            return {}
        return {"estimator_loss_real": self._train_estimator(self.train_set.poses_3d, self.train_set.poses_2d, 6,
                                                             "estimator (real)")}

    # ---- evaluation -----------------------------------------------------------------------
    def _evaluate(self) -> dict:
        return {name: evaluate(self.estimator, pose_set.to(self.device), flip=flip)
                for name, (pose_set, flip) in self.eval_sets.items()}

    # ---- the Trainer contract --------------------------------------------------------------
    def fingerprint_extra(self) -> dict:
        return {"stage0_only": self.stage0_only}

    def state(self) -> dict:
        state = {"stage": self.stage, "epoch": self.epoch, "iteration": self.iteration,
                 "estimator": self.estimator.state_dict(), "opt_p": self.opt_p.state_dict(),
                 "lr_estimator": self.lr_estimator, "records": self.records}
        if self.gan is not None:
            state["gan"] = self.gan.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        self.stage, self.epoch, self.iteration = state["stage"], state["epoch"], state["iteration"]
        self.records = state["records"]
        self.estimator.load_state_dict(state["estimator"])
        self._fresh_estimator_optimizer(state["lr_estimator"])
        self.speed.load_optimizer_state(self.opt_p, state["opt_p"])
        if self.gan is not None:
            self.gan.load_state_dict(state["gan"])

    def checkpoint(self) -> None:
        super().checkpoint()
        if self.dist.is_main:  # the estimator alone, for `fastsmall poseaug --pretrained`
            save_checkpoint(self.run.root / "checkpoints" / "estimator.pt",
                            {"estimator": self.cfg.estimator, "skeleton_parents": list(self.skeleton.parents),
                             "state_dict": self.estimator.state_dict()})

    def _load_pretrained(self) -> None:
        state = load_checkpoint(self.cfg.pretrained, map_location=self.device)
        if state.get("estimator") != self.cfg.estimator or "state_dict" not in state:
            raise CheckpointError(f"pretrained {self.cfg.pretrained}: holds estimator {state.get('estimator')!r}, "
                                  f"expected {self.cfg.estimator!r} weights from `fastsmall poseaug-baseline`")
        if tuple(state.get("skeleton_parents", ())) != self.skeleton.parents:
            raise CheckpointError(f"pretrained {self.cfg.pretrained}: trained for another skeleton")
        self.estimator.load_state_dict(state["state_dict"])

    def log(self, record: dict) -> None:
        self.records.append(record)
        super().log(record)

    # ---- the algorithm ----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.pretrained:
            self._load_pretrained()
        if self.stage0_epochs == 0:
            self._begin_poseaug()

    def loop(self) -> None:
        cfg = self.cfg
        while self.stage == STAGE_BASELINE and self.epoch < self.stage0_epochs:
            self._run_epoch(self._baseline_epoch, linear_decay(self.epoch, self.stage0_epochs))
        if self.stage == STAGE_BASELINE:  # also when a run stopped right after stage 0's last checkpoint
            self._begin_poseaug()
            self.checkpoint()
        while self.stage == STAGE_POSEAUG and self.epoch < self.poseaug_epochs:
            scale = linear_decay(self.epoch, cfg.epochs)
            if self.gan is not None:
                self.gan.set_lr_scale(scale)
            self._run_epoch(self._poseaug_epoch if self.gan is not None else self._baseline_epoch, scale)

    def _begin_poseaug(self) -> None:
        """Evaluate the (pre)trained estimator (the released epoch-0 evaluation) and switch stage."""
        self.log({"type": "initial", "stage": "poseaug", "eval": self._evaluate()})
        self.stage, self.epoch = STAGE_POSEAUG, 0
        self._fresh_estimator_optimizer(self.cfg.lr_p_poseaug)

    def _run_epoch(self, body, lr_scale: float) -> None:
        start = time.perf_counter()
        self._set_estimator_lr(lr_scale)
        record = body()
        self._sync_buffers()
        stage = "baseline" if self.stage == STAGE_BASELINE else ("poseaug" if self.gan is not None else "no-augment")
        record = {"type": "epoch", "stage": stage, "epoch": self.epoch, "lr_scale": lr_scale, **record,
                  "eval": self._evaluate(), "seconds": time.perf_counter() - start}
        self.log(record)
        first = next(iter(record["eval"]))
        self.say(f"{stage} epoch {self.epoch}: {first} MPJPE {record['eval'][first]['mpjpe']:.1f} mm, "
                 f"P-MPJPE {record['eval'][first]['p_mpjpe']:.1f} mm ({record['seconds']:.1f} s)")
        self.epoch += 1
        if self.gan is not None and self.dist.is_main and self.stage == STAGE_POSEAUG:
            self._plot_augmentations()
        self.checkpoint()

    # ---- results ----------------------------------------------------------------------------
    def summary(self) -> dict:
        stage = [r for r in self.records if r["type"] == "epoch" and r["stage"] != "baseline"] or \
                [r for r in self.records if r["type"] == "epoch"]
        initial = next((r["eval"] for r in self.records if r["type"] == "initial"), None)
        summary = {"method": "poseaug" if self.gan is not None else ("baseline" if self.stage0_only else "no-augment"),
                   "estimator": self.cfg.estimator, "data": self.cfg.data, "epochs": len(stage),
                   "initial": initial, "last": stage[-1]["eval"] if stage else None, "best": {},
                   "note": "'best' picks the best epoch by MPJPE on each test set itself, as the official "
                           "result summary does: optimistic; 'last' is the honest number"}
        for name in self.eval_sets:
            if stage:
                best = min(stage, key=lambda r: r["eval"][name]["mpjpe"])
                summary["best"][name] = {**best["eval"][name], "epoch": best["epoch"]}
        return summary

    def plot(self) -> None:
        from .plots import plot_augmentor, plot_curves
        plot_curves(self.records, self.run.plot_path("mpjpe_by_epoch.png"))
        if self.gan is not None:
            plot_augmentor(self.records, self.run.plot_path("augmentor.png"))

    def _plot_augmentations(self) -> None:
        from .plots import plot_augmentations, plot_augmentor
        plot_augmentations(self._last_augmented, self.skeleton, self.run.plot_path("augmentations.png"))
        plot_augmentor(self.records, self.run.plot_path("augmentor.png"))


def train(cfg: Config, *, stage0_only: bool = False) -> dict:
    """Run PoseAug (or, with ``stage0_only``, only the estimator pre-training); returns the summary."""
    return run_trainer(PoseAugTrainer, cfg, stage0_only=stage0_only)
