"""CReST / CReST+ on FixMatch, as the paper's Algorithm 1:

    for generation g = 1 .. G:
        train a fresh FixMatch model (EMA of weights) on labelled + pseudo-labelled data
        (CReST+: distribution alignment with temperature t_g on the weak view)
        EMA model pseudo-labels the unlabelled set
        labelled set <- original labelled set + per class the most confident
                        floor(mu_l * n_l) samples predicted as class l

Checkpoints (atomic) after every epoch and every generation; ``resume=True`` continues
a killed run and ends with the same metrics as an uninterrupted run with the same seed.
Every epoch reseeds the augmentation RNG and sampler from (seed, generation, epoch,
rank), so a resumed epoch replays exactly.

Generations are numbered from 1 in logs, tables and plots, as KE and DSD number theirs (generation 1
is plain FixMatch); ``self.generation`` counts from 0 inside (the RNG streams and CReST+'s
temperature schedule t_g = 1 - (1 - t_min) g / (G - 1) are the official code's, 0-based). ``impl`` picks the pseudo-label kernels once:
``kernels.FusedPseudoLabels`` or ``official.OfficialPseudoLabels``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time

import torch
import torch.nn.functional as F

from ..common import CheckpointError, Distributed, derive_seed
from ..common.impl import choose
from ..common.speed import StepSpeed, restart_sgd_, set_lr
from ..common.trainer import Trainer, run_trainer
from ..models import build as build_model
from . import augment
from .config import Config
from .data import SemiSupervisedSplit, load_split
from .kernels import FusedPseudoLabels
from .metrics import confusion, summarize
from .official import OfficialPseudoLabels
from .pseudo_label import PseudoLabeler, scaled_momentum, scaled_window
from .sampling import class_ranks, sampling_rates, select_pseudo_labels, temperature

#: checkpoints say how they number generations (those of before 2026-12-07 counted from 0 in their records)
GENERATION_NUMBERING = "from-1"


@dataclasses.dataclass
class EpochPlan:
    """What one epoch's steps read: the labelled set (with this generation's pseudo-labels), the
    batch indices of every step, and the CReST+ temperature. ``rng``: the global generator's state
    for this epoch's augmentation when replicas share a process (``--seeds``), else None."""
    x_l: torch.Tensor
    y_l: torch.Tensor
    lab: torch.Tensor
    unl: torch.Tensor
    t_g: float
    rng: torch.Tensor | None = None


def ema_update_(ema_params, params, ema_buffers, buffers, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * param`` (foreach), buffers copied: the official EMA."""
    with torch.no_grad():
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - decay)
        for eb, b in zip(ema_buffers, buffers):
            eb.copy_(b)


class CReSTTrainer(Trainer):
    method = "crest"
    summary_settings = ("generations",)  # configuration, reported once by --seeds

    def __init__(self, cfg: Config, dist: Distributed):
        super().__init__(cfg, dist)
        self.pseudo_kernels = choose(cfg.impl, fused=FusedPseudoLabels, official=OfficialPseudoLabels)()
        self.speed = StepSpeed(cfg, self.device, self.say)
        self.split: SemiSupervisedSplit = load_split(cfg)
        self.C = self.split.num_classes
        self.in_channels, self.side = self.split.x_test.shape[1], self.split.x_test.shape[-1]
        self.flip = cfg.dataset != "digits-lt"
        self.model_name = cfg.model if cfg.model != "auto" else ("digits_cnn" if self.side <= 16 else "wrn28_2")
        self.labelled_counts = self.split.labelled_counts()
        self.prior = self.labelled_counts.float() / self.labelled_counts.sum()
        self.G = cfg.num_generations
        self.per_rank_l = max(1, cfg.batch_size // dist.world_size)
        self.per_rank_u = self.per_rank_l * cfg.mu
        self.steps_total = cfg.epochs * cfg.steps_per_epoch
        self.da_window = cfg.da_window or scaled_window(self.steps_total)
        self.da_momentum = cfg.da_momentum or scaled_momentum(self.steps_total)
        # the unlabelled batches' pool: the official code draws them from every train image
        self.unlabelled_pool = (torch.cat([self.split.x_unlabelled, self.split.x_labelled])
                                if cfg.unlabelled_stream == "all" else self.split.x_unlabelled)
        # progress state (all of it is in the checkpoint)
        self.generation, self.epoch, self.step = 0, 0, 0
        self.pseudo_idx = torch.empty(0, dtype=torch.int64)
        self.pseudo_label = torch.empty(0, dtype=torch.int64)
        self.test_acc_history: list[float] = []
        self.generation_records: list[dict] = []

    # ---- model, optimiser, EMA -------------------------------------------------------
    def _fresh_generation_state(self):
        torch.manual_seed(derive_seed(self.cfg.seed, self.generation, 17))
        fresh = self.speed.prepare(build_model(self.model_name, self.C, self.in_channels).to(self.device))
        # the EMA starts as a copy of the fresh network (not of self.model, whose tensors may be views
        # of a stack under --seeds: a deep copy of a view copies the whole stacked storage)
        self.ema = copy.deepcopy(fresh).eval()
        if getattr(self, "model", None) is None:
            self._build_step(fresh)
        else:
            # the same modules and optimizer with the new generation's initial weights and zero
            # momentum (restart_sgd_): equal to new objects; the (compiled) step functions built
            # once in _build_step keep serving
            with torch.no_grad():
                self.model.load_state_dict(fresh.state_dict())
            restart_sgd_(self.optimizer)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.labeler = PseudoLabeler(self.C, self.prior, plus=self.cfg.plus, threshold=self.cfg.threshold,
                                     convention=self.cfg.dist_align, kernels=self.pseudo_kernels, device=self.device,
                                     window=self.da_window, momentum=self.da_momentum, start=self.cfg.da_start)
        self.step = 0
        self.test_acc_history = []

    def _build_step(self, model):
        """The model, its optimizer and the (compiled) step functions: built once per run."""
        self.model = model
        decay = [p for n, p in self.model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True, foreach=True)
        self.forward_model = self.model
        if self.dist.enabled:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.losses = self.speed.compile(self._losses)
        self.optimizer_step = self.speed.optimizer_step(self.optimizer)

    def ema_decay(self) -> float:
        """``constant``: the official code's decay from the first step. ``ramp`` (the default):
        TensorFlow's ExponentialMovingAverage with num_updates, min(decay, (1 + k) / (10 + k)), so
        that a short generation's EMA is not its random initialisation (0.999^256 = 0.77 of it
        after 256 steps; after the official 2^16, nothing)."""
        if self.cfg.ema_schedule == "constant":
            return self.cfg.ema
        return min(self.cfg.ema, (1 + self.step) / (10 + self.step))

    def _update_ema(self):
        ema_update_(list(self.ema.parameters()), list(self.model.parameters()), list(self.ema.buffers()),
                    list(self.model.buffers()), self.ema_decay())

    def _lr(self) -> float:
        """The cosine decay over a generation: FixMatch's lr cos(7 pi k / 16K) (to 0.2 lr), or the
        official CReST code's lr cos(pi k / 16K) (to 0.98 lr: near constant)."""
        turns = 7 if self.cfg.lr_schedule == "fixmatch" else 1
        return self.cfg.lr * math.cos(turns * math.pi * self.step / (16 * self.steps_total))

    # ---- data ------------------------------------------------------------------------------
    def _labelled_set(self):
        s = self.split
        return (torch.cat([s.x_labelled, s.x_unlabelled[self.pseudo_idx]]),
                torch.cat([s.y_labelled, self.pseudo_label]))

    def _epoch_batches(self, n: int, per_rank: int, salt: int) -> torch.Tensor:
        """[steps, per_rank] indices: an epoch permutation shared by all ranks, sharded by rank, cycled."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, self.generation, self.epoch, salt))
        perm = torch.randperm(n, generator=g)
        shard = perm[self.dist.rank::self.dist.world_size]
        if shard.numel() == 0:
            shard = perm
        need = self.cfg.steps_per_epoch * per_rank
        return shard[torch.arange(need) % shard.numel()].view(self.cfg.steps_per_epoch, per_rank)

    def _losses(self, inputs: torch.Tensor, yl: torch.Tensor, t_g: float):
        """The step's forward and losses (one graph under --compile)."""
        with self.speed.autocast():
            logits = self.forward_model(inputs)
        return self.loss_terms(logits, yl, t_g)

    def loss_terms(self, logits: torch.Tensor, yl: torch.Tensor, t_g: float):
        """The step's losses from the logits of [labelled weak; unlabelled weak; unlabelled strong]:
        labelled CE, pseudo-labels of the weak view (this replica's DA state), masked CE of the
        strong view. Logits are float32 before any loss (bf16)."""
        n_l = yl.shape[0]
        n_u = (logits.shape[0] - n_l) // 2
        logits_l, logits_w, logits_s = logits.float().split([n_l, n_u, n_u])
        loss_s = F.cross_entropy(logits_l, yl)
        label, mask = self.labeler(logits_w, t_g)
        loss_u = self.labeler.unlabelled_loss(logits_s, label, mask)
        return loss_s + self.cfg.lambda_u * loss_u, loss_s, loss_u, mask

    # ---- one epoch ---------------------------------------------------------------------------
    def epoch_plan(self) -> EpochPlan:
        """This epoch's data, from (seed, generation, epoch, rank): also seeds the augmentation's
        draws (torch's global generator), so a resumed epoch replays exactly."""
        torch.manual_seed(derive_seed(self.cfg.seed, self.generation, self.epoch, self.dist.rank, 3))
        x_l, y_l = self._labelled_set()
        return EpochPlan(x_l, y_l, lab=self._epoch_batches(len(y_l), self.per_rank_l, 1),
                         unl=self._epoch_batches(len(self.unlabelled_pool), self.per_rank_u, 2),
                         t_g=temperature(self.generation, self.G, self.cfg.t_min))

    def batch(self, plan: EpochPlan, s: int):
        """Step s's inputs [labelled weak; unlabelled weak; unlabelled strong] and labels."""
        xl, yl = plan.x_l[plan.lab[s]].to(self.device), plan.y_l[plan.lab[s]].to(self.device)
        xu = self.unlabelled_pool[plan.unl[s]].to(self.device)
        inputs = torch.cat([augment.weak(xl, flip=self.flip), augment.weak(xu, flip=self.flip),
                            augment.strong(xu, flip=self.flip)])
        return self.speed.inputs(inputs), yl

    @staticmethod
    def step_stats(loss, loss_s, loss_u, mask) -> torch.Tensor:
        """(loss, labelled loss, unlabelled loss, mask rate) of one step, float64."""
        return torch.stack([loss.detach(), loss_s.detach(), loss_u.detach(), mask.float().mean()]).double().cpu()

    def epoch_losses(self, sums: torch.Tensor) -> dict:
        """The epoch's mean step_stats over steps and ranks."""
        sums = self.dist.all_reduce_sum(sums) / (self.cfg.steps_per_epoch * self.dist.world_size)
        return dict(zip(("loss", "loss_labelled", "loss_unlabelled", "mask_rate"), sums.tolist()))

    def _train_epoch(self):
        plan = self.epoch_plan()
        sums = torch.zeros(4, dtype=torch.float64)
        self.model.train()
        for s in self.progress(range(self.cfg.steps_per_epoch), desc=f"gen {self.generation_number} epoch {self.epoch}"):
            inputs, yl = self.batch(plan, s)
            set_lr(self.optimizer, self._lr())
            loss, loss_s, loss_u, mask = self.losses(inputs, yl, plan.t_g)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer_step()
            self._update_ema()
            self.step += 1
            sums += self.step_stats(loss, loss_s, loss_u, mask)
        return self.epoch_losses(sums)

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def _predict_probs(self, x: torch.Tensor, network=None, batch: int = 1024) -> torch.Tensor:
        """Softmax [n, C] of ``network`` (the EMA model by default) for every row of x, on every rank."""
        network = self.ema if network is None else network
        n, W = len(x), self.dist.world_size
        per = math.ceil(n / W)
        lo, hi = self.dist.rank * per, min(n, (self.dist.rank + 1) * per)
        probs = [torch.softmax(network(x[i:min(hi, i + batch)].to(self.device)).float(), -1)
                 for i in range(lo, hi, batch)]
        local = torch.cat(probs) if probs else torch.empty(0, self.C, device=self.device)
        padded = torch.zeros(per, self.C, device=self.device)
        padded[:len(local)] = local
        return self.dist.all_gather_cat(padded).cpu()[:n]

    def _predict(self, x: torch.Tensor):
        """EMA predictions (label, confidence) for every row of x, on every rank."""
        conf, label = self._predict_probs(x).max(-1)
        return label, conf

    def _evaluate(self, x, y) -> dict:
        probs = self._predict_probs(x)
        result = summarize(confusion(y, probs.argmax(-1), self.C))
        # logit-adjusted prediction (Menon et al., tau = 1): argmax of log p - log prior, the prior
        # being the labelled set's class distribution -- the long-tail-corrected accuracy
        adjusted = (probs.clamp_min(1e-12).log() - self.prior.clamp_min(1e-12).log()).argmax(-1)
        result["logit_adjusted_accuracy"] = float((adjusted == y).double().mean()) if len(y) else None
        return result

    @torch.no_grad()
    def prior_tracking(self, sample: int = 1024) -> dict:
        """CReST+: how far the running class distribution p~ that aligns the pseudo-labels is from the
        model's mean prediction on unlabelled images now (total variation; 0 = it tracks them)."""
        if not self.cfg.plus:
            return {}
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, self.generation, 23))
        pool = self.split.x_unlabelled
        rows = torch.randperm(len(pool), generator=g)[:sample]
        was_training = self.model.training
        self.model.eval()
        mean = self._predict_probs(pool[rows], self.model).mean(0)
        self.model.train(was_training)
        running = self.labeler.da.running.float().cpu()
        return {"da_running": running.tolist(), "da_model_mean": mean.tolist(),
                "da_tv_distance": float(0.5 * (running - mean).abs().sum())}

    @property
    def generation_number(self) -> int:
        """This generation as logs, tables and plots number it: from 1 (module docstring)."""
        return self.generation + 1

    # ---- the Trainer contract ------------------------------------------------------------
    def start(self):
        self._fresh_generation_state()

    def state(self) -> dict:
        return {"generation": self.generation, "generation_number": self.generation_number,
                "numbering": GENERATION_NUMBERING, "epoch": self.epoch, "step": self.step,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "labeler": self.labeler.state_dict(),
                "pseudo_idx": self.pseudo_idx, "pseudo_label": self.pseudo_label,
                "test_acc_history": self.test_acc_history, "generation_records": self.generation_records}

    def load_state(self, state: dict):
        if state.get("numbering") != GENERATION_NUMBERING:
            raise CheckpointError(f"{self.run.checkpoint_path}: written by an older fastsmall that numbered CReST's "
                                  "generations from 0 (now from 1, as KE and DSD); start a new run (another --out)")
        self.generation, self.epoch = state["generation"], state["epoch"]
        self.pseudo_idx, self.pseudo_label = state["pseudo_idx"].cpu(), state["pseudo_label"].cpu()
        self.generation_records = state["generation_records"]
        if self.generation >= self.G:  # a finished run: its last networks, for TrainResult.models
            self.model, self.ema = (self.speed.prepare(build_model(self.model_name, self.C, self.in_channels)
                                                       .to(self.device)) for _ in range(2))
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.ema.eval()
        if self.generation < self.G:
            self._fresh_generation_state()
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.speed.load_optimizer_state(self.optimizer, state["optimizer"])
            self.labeler.load_state_dict(state["labeler"])
            self.step = state["step"]
            self.test_acc_history = state["test_acc_history"]

    # ---- the algorithm ----------------------------------------------------------------------
    def _end_generation(self):
        s, cfg = self.split, self.cfg
        test = self._evaluate(s.x_test, s.y_test)
        label, conf = self._predict(s.x_unlabelled)
        unlabelled = summarize(confusion(s.y_unlabelled, label, self.C))
        record = {"type": "generation", "generation": self.generation_number, "temperature": temperature(
            self.generation, self.G, cfg.t_min) if cfg.plus else None,
            "test_accuracy_last": statistics.median(self.test_acc_history[-cfg.eval_last:]),
            "test": test, "unlabelled": unlabelled, "labelled_set_size": int(len(s.y_labelled) + len(self.pseudo_idx))}
        if self.generation < self.G - 1:  # pseudo-label the unlabelled set for the next generation
            rates = sampling_rates(self.labelled_counts, cfg.alpha)
            keep = select_pseudo_labels(label, conf, rates)
            self.pseudo_idx, self.pseudo_label = keep, label[keep]
            added = confusion(s.y_unlabelled[keep], label[keep], self.C).to(torch.float64)
            present = torch.bincount(s.y_unlabelled, minlength=self.C)
            record["pseudo_labels"] = {
                "rates": rates.tolist(),
                "count": [int(v) for v in added.sum(0)],  # the added labels' class distribution
                "precision": [float(added[c, c] / added[:, c].sum()) if added[:, c].sum() > 0 else None
                              for c in range(self.C)],
                # the share of class c's unlabelled images that were added, labelled c
                "recall": [float(added[c, c] / present[c]) if present[c] > 0 else None for c in range(self.C)],
            }
        self.log(record)
        self.generation_records.append(record)
        self.say(f"generation {self.generation_number}: test acc {record['test_accuracy_last']:.4f}, "
                  f"balanced {test['balanced_accuracy']:.4f}, unlabelled acc {unlabelled['accuracy']:.4f}"
                 + (f", added {len(self.pseudo_idx)} pseudo-labels" if "pseudo_labels" in record else ""))

    def end_epoch(self, losses: dict, start: float) -> None:
        """Evaluate the EMA model, log the epoch (``start``: its perf_counter start), count it."""
        test = self._evaluate(self.split.x_test, self.split.y_test)
        self.test_acc_history.append(test["accuracy"])
        self.log({"type": "epoch", "generation": self.generation_number, "epoch": self.epoch, **losses,
                  "lr": self._lr(), "test_accuracy": test["accuracy"],
                  "test_balanced_accuracy": test["balanced_accuracy"],
                  "test_logit_adjusted_accuracy": test["logit_adjusted_accuracy"], **self.prior_tracking(),
                  "seconds": time.perf_counter() - start})
        self.say(f"gen {self.generation_number} epoch {self.epoch}: loss {losses['loss']:.4f} "
                 f"mask {losses['mask_rate']:.2f} test acc {test['accuracy']:.4f}")
        self.epoch += 1

    def next_generation(self) -> None:
        """End this generation (evaluate, pseudo-label) and start the next one's fresh model."""
        self._end_generation()
        self.generation, self.epoch = self.generation + 1, 0
        if self.generation < self.G:
            self._fresh_generation_state()

    def loop(self):
        while self.generation < self.G:
            while self.epoch < self.cfg.epochs:
                start = time.perf_counter()
                losses = self._train_epoch()
                self.check_losses({"loss": losses["loss"]}, f"generation {self.generation_number}, epoch {self.epoch}")
                self.end_epoch(losses, start)
                self.checkpoint()
            self.next_generation()
            self.checkpoint()

    def summary(self) -> dict:
        last = self.generation_records[-1]
        method = "fixmatch" if self.G == 1 else ("crest+" if self.cfg.plus else "crest")
        ranks = class_ranks(self.labelled_counts)
        tail = [c for c in range(self.C) if int(ranks[c]) > self.C - 3]  # the 3 rarest classes
        summary = {
            "method": method,
            "generations": self.G,
            "test_accuracy": last["test_accuracy_last"],
            "test_balanced_accuracy": last["test"]["balanced_accuracy"],
            "test_logit_adjusted_accuracy": last["test"]["logit_adjusted_accuracy"],
            "test_tail_recall": statistics.mean(last["test"]["recall"][c] for c in tail),
            "tail_classes": tail,
            "per_generation": [{
                "generation": r["generation"], "test_accuracy": r["test_accuracy_last"],
                "test_balanced_accuracy": r["test"]["balanced_accuracy"],
                "test_logit_adjusted_accuracy": r["test"]["logit_adjusted_accuracy"],
                "tail_recall": statistics.mean(r["test"]["recall"][c] for c in tail),
            } for r in self.generation_records],
            "class_rank": ranks.tolist(),
        }
        return summary

    def trained_models(self) -> dict:
        # the EMA model is the one evaluated and used for pseudo-labels
        return {"ema": self.ema, "model": self.model}

    def plot(self) -> None:
        from .plots import plot_generations
        plot_generations(self.generation_records, class_ranks(self.labelled_counts), self.run)


def train(cfg: Config) -> dict:
    """Run CReST / CReST+ / FixMatch as configured; returns the summary (also in summary.json), or
    with ``cfg.seeds`` the aggregate over the seeds, trained stacked in one process."""
    if cfg.seeds:
        from .stacked import StackedCReST
        return StackedCReST.run(CReSTTrainer, cfg)
    return run_trainer(CReSTTrainer, cfg)
