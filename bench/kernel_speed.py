"""Side-by-side timing of two builds of fastsmall._C (e.g. before / after a C++ refactor).

    python3 bench/kernel_speed.py /tmp/old_C.so fastsmall/_C.cpython-311-x86_64-linux-gnu.so \
        --repeats 5 --threads 1 2 [--json out.json]

Two builds cannot be loaded in one process (both register the `fastsmall` library), so each
measurement is a fresh subprocess that loads one .so with torch.ops.load_library and times the
bulk ops (median of several timed calls after warm-up). Builds are interleaved (A, B, A, B, ...)
per thread count, so drifts of a noisy shared machine hit both alike; the report is the median
per build over the repeats and the ratio B / A (< 1: B is faster). Each op is reported twice:
wall-clock time, and "[cpu]": the process's CPU time (all threads) for the call, which a
process that is descheduled by other load on a shared machine does not inflate.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

H36M16 = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14]
PARTS = ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [3, 3, 4, 3, 2])


def cases():
    """name -> zero-argument callable, inputs made once."""
    ops = torch.ops.fastsmall
    g = torch.Generator().manual_seed(0)
    c = {}
    B = 1 << 18
    x = torch.randn(B, 16, 3, generator=g)
    bones = torch.randn(B, 15, 3, generator=g)
    gx = torch.randn(B, 16, 3, generator=g)
    gu, gl = torch.randn(B, 15, 3, generator=g), torch.randn(B, 15, 1, generator=g)
    c["kcs_forward fwd 2^18"] = lambda: ops.kcs_forward(x, H36M16)
    c["kcs_forward bwd 2^18"] = lambda: ops.kcs_forward_backward(bones, H36M16)
    c["bone_decompose fwd 2^18"] = lambda: ops.bone_decompose(x, H36M16, 0.0)
    c["bone_decompose bwd 2^18"] = lambda: ops.bone_decompose_backward(gu, gl, x, H36M16, 0.0)
    c["kcs_inverse fwd 2^18"] = lambda: ops.kcs_inverse(bones, H36M16, None)
    c["kcs_inverse bwd 2^18"] = lambda: ops.kcs_inverse_backward(gx, H36M16)
    Bg = 1 << 16
    u = torch.randn(Bg, 15, 3, generator=g)
    gg = torch.randn(Bg, sum(n * n for n in PARTS[1]), generator=g)
    c["part_kcs_gram compact fwd 2^16"] = lambda: ops.part_kcs_gram(u, *PARTS, True)
    c["part_kcs_gram compact bwd 2^16"] = lambda: ops.part_kcs_gram_backward(gg, u, *PARTS, True)
    for Bd, C in ((448, 10), (65536, 100), (1 << 20, 10)):
        z = torch.randn(Bd, C, generator=g) * 3
        prior, running = torch.rand(C, generator=g) + 0.1, torch.rand(C, generator=g) + 0.1
        y = torch.randint(0, C, (Bd,), generator=g)
        m = torch.rand(Bd, generator=g) < 0.6
        one = torch.tensor(1.0)
        c[f"distribution_align {Bd}x{C}"] = lambda z=z, p=prior, r=running: ops.distribution_align(
            z, p, r, 1.0, 0.95, 1e-6, True)
        c[f"softmax_batch_mean {Bd}x{C}"] = lambda z=z: ops.softmax_batch_mean(z)
        c[f"masked_cross_entropy fwd {Bd}x{C}"] = lambda z=z, y=y, m=m: ops.masked_cross_entropy(z, y, m)
        c[f"masked_cross_entropy bwd {Bd}x{C}"] = lambda z=z, y=y, m=m: ops.masked_cross_entropy_backward(
            one, z, y, m)
    # ~10M floats over a few tensors, one of each mask kind
    ws = [torch.randn(2048, 2048, generator=g), torch.randn(1024, 2048, generator=g),
          torch.randn(512, 64, 3, 3, 3, generator=g), torch.randn(3072, 1024, generator=g)]  # 10.3M in all
    masks = [torch.rand(ws[0].shape, generator=g) < 0.5, None, None, None]
    ko, ki = [-1, 512, -1, -1], [-1, 1024, -1, -1]
    rate, seed = [-1.0, -1.0, 0.5, 0.3], [0, 0, 11, 12]
    c["ke_reinit_ kaiming_normal 10M"] = lambda: ops.ke_reinit_(ws, masks, ko, ki, rate, seed, 1, 2, "kaiming_normal")
    c["ke_reinit_ torch_default 10M"] = lambda: ops.ke_reinit_(ws, masks, ko, ki, rate, seed, 1, 2, "torch_default")
    c["masked_mul_ 10M"] = lambda: ops.masked_mul_(ws, masks, ko, ki, rate, seed)
    # the MLP-block tail at the PoseAug estimator's shape, training mode (batch statistics), p = 0.25
    y = torch.randn(1024, 1024, generator=g)
    wb, bb, res = torch.rand(1024, generator=g) + 0.5, torch.randn(1024, generator=g), torch.randn(1024, 1024, generator=g)
    dseed, gy = torch.tensor([7]), torch.randn(1024, 1024, generator=g)
    c["bn_act_dropout fwd 1024x1024"] = lambda: ops.bn_act_dropout(y, wb, bb, None, None, res, dseed, 1e-5, 0.0, 0.25)
    mean, var = y.mean(0), y.var(0, unbiased=False)
    c["bn_act_dropout bwd 1024x1024"] = lambda: ops.bn_act_dropout_backward(gy, y, wb, bb, mean, var, dseed, True,
                                                                            1e-5, 0.0, 0.25)
    return c


def reuse_freed_memory():
    """As bench/conftest.py: glibc keeps freed blocks instead of unmapping them, so that each call's
    output does not pay ~50k page faults (at 2^18-2^20 poses they cost more than the kernels)."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)            # M_MMAP_MAX
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def child(lib, threads, calls, only):
    reuse_freed_memory()
    torch.ops.load_library(lib)
    torch.set_num_threads(threads)
    out = {}
    for name, f in cases().items():
        if only and not any(o in name for o in only):
            continue
        for _ in range(2):
            f()
        wall, cpu = [], []
        for _ in range(calls):
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = statistics.median(wall)
        out[name + " [cpu]"] = statistics.median(cpu)
    print(json.dumps(out))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="baseline .so")
    p.add_argument("b", help="candidate .so")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calls", type=int, default=7, help="timed calls per op per subprocess (median)")
    p.add_argument("--only", nargs="*", default=[], help="time only the ops whose names contain one of these")
    p.add_argument("--json")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.calls, args.only)
    libs = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    results = {}  # threads -> build -> op -> [medians]
    for threads in args.threads:
        per = {"A": {}, "B": {}}
        for rep in range(args.repeats):
            for build in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                out = subprocess.run([sys.executable, __file__, libs["A"], libs["B"], "--calls", str(args.calls), "--only", *args.only,
                                      "--child", libs[build], str(threads)], check=True, capture_output=True,
                                     text=True, env=env)
                for name, t in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    per[build].setdefault(name, []).append(t)
            print(f"threads {threads}: repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
        results[threads] = per
    print(f"CPU: {cpu_model()}; A = {libs['A']}; B = {libs['B']}; {args.repeats} interleaved repeats, "
          f"median of {args.calls} calls each")
    print(f"| op | threads | A median ms | B median ms | B/A |")
    print("|---|---|---|---|---|")
    table = []
    for threads, per in results.items():
        for name in per["A"]:
            a, b = statistics.median(per["A"][name]), statistics.median(per["B"][name])
            table.append({"op": name, "threads": threads, "a_ms": a * 1e3, "b_ms": b * 1e3, "ratio": b / a})
            print(f"| {name} | {threads} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "a": libs["A"], "b": libs["B"], "repeats": args.repeats,
                       "raw": results, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
