"""The main job on embedded data: ``python -m fastsmall.demo``.

Generates h36m16 poses, checks every usable backend of every op against the
plain-PyTorch reference (values and gradients), times the eager reference, the
``torch.compile``d reference and fastsmall side by side, then runs a short CReST+
on digits-LT and a short Knowledge Evolution (KELS) on digits-small (both from
scikit-learn's bundled digits) and a short PoseAug on generated poses, and prints
their result tables. Before the method runs it times one training step of each method the
released code's way and fastsmall's fast path, on this machine, and prints the speed-up.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tb

import fastsmall as fs
from fastsmall import _extension as ext
from fastsmall.methods.poseaug.data import synthetic

SK = fs.Skeleton.h36m16()
OPS = {
    "kcs_forward": (lambda m, x, **kw: (m.kcs_forward(x, SK, **kw),), "poses"),
    "bone_decompose": (lambda m, x, **kw: m.bone_decompose(x, SK, **kw), "poses"),
    "kcs_inverse": (lambda m, b, **kw: (m.kcs_inverse(b, SK, **kw),), "bones"),
    "part_kcs_gram": (lambda m, b, **kw: (m.part_kcs_gram(b, SK, **kw),), "bones"),
}


#: progress bars (on stderr) for the method runs when a person watches; none in logs and CI
QUIET = not sys.stderr.isatty()


def usable_backends(device: torch.device) -> list[str]:
    out = []
    if ext.C is not None and device.type == "cpu":
        out.append("cpp")
    if ext.TRITON_ERROR is None and (device.type == "cuda" or ext.triton_interpreted()):
        out.append("triton")
    return out


def check_correctness(poses: torch.Tensor, backends: list[str]) -> list[tuple]:
    rows = []
    bones = fs.reference.kcs_forward(poses, SK)
    for name, (fn, kind) in OPS.items():
        inp = (poses if kind == "poses" else bones).double()
        leaf = inp.clone().requires_grad_()
        ref = fn(fs.ops, leaf, backend="reference")
        cot = [torch.randn_like(o) for o in ref]
        (ref_grad,) = torch.autograd.grad(ref, leaf, cot)
        for backend in backends:
            leaf_b = inp.clone().requires_grad_()
            out = fn(fs.ops, leaf_b, backend=backend)
            (grad,) = torch.autograd.grad(out, leaf_b, cot)
            err = max((o - r).abs().max().item() for o, r in zip(out, ref))
            gerr = (grad - ref_grad).abs().max().item()
            rows.append((name, backend, err, gerr, "ok" if max(err, gerr) < 1e-9 else "MISMATCH"))
    rows += check_bn_act_dropout(poses.shape[0], poses.device, backends)
    return rows


def check_bn_act_dropout(n: int, device: torch.device, backends: list[str]) -> list[tuple]:
    """The MLP-block tail (batch norm, leaky ReLU, dropout 0.25, residual) on [n, 64] float64."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    y, res, cot = (torch.randn(n, 64, generator=gen, dtype=torch.float64).to(device) for _ in range(3))
    weight, bias = (torch.randn(64, generator=gen, dtype=torch.float64).to(device) for _ in range(2))
    seed = torch.tensor([7], device=device)

    def run(backend):
        leaf = y.clone().requires_grad_()
        out = fs.ops.bn_act_dropout(leaf, None, None, weight, bias, True, negative_slope=0.1, p=0.25, residual=res,
                                    seed=seed, backend=backend)
        return out, torch.autograd.grad(out, leaf, cot)[0]

    ref, ref_grad = run("reference")
    rows = []
    for backend in backends:
        out, grad = run(backend)
        err, gerr = (out - ref).abs().max().item(), (grad - ref_grad).abs().max().item()
        rows.append(("bn_act_dropout", backend, err, gerr, "ok" if max(err, gerr) < 1e-9 else "MISMATCH"))
    return rows


def time_ops(batch: int, device: torch.device, min_run_time: float) -> list[tuple]:
    poses = synthetic.generate(batch, seed=1).poses_3d.to(device)
    bones = fs.reference.kcs_forward(poses, SK)
    rows = []
    for name, (fn, kind) in OPS.items():
        inp = poses if kind == "poses" else bones
        eager = lambda t, fn=fn: fn(fs.reference, t)  # noqa: E731
        torch._dynamo.reset()
        compiled = torch.compile(eager)
        start = time.perf_counter()
        compiled(inp)
        compile_s = time.perf_counter() - start
        fast = lambda t, fn=fn: fn(fs.ops, t)  # noqa: E731
        medians = []
        for f in (eager, compiled, fast):
            timer = tb.Timer("f(t)", globals={"f": f, "t": inp})
            medians.append(timer.blocked_autorange(min_run_time=min_run_time).median)
        rows.append((name, batch, *medians, compile_s))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 65536])
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds of timing per measurement")
    parser.add_argument("--ops-only", action="store_true", help="skip the method pipelines")
    parser.add_argument("--out", default="runs/demo", help="where the method runs write their run directories")
    parser.add_argument("--step-repeats", type=int, default=5, help="alternating runs per training-step timing")
    args = parser.parse_args(argv)
    demo_start = time.perf_counter()
    device = torch.device(args.device)
    print(f"fastsmall {fs.__version__} | torch {torch.__version__} | device {device} | "
          f"threads {torch.get_num_threads()}")

    poses = synthetic.generate(257, seed=0).poses_3d.to(device)
    backends = usable_backends(device)
    print(f"\nCorrectness against the reference (257 generated poses, float64, values and gradients); "
          f"backends: {', '.join(backends) or 'none (reference only)'}")
    print(f"{'op':<16}{'backend':<9}{'max |err|':>12}{'grad |err|':>12}  status")
    failures = 0
    for name, backend, err, gerr, status in check_correctness(poses, backends):
        failures += status != "ok"
        print(f"{name:<16}{backend:<9}{err:>12.2e}{gerr:>12.2e}  {status}")

    print("\nSpeed, float32 forward (medians; compile time is the first call of the compiled reference;\n"
          "large batches include the page faults of every fresh output for all three -- bench/ measures\n"
          "with freed memory reused, see bench/RESULTS.md)")
    print(f"{'op':<16}{'B':>7}{'eager':>11}{'compiled':>11}{'fastsmall':>11}{'vs eager':>10}{'vs comp.':>10}"
          f"{'compile':>9}")
    for name, batch, e, c, f, cs in (row for b in args.sizes for row in time_ops(b, device, args.min_run_time)):
        print(f"{name:<16}{batch:>7}{e * 1e6:>9.1f}µs{c * 1e6:>9.1f}µs{f * 1e6:>9.1f}µs{e / f:>9.1f}x"
              f"{c / f:>9.1f}x{cs:>8.1f}s")
    if not args.ops_only:
        precision = fast_precision(device)
        print_step_speedups(precision, args.step_repeats)
        run_crest_demo(args.out, precision)
        run_ke_demo(args.out, precision)
        run_poseaug_demo(args.out, precision)
        plots = sorted(str(p) for p in Path(args.out).rglob("*.png"))
        print(f"\nRun directories under {args.out}/ (config.json, metrics.jsonl / .csv, summary.json, "
              f"checkpoints/); {len(plots)} plots:")
        for path in plots:
            print(f"  {path}")
    print(f"\nDemo finished in {(time.perf_counter() - demo_start) / 60:.1f} min.")
    return 1 if failures else 0


def fast_precision(device: torch.device) -> str:
    """The demo's fast path: fastsmall's fused kernels (every method's default ``impl``; for CReST with
    ``channels_last``) and bf16 matmuls / convolutions where this machine has bf16 matrix units, fp32
    elsewhere. (``--compile`` is left off: on CPU its compile time exceeds what it saves in runs this
    short.)"""
    from fastsmall.methods.common.speed import bf16_supported

    return "bf16" if bf16_supported(device)[0] else "fp32"


def print_step_speedups(precision: str, repeats: int = 5) -> None:
    """One training step of each method, the released code's way (``--impl official``, eager fp32)
    against the demo's fast path, timed alternately on this machine (median of ``repeats``)."""
    from fastsmall.methods import steps
    from fastsmall.methods.common.speed import matrix_units

    units = [k for k in ("amx_bf16", "avx512_bf16", "cuda_bf16") if matrix_units()[k]]
    fast = f"fastsmall {precision}" + (" (bf16 matrix units: " + ", ".join(units) + ")" if precision == "bf16" else
                                       " (no bf16 matrix units here)")
    print(f"\nTraining-step speed on this machine: official eager fp32 vs {fast}; {torch.get_num_threads()} threads, "
          f"median of {repeats} alternating runs")
    print(f"{'step':<52}{'official':>11}{'fastsmall':>11}{'speed-up':>10}")
    rows = (("CReST+ step (digits-LT, 32 + 2 x 224 images)", steps.crest, {"channels_last": True}),
            ("KE epoch (digits-small, 100 images)", steps.ke, {}),
            (f"PoseAug G+D iteration (SimpleBaseline, B = {steps.POSEAUG_BATCH:,})", steps.poseaug, {"impl": "fused"}))
    for title, make, fused in rows:
        runs = {"official": make(impl="official"), "fast": make(precision=precision, **fused)}
        for fn in runs.values():
            fn()  # warm-up
        start = time.perf_counter()
        runs["official"]()
        # at least ~0.2 s per timed run: a step of a few ms alone is at the mercy of the scheduler
        per_run = max(1, math.ceil(0.2 / max(time.perf_counter() - start, 1e-6)))
        ms = steps.time_interleaved(runs, repeats, per_run)
        print(f"{title:<52}{ms['official']:>9.0f}ms{ms['fast']:>9.0f}ms{ms['official'] / ms['fast']:>9.2f}x", flush=True)


def run_crest_demo(out: str, precision: str = "fp32", **overrides) -> None:
    """A short CReST+ run on the embedded digits-LT data, with its result table (``overrides``:
    Config fields, for the tests' short runs)."""
    import shutil

    from fastsmall.methods import crest

    run_dir = f"{out}/crest-plus"
    shutil.rmtree(run_dir, ignore_errors=True)
    # channels-last: NHWC convolutions and the fused BatchNorm -> ReLU of its 480-image steps (faster in
    # fp32 and in bf16, bench/RESULTS.md)
    cfg = crest.Config(**{**dict(plus=True, generations=3, epochs=4, eval_last=2, quiet=QUIET, out=run_dir,
                                 precision=precision, channels_last=True), **overrides})
    print(f"\nCReST+ on digits-LT (imbalance {cfg.imbalance:g}, labelled fraction {cfg.labeled_fraction:g}, "
          f"{cfg.generations} generations x {cfg.epochs} epochs), run directory {run_dir}")
    summary = crest.train(cfg)
    print("generation 1 is plain FixMatch (same seed); later ones add CReST+'s rebalanced pseudo-labels. One "
          "seed at a small budget: one seed's tail recall moves by +-0.1-0.3;\nthe effect over 5 seeds and 6 "
          "generations, with paired differences, is in docs/crest_digits_lt.md")
    print(f"{'generation':<16}{'test acc':>10}{'balanced':>10}{'logit-adj.':>12}{'3 rarest recall':>17}")
    for g in summary["per_generation"]:
        name = f"{g['generation']}" + (" (FixMatch)" if g["generation"] == 1 else "")
        print(f"{name:<16}{g['test_accuracy']:>10.3f}{g['test_balanced_accuracy']:>10.3f}"
              f"{g['test_logit_adjusted_accuracy']:>12.3f}{g['tail_recall']:>17.3f}")


def run_ke_demo(out: str, precision: str = "fp32") -> None:
    """A short Knowledge Evolution (KELS, s_r = 0.5) run on digits-small, with its result table."""
    import shutil

    from fastsmall.methods import ke
    from fastsmall.methods.ke.__main__ import result_table

    run_dir = f"{out}/ke-kels"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = ke.Config(split="kels", split_rate=0.5, generations=5, quiet=QUIET, out=run_dir, precision=precision)
    print(f"\nKnowledge Evolution (KELS, s_r = {cfg.split_rate:g}) on digits-small ({cfg.per_class or 10} training "
          f"images per class, {cfg.generations} generations x {cfg.epochs} epochs), run directory {run_dir}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an 8x8 CNN gains nothing from intra-op threads
    try:
        summary = ke.train(cfg)
    finally:
        torch.set_num_threads(threads)
    print(result_table(summary))


def run_poseaug_demo(out: str, precision: str = "fp32", **overrides) -> None:
    """A short PoseAug run: train on narrow generated poses, test on broad ones; learned PoseAug
    against the frozen-augmentor control (random augmentation through the same heads) from the same
    stage-0 weights, so that what the augmentor learned is what differs. ``overrides`` replace
    Config fields (the tests' short runs)."""
    import dataclasses
    import shutil

    from fastsmall.methods import poseaug
    from fastsmall.methods.poseaug.__main__ import result_table
    from fastsmall.methods.poseaug.diagnostics import diagnostics_table

    run_dir = f"{out}/poseaug"
    shutil.rmtree(run_dir, ignore_errors=True)
    # 2 x 32 G iterations an epoch, the estimator from the 128th on: the augmentor gets enough steps
    # for its diagnostics to move (the released code gives it ~3,000 before the estimator uses it)
    base = poseaug.Config(subset="narrow", train_size=4096, test_size=2048, batch_size=128, baseline_epochs=12,
                          epochs=6, gan_iters_per_epoch=64, warmup_iters=128, estimator="simple_baseline",
                          estimator_width=512, eval=["synthetic-broad"], quiet=QUIET, precision=precision)
    base = dataclasses.replace(base, **overrides)
    print(f"\nPoseAug on generated poses: {base.estimator} (width {base.estimator_width}) trained on "
          f"{base.train_size} narrow poses (standing/walking, facing the camera) for {base.baseline_epochs} epochs, "
          f"then {base.epochs} PoseAug epochs of {base.gan_iters_per_epoch} augmentor iterations; tested on held-out "
          f"narrow and broad poses. Run directory {run_dir}")
    stage0 = dataclasses.replace(base, out=f"{run_dir}/stage0", augment=False)
    poseaug.train(stage0, stage0_only=True)
    weights = f"{stage0.out}/checkpoints/estimator.pt"
    summaries = {name: poseaug.train(dataclasses.replace(base, out=f"{run_dir}/{name}", pretrained=weights,
                                                         augmentor=name))
                 for name in ("learned", "frozen")}
    print(result_table(summaries["learned"]))
    records = [json.loads(line) for line in (Path(run_dir) / "learned" / "metrics.jsonl").read_text().splitlines()]
    print("\nHas the augmentor learned? Per PoseAug epoch (learned/plots/augmentor.png): the share of its poses the "
          "image filter keeps, their root-depth median against the real poses', the heading change, the bone-angle "
          "change and the discriminators' accuracy on its fakes")
    print(diagnostics_table(records))
    print("\n" + augmentor_comparison(summaries))


def augmentor_comparison(summaries: dict) -> str:
    """Last-epoch MPJPE of learned PoseAug against the frozen control, per evaluation set."""
    learned, frozen = summaries["learned"]["last"], summaries["frozen"]["last"]
    rows = ["Learned augmentor against the frozen one (same stage-0 weights, same real-data passes; one seed -- "
            "docs/poseaug_narrow_to_broad.md has 5 seeds and the other controls), last-epoch MPJPE (mm):",
            f"{'set':<22}{'frozen':>9}{'learned':>9}{'difference':>12}"]
    for name in learned:
        a, b = learned[name]["mpjpe"], frozen[name]["mpjpe"]
        rows.append(f"{name:<22}{b:>9.1f}{a:>9.1f}{a - b:>+12.1f}")
    return "\n".join(rows)

if __name__ == "__main__":
    raise SystemExit(main())
