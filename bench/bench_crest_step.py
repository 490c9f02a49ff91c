"""One CReST+ training step on digits-LT, ``--impl fused`` vs ``--impl official``.

    python -m pytest bench/bench_crest_step.py --benchmark-json=bench/results/crest_step.json

Two cases per implementation: the whole step (weak + strong augmentation, one forward
of labelled + weak + strong images, pseudo-labels with distribution alignment, both
losses, backward, SGD, EMA), and the pseudo-label path alone (alignment, labels, mask
and the masked cross-entropy forward + backward on a batch of logits).
"""
import pytest
import torch

from conftest import compile_and_time, measure  # noqa: F401  (shared harness)
from fastsmall.methods.crest.config import Config
from fastsmall.methods.common.impl import choose
from fastsmall.methods.crest.kernels import FusedPseudoLabels
from fastsmall.methods.crest.official import OfficialPseudoLabels
from fastsmall.methods.crest.pseudo_label import PseudoLabeler
from fastsmall.methods.crest.train import CReSTTrainer
from fastsmall.methods.common import Distributed

B_L, MU, C = 32, 7, 10


def _trainer(impl: str, out) -> CReSTTrainer:
    cfg = Config(plus=True, impl=impl, quiet=True, out=str(out))
    trainer = CReSTTrainer(cfg, Distributed(torch.device("cpu")))
    trainer._fresh_generation_state()
    return trainer


@pytest.mark.parametrize("impl", ["official", "fused"])
def bench_crest_step(benchmark, impl, tmp_path):
    trainer = _trainer(impl, tmp_path)
    trainer.cfg = Config(plus=True, impl=impl, quiet=True, out=str(tmp_path), steps_per_epoch=1, epochs=10 ** 6)
    trainer.steps_total = 10 ** 6

    def step():
        trainer._train_epoch()

    measure(benchmark, step, family="crest", op="training step", mode="forward+backward", batch=B_L * (1 + 2 * MU),
            impl="eager" if impl == "official" else "fastsmall", bytes_moved=0)


@pytest.mark.parametrize("impl", ["official", "fused"])
@pytest.mark.parametrize("batch", [B_L * MU, 4096])
def bench_pseudo_label_path(benchmark, impl, batch):
    labeler = PseudoLabeler(C, torch.linspace(1, 0.1, C) / torch.linspace(1, 0.1, C).sum(), plus=True,
                            threshold=0.95, convention="window", device=torch.device("cpu"),
                            kernels=choose(impl, fused=FusedPseudoLabels, official=OfficialPseudoLabels)())
    gen = torch.Generator().manual_seed(0)
    weak = torch.randn(batch, C, generator=gen) * 3
    strong = (torch.randn(batch, C, generator=gen) * 3).requires_grad_()

    def path():
        label, mask = labeler(weak, 0.7)
        loss = labeler.unlabelled_loss(strong, label, mask)
        return torch.autograd.grad(loss, strong)

    measure(benchmark, path, family="crest", op="pseudo-label path", mode="forward+backward", batch=batch,
            impl="eager" if impl == "official" else "fastsmall", bytes_moved=3 * batch * C * 4)
