"""The embedded synthetic pose generator (PoseAug's default training data), 50,000 poses.

    python -m pytest bench/bench_poseaug_synthetic.py --benchmark-json=bench/results/poseaug_synthetic.json

Moved out of tests/ (it was ``tests/test_poseaug_data.py::test_synthetic_speed``, which asserted
best-of-two < 2 s; about 0.15 s on the idle 2-core machine): a wall-clock limit fails at random
on a shared machine and says nothing about correctness. ``bench_synthetic_generate`` records the
time instead; ``--benchmark-disable`` runs it once, as a smoke check, with the size assertion.
"""
import pytest

from conftest import measure  # noqa: F401  (shared harness)
from fastsmall.methods.poseaug.data.synthetic import generate

N = 50_000


@pytest.mark.parametrize("subset", ["broad", "narrow"])
def bench_synthetic_generate(benchmark, subset):
    generate(1000, subset=subset, seed=1)  # warm-up (imports, first allocations)
    poses = []

    def run():
        poses.append(generate(N, subset=subset, seed=2))

    measure(benchmark, run, family="poseaug", op="synthetic poses", mode=subset, batch=N, impl="fastsmall",
            bytes_moved=0, rounds=dict(rounds=5, iterations=1, warmup_rounds=1))
    assert len(poses[-1]) == N
