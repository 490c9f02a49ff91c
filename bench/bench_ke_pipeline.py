"""The Knowledge Evolution / DSD pipelines' masked steps, ``--impl fused`` vs ``--impl official``.

    python -m pytest bench/bench_ke_pipeline.py --benchmark-json=bench/results/ke_pipeline/threads2.json
    OMP_NUM_THREADS=1 python -m pytest bench/bench_ke_pipeline.py --benchmark-json=bench/results/ke_pipeline/threads1.json
    python bench/report.py bench/results/ke_pipeline/threads2.json --notes bench/NOTES_ke_pipeline.md \
        --out bench/RESULTS_ke_pipeline.md

What the trainers call, on two networks (float32): ResNet-18 with 102 classes (Flower-102;
11.2 M conv/linear weights in 21 tensors) and DigitsCNN (the digits-small network; 65 k
weights in 5 tensors, where per-call overhead dominates). ``batch`` = the weight count.

* ``generation_boundary`` (modes ``kels`` / ``wels`` at split rate 0.5): KE's re-initialisation
  of the reset hypothesis of all weights, ``fastsmall.methods.ke.reset_hypothesis_``.
  ``eager`` = ``impl="official"``: the official per-module loop (stored bool masks, a fresh
  kaiming_uniform tensor and ``torch.where`` per tensor); ``fastsmall`` = ``impl="fused"``: one
  ``fs.ops.ke_reinit_`` call with KELS / WELS masks (no mask tensors).
* ``dsd_step`` (mode ``dsd``, 30 % magnitude masks): DSD's masking after every optimizer step in
  the sparse phase. ``eager`` = ``W.mul_(mask)`` per tensor (``dsd.official.official_masked_mul_``);
  ``fastsmall`` = ``dsd.apply_masks_`` (one ``fs.ops.masked_mul_`` call).
* ``copy`` floor per network: one copy of as many float32 values as the weights.

``bytes``: the boundary writes the reset weights (4 B each); the DSD step reads the masks
(1 B per weight) and reads + writes the pruned weights (8 B each).
"""
import itertools

import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, measure
from fastsmall.methods import dsd, ke
from fastsmall.methods.dsd.official import official_masked_mul_
from fastsmall.methods.ke.official import keep_masks
from fastsmall.methods.models import DigitsCNN, resnet18

F32 = 4
# the small network's calls take tens of microseconds: many rounds, so one preemption on a
# shared machine cannot move the median
ROUNDS = {"resnet18": None, "digits_cnn": dict(rounds=60, iterations=10, warmup_rounds=5)}
NETWORKS = {"resnet18": lambda: resnet18(num_classes=102), "digits_cnn": lambda: DigitsCNN(10, 1)}


def _network(name):
    torch.manual_seed(0)
    model = NETWORKS[name]().to(DEVICE)
    numel = sum(m.weight.numel() for _, m in ke.prunable_layers(model))
    return model, numel


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("mode", ["kels", "wels"])
@pytest.mark.parametrize("impl", ["eager", "fastsmall"])
def bench_generation_boundary(benchmark, network, mode, impl):
    model, numel = _network(network)
    masks = ke.split_masks(model, 0.5, mode=mode, seed=0)
    keeps = keep_masks(model, masks)
    reset = sum(int((~k).sum()) for k in keeps)
    generations = itertools.count(2)
    if impl == "fastsmall":
        def run():
            ke.reset_hypothesis_(model, masks, seed=0, generation=next(generations), impl="fused")
    else:
        def run():
            ke.reset_hypothesis_(model, masks, seed=0, generation=next(generations), impl="official", keeps=keeps)
    run()
    measure(benchmark, run, family="ke_pipeline", op=f"generation_boundary {network}", mode=mode, batch=numel,
            impl=impl, bytes_moved=reset * F32, rounds=ROUNDS[network])


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("impl", ["eager", "fastsmall"])
def bench_dsd_step(benchmark, network, impl):
    model, numel = _network(network)
    masks = dsd.magnitude_masks(model, 0.3)
    params = dict(model.named_parameters())
    weights, keeps = [params[n] for n in masks], list(masks.values())
    pruned = sum(int((~k).sum()) for k in keeps)
    if impl == "fastsmall":
        run = lambda: dsd.apply_masks_(model, masks)  # noqa: E731
    else:
        run = lambda: official_masked_mul_(weights, keeps)  # noqa: E731
    run()
    measure(benchmark, run, family="ke_pipeline", op=f"dsd_step {network}", mode="dsd", batch=numel, impl=impl,
            bytes_moved=numel + 2 * F32 * pruned, rounds=ROUNDS[network])


@pytest.mark.parametrize("network", list(NETWORKS))
def bench_copy_floor(benchmark, network):
    _, numel = _network(network)
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="ke_pipeline", op="copy", mode="forward", batch=numel,
            impl="copy", bytes_moved=2 * numel * F32, rounds=ROUNDS[network])
