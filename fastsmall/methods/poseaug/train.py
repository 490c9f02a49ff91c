"""PoseAug training, as the released ``run_poseaug.py``:

    stage 0 (unless --pretrained): train the estimator on real data       (poseaug-baseline)
    evaluate the estimator
    for epoch e = 1 .. E:
        swap bone lengths of the training poses for random templates, re-project
        for each of the epoch's G iterations (default: one pass of batches (X, camera) over the
        swapped set; gan_iters_per_epoch: that many, cycling through fresh permutations):
            augmentor step (adversarial 2D + 3D, regularisers, feedback after warmup_iters G iterations)
            every df-th iteration: discriminator steps on real targets vs pooled fakes
            keep the augmented pairs (X'_rt, x'_rt) that stay inside the image
            log the augmentor diagnostics (diagnostics.py: has it learned?)
        after the warm-up: train the estimator once on the last pass-worth of augmented pairs,
        once on real data
        evaluate; decay every learning rate linearly

``augment=False`` is the baseline at equal schedule: the same stage 0 and the same real
passes after the warm-up, without the augmentor. The controls ``augmentor="frozen"`` (the
augmentor at its random initialisation) and ``"random-view"`` (random turn and depth, no GAN,
``random_view.py``) see the same real passes too. Checkpoints (atomic) after every epoch;
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
from collections import deque

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ...skeleton import Skeleton
from ..common import CheckpointError, ConfigError, Distributed, derive_seed, load_checkpoint, save_checkpoint
from ..common.checkpoint import has_checkpoint
from ..common.speed import StepSpeed
from ..common.trainer import Trainer, run_trainer
from ..common.sequential_seeds import SequentialSeeds
from .camera import project_to_2d
from .config import Config
from .data import PoseSet
from .datasets import load_datasets
from .diagnostics import TABLE as DIAGNOSTIC_TABLE
from .diagnostics import AugmentorMonitor, real_depth
from .estimators import build_estimator
from .gan import AugmentationGAN, set_requires_grad
from .metrics import evaluate
from .random_view import RandomView

STAGE_BASELINE, STAGE_POSEAUG = 0, 1


#: the augmentor figures are redrawn during a run at most this often, and always at its end: they cost
#: 1-3 s, a tenth to a fifth of an augmenting epoch at the documented experiment's budget (12-20 s)
MID_RUN_PLOT_INTERVAL_S = 300.0


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


def released_step_decay(step: int) -> float:
    """The released stage-0 schedule (``train_baseline``'s ``lr_decay``): x0.96 every 100,000 steps."""
    return 0.96 ** (step // 100_000)


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
        self.augmenting = cfg.augment and not stage0_only
        # the budget in G iterations, as the released code counts it: per epoch, and before the
        # feedback loss and the estimator's augmented training start (the warm-up)
        self.batches_per_pass = len(self._shard(len(self.train_set), torch.Generator().manual_seed(0)))
        if self.batches_per_pass == 0:
            raise ConfigError(f"batch_size ({cfg.batch_size}) leaves no batch of >= 2 poses per process",
                              field="batch_size")
        self.gan_iters_per_epoch = cfg.gan_iters_per_epoch or cfg.gan_passes * self.batches_per_pass
        self.warmup_iters = cfg.warmup_iters if cfg.warmup_iters is not None else cfg.warmup * self.gan_iters_per_epoch
        if self.augmenting and self.warmup_iters >= cfg.epochs * self.gan_iters_per_epoch:
            raise ConfigError(f"warmup_iters ({self.warmup_iters}) must be < the run's G iterations, epochs x G "
                              f"iterations per epoch ({cfg.epochs} x {self.gan_iters_per_epoch}): the estimator "
                              f"trains only after the warm-up", fields=("warmup_iters", "epochs"))
        # progress (all of it is in the checkpoint)
        self.stage, self.epoch, self.iteration = STAGE_BASELINE, 0, 0
        self.stage0_steps = 0  # estimator steps of stage 0 (the released step schedule counts them)
        self.records: list[dict] = []
        self._plotted_at = time.monotonic()  # the augmentor figures: mid-run at most every MID_RUN_PLOT_INTERVAL_S
        self._build()
        # --pretrained is read and checked now, before the run directory is made (start() loads it);
        # a resumed run takes the estimator from its checkpoint instead
        resuming = cfg.resume and has_checkpoint(self.run.checkpoint_path)
        self._pretrained = self._read_pretrained() if cfg.pretrained and not resuming else None

    # ---- models --------------------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        torch.manual_seed(derive_seed(cfg.seed, 7))
        self.estimator = build_estimator(cfg.estimator, self.skeleton, impl=cfg.impl,
                                         **estimator_overrides(cfg)).to(self.device)
        learned = self.augmenting and cfg.augmentor != "random-view"  # 'frozen': the same GAN, lr 0
        self.gan = AugmentationGAN(cfg, self.skeleton, self.device, speed=self.speed) if learned else None
        self.random_view = (RandomView(self.train_set.poses_3d, self.skeleton)
                            if self.augmenting and cfg.augmentor == "random-view" else None)
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
            if self.stage == STAGE_BASELINE and self.cfg.stage0_schedule == "step":
                self._set_estimator_lr(released_step_decay(self.stage0_steps))
            self.opt_p.step()
            self.stage0_steps += self.stage == STAGE_BASELINE
            total, count = total + float(loss.detach()), count + 1
        return total / max(count, 1)

    def _set_estimator_lr(self, scale: float) -> None:
        for group in self.opt_p.param_groups:
            group["lr"] = self.lr_estimator * scale

    def _estimator_trains(self, epoch: int) -> bool:
        """Does the estimator train at the end of PoseAug epoch ``epoch``? After the warm-up: once
        the epoch's G iterations pass ``warmup_iters`` (for augmented and no-augment runs alike)."""
        return (epoch + 1) * self.gan_iters_per_epoch > self.warmup_iters

    # ---- one PoseAug epoch (released train_gan + train_posenet) --------------------------------
    def _poseaug_epoch(self) -> dict:
        cfg, gan = self.cfg, self.gan
        torch.manual_seed(derive_seed(cfg.seed, self.stage, self.epoch, self.dist.rank, 3))
        # pool draws differ per rank; the bone-length swap is the same on every rank
        pool_rng = self._epoch_generator(100 + self.dist.rank, self.device)
        view_rng = self._epoch_generator(200 + self.dist.rank, self.device)
        swapped = swap_bone_lengths(self.train_set, self.templates, self._epoch_generator(1, self.device))
        n = len(swapped)
        sums: dict[str, float] = {}
        g_steps = d_steps = 0
        self.estimator.train()
        for m in gan.models if gan is not None else []:
            m.train()
        # G iterations cycle through passes over the swapped set (pass p: its own permutations); the
        # estimator trains on the augmented poses of the epoch's last pass-worth of iterations
        window = self.batches_per_pass
        kept, monitor = deque(maxlen=window), AugmentorMonitor(self.skeleton, window=window)
        passes: dict[int, tuple] = {}
        for s in self.progress(range(self.gan_iters_per_epoch), desc=f"poseaug epoch {self.epoch}"):
            p, b = divmod(s, self.batches_per_pass)
            if p not in passes:
                passes = {p: tuple(self._shard(n, self._epoch_generator(10 * p + salt)) for salt in (2, 3, 4))}
            g_batches, d3_batches, d2_batches = passes[p]
            idx = g_batches[b].to(self.device)
            if gan is None:  # the random-view control
                out = self.random_view(swapped.poses_3d[idx], view_rng)
                rt_2d, log = project_to_2d(out["pose_rt"], swapped.cams[idx]), {}
            else:
                out, rt_2d, log = gan.generator_step(swapped.poses_3d[idx], swapped.cams[idx], self.estimator,
                                                     self.epoch, self.dist.average_gradients,
                                                     use_feedback=self.iteration >= self.warmup_iters)
                if self.iteration % cfg.df == 0 and not gan.frozen:
                    d3, d2 = d3_batches[b].to(self.device), d2_batches[b].to(self.device)
                    log.update(gan.discriminator_step(swapped.poses_3d[d3], swapped.poses_2d[d2], out["pose_ba"],
                                                      rt_2d, generator=pool_rng,
                                                      average_gradients=self.dist.average_gradients))
                    d_steps += 1
            # released keeps the augmented pairs with no projected coordinate above 1
            valid = (rt_2d > 1).sum((1, 2)) < 1
            kept.append((out["pose_rt"].detach()[valid], rt_2d[valid]))
            monitor.add(out, valid)
            for k, v in log.items():
                sums[k] = sums.get(k, 0.0) + v
            self.iteration += 1
            g_steps += 1
        if self.dist.enabled and sums:  # each rank logged its share of every batch: the mean over ranks
            keys = sorted(sums)
            total = self.dist.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                                                          device=self.dist.device))
            sums = dict(zip(keys, (total / self.dist.world_size).cpu().tolist()))
        record = {k: v / max(d_steps if k.startswith("d_") else g_steps, 1) for k, v in sums.items()}
        J = self.skeleton.num_joints
        fake_3d = torch.cat([k[0] for k in kept]) if kept else self.train_set.poses_3d.new_empty(0, J, 3)
        fake_2d = torch.cat([k[1] for k in kept]) if kept else self.train_set.poses_2d.new_empty(0, J, 2)
        record["augmented_kept"] = fake_3d.shape[0]
        record.update(monitor.summary(self.dist))  # over every rank's share
        record.update(self.real_depth)
        if self._estimator_trains(self.epoch):
            record["estimator_loss_augmented"] = self._train_estimator(fake_3d, fake_2d, 5, "estimator (augmented)")
            record["estimator_loss_real"] = self._train_estimator(self.train_set.poses_3d, self.train_set.poses_2d, 6,
                                                                  "estimator (real)")
        # the last batch, for the plot (the random-view control has no BA / BL stage)
        stages = ("pose_ba", "pose_bl", "pose_rt") if gan is not None else ("pose_rt",)
        self._last_augmented = {"source": swapped.poses_3d[idx], **{k: out[k] for k in stages}}
        return record

    def _baseline_epoch(self) -> dict:
        """Stage 0, or an epoch of the no-augmentation baseline: one pass over real data."""
        torch.manual_seed(derive_seed(self.cfg.seed, self.stage, self.epoch, self.dist.rank, 3))
        if self.stage == STAGE_POSEAUG and not self._estimator_trains(self.epoch):
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
        state = {"stage": self.stage, "epoch": self.epoch, "iteration": self.iteration, "stage0_steps": self.stage0_steps,
                 "estimator": self.estimator.state_dict(), "opt_p": self.opt_p.state_dict(),
                 "lr_estimator": self.lr_estimator, "records": self.records}
        if self.gan is not None:
            state["gan"] = self.gan.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        self.stage, self.epoch, self.iteration = state["stage"], state["epoch"], state["iteration"]
        self.stage0_steps = state["stage0_steps"]
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

    def _read_pretrained(self) -> dict:
        """The estimator's state_dict from --pretrained, checked against this run's estimator and skeleton."""
        state = load_checkpoint(self.cfg.pretrained, map_location=self.device)
        if state.get("estimator") != self.cfg.estimator or "state_dict" not in state:
            raise CheckpointError(f"pretrained {self.cfg.pretrained}: holds estimator {state.get('estimator')!r}, "
                                  f"expected {self.cfg.estimator!r} weights from `fastsmall poseaug-baseline`")
        if tuple(state.get("skeleton_parents", ())) != self.skeleton.parents:
            raise CheckpointError(f"pretrained {self.cfg.pretrained}: trained for another skeleton")
        return state["state_dict"]

    def log(self, record: dict) -> None:
        self.records.append(record)
        super().log(record)

    # ---- the algorithm ----------------------------------------------------------------------
    def start(self) -> None:
        if self._pretrained is not None:
            self.estimator.load_state_dict(self._pretrained)
        if self.stage0_epochs == 0:
            self._begin_poseaug()

    def loop(self) -> None:
        cfg = self.cfg
        while self.stage == STAGE_BASELINE and self.epoch < self.stage0_epochs:
            linear = cfg.stage0_schedule == "linear"  # else the step decay, set per step
            self._run_epoch(self._baseline_epoch, linear_decay(self.epoch, self.stage0_epochs) if linear
                            else released_step_decay(self.stage0_steps))
        if self.stage == STAGE_BASELINE:  # also when a run stopped right after stage 0's last checkpoint
            self._begin_poseaug()
            self.checkpoint()
        while self.stage == STAGE_POSEAUG and self.epoch < self.poseaug_epochs:
            scale = linear_decay(self.epoch, cfg.epochs)
            if self.gan is not None:
                self.gan.set_lr_scale(scale)
            self._run_epoch(self._poseaug_epoch if self.augmenting else self._baseline_epoch, scale)

    def _begin_poseaug(self) -> None:
        """Evaluate the (pre)trained estimator (the released epoch-0 evaluation) and switch stage."""
        self.log({"type": "initial", "stage": "poseaug", "eval": self._evaluate()})
        self.stage, self.epoch = STAGE_POSEAUG, 0
        self._fresh_estimator_optimizer(self.cfg.lr_p_poseaug)

    def _run_epoch(self, body, lr_scale: float) -> None:
        start = time.perf_counter()
        self._set_estimator_lr(lr_scale)
        record = body()
        stage = "baseline" if self.stage == STAGE_BASELINE else ("poseaug" if self.augmenting else "no-augment")
        self.check_losses({k: v for k, v in record.items() if "loss" in k}, f"{stage} epoch {self.epoch}")
        self._sync_buffers()
        record = {"type": "epoch", "stage": stage, "epoch": self.epoch, "lr_scale": lr_scale, **record,
                  "eval": self._evaluate(), "seconds": time.perf_counter() - start}
        self.log(record)
        first = next(iter(record["eval"]))
        self.say(f"{stage} epoch {self.epoch}: {first} MPJPE {record['eval'][first]['mpjpe']:.1f} mm, "
                 f"P-MPJPE {record['eval'][first]['p_mpjpe']:.1f} mm ({record['seconds']:.1f} s)")
        self.epoch += 1
        if (self.augmenting and self.dist.is_main and self.stage == STAGE_POSEAUG
                and time.monotonic() - self._plotted_at >= MID_RUN_PLOT_INTERVAL_S):
            self._plot_augmentations()
        self.checkpoint()

    # ---- results ----------------------------------------------------------------------------
    def summary(self) -> dict:
        stage = [r for r in self.records if r["type"] == "epoch" and r["stage"] != "baseline"] or \
                [r for r in self.records if r["type"] == "epoch"]
        initial = next((r["eval"] for r in self.records if r["type"] == "initial"), None)
        method = {"learned": "poseaug", "frozen": "frozen-augmentor", "random-view": "random-view"}[self.cfg.augmentor]
        summary = {"method": method if self.augmenting else ("baseline" if self.stage0_only else "no-augment"),
                   "estimator": self.cfg.estimator, "data": self.cfg.data, "epochs": len(stage),
                   "initial": initial, "last": stage[-1]["eval"] if stage else None, "best": {},
                   "note": "'best' picks the best epoch by MPJPE on each test set itself, as the official "
                           "result summary does: optimistic; 'last' is the honest number"}
        for name in self.eval_sets:
            if stage:
                best = min(stage, key=lambda r: r["eval"][name]["mpjpe"])
                summary["best"][name] = {**best["eval"][name], "epoch": best["epoch"]}
        if self.augmenting and stage:  # has the augmentor learned? (diagnostics.py; every epoch's in metrics.jsonl)
            summary["augmentor_last"] = {key: stage[-1].get(key) for key, _, _ in DIAGNOSTIC_TABLE}
        return summary

    # ---- --seeds: what the aggregate over seeds averages and plots (sequential_seeds.py) -----------
    curve_labels = ("epoch", "MPJPE (mm), first evaluation set")

    @staticmethod
    def seed_curve(records: list[dict]) -> tuple[list, list]:
        epochs = [r for r in records if r["type"] == "epoch" and r["stage"] != "baseline"] or \
                 [r for r in records if r["type"] == "epoch"]
        first = next(iter(epochs[0]["eval"])) if epochs else None
        return [r["epoch"] for r in epochs], [r["eval"][first]["mpjpe"] for r in epochs]

    @staticmethod
    def seed_metrics(summary: dict) -> dict:
        """``last/<set>/<metric>``, ``initial/<set>/<metric>`` and ``augmentor_last/<key>``: the
        honest numbers (never the best-on-test pick)."""
        flat = {"epochs": summary["epochs"]}
        for block in ("initial", "last"):
            for name, metrics in (summary.get(block) or {}).items():
                flat.update({f"{block}/{name}/{k}": v for k, v in metrics.items()})
        flat.update({f"augmentor_last/{k}": v for k, v in (summary.get("augmentor_last") or {}).items()})
        return flat

    def trained_models(self) -> dict:
        models = {"estimator": self.estimator}
        if self.gan is not None:
            models.update(augmentor=self.gan.generator, d3d=self.gan.d3d, d2d=self.gan.d2d)
        return models

    def plot(self) -> None:
        from .plots import plot_curves
        plot_curves(self.records, self.run.plot_path("mpjpe_by_epoch.png"))
        if self.augmenting:
            self._plot_augmentations()

    def _plot_augmentations(self) -> None:
        """augmentations.png (the last batch; not after a resume of a finished run, which has
        none: the figure of its last epoch stays) and augmentor.png."""
        from .plots import plot_augmentations, plot_augmentor
        if getattr(self, "_last_augmented", None) is not None:
            plot_augmentations(self._last_augmented, self.skeleton, self.run.plot_path("augmentations.png"))
        plot_augmentor(self.records, self.run.plot_path("augmentor.png"))
        self._plotted_at = time.monotonic()


def train(cfg: Config, *, stage0_only: bool = False) -> dict:
    """Run PoseAug (or, with ``stage0_only``, only the estimator pre-training); returns the summary,
    or with ``cfg.seeds`` the aggregate over the seeds, trained one after another in this process."""
    if cfg.seeds:
        return SequentialSeeds.run(PoseAugTrainer, cfg, stage0_only=stage0_only)
    return run_trainer(PoseAugTrainer, cfg, stage0_only=stage0_only)
