"""Bit-for-bit record of every CPU kernel of fastsmall._C, for checking a C++ refactor.

Runs every op of torch.ops.fastsmall (forward and backward) on fixed, seeded inputs over
float32/float64/bfloat16/float16, several shapes (odd sizes, empty batches, non-contiguous
inputs, non-topological skeletons, C on both sides of the tile/row switch, bool and float
masks, every mask kind and init of ke_reinit_) and saves all outputs with torch.save.
`compare` then checks two records for identical bits (NaN == NaN with the same payload).

    python3 bench/kernel_bits.py save /tmp/bits_old.pt --lib /tmp/old_C.so
    python3 bench/kernel_bits.py save /tmp/bits_new.pt              # fastsmall/_C*.so of this tree
    python3 bench/kernel_bits.py compare /tmp/bits_old.pt /tmp/bits_new.pt

Loads the extension with torch.ops.load_library (not `import fastsmall`), so any build of
_C can be recorded; one build per process (two would both register the `fastsmall`
library). The instruction-set paths of distribution_align are chosen once per process from
FASTSMALL_SIMD_BYTES, so `save` runs itself once per cap (16, 32, 64, or --simd) and once per
thread count (1, 2) in subprocesses and merges the records.
"""
import argparse
import glob
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
H36M16 = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14]
# A tree whose parent list is not topologically ordered (parents after children), root not 0.
SHUFFLED = [3, 3, 0, -1, 1, 3, 5]
PARTS = ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [3, 3, 4, 3, 2])  # bones, sizes
OVERLAP_PARTS = ([14, 0, 7, 7, 8, 9, 2], [3, 4])


def default_lib():
    found = sorted(glob.glob(os.path.join(ROOT, "fastsmall", "_C*.so")))
    if not found:
        sys.exit("no fastsmall/_C*.so: build with python3 setup.py build_ext --inplace, or pass --lib")
    return found[0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed, scale=1.0):
    return (torch.randn(shape, generator=gen(seed), dtype=torch.float64) * scale).to(dtype)


def kcs_cases(rec):
    ops = torch.ops.fastsmall
    for dtype in DTYPES:
        for parents, pname in ((H36M16, "h36m"), (SHUFFLED, "shuf")):
            J = len(parents)
            for D in (2, 3):
                for batch in ((0,), (1,), (7,), (3, 5), (1031,), (2, 0, 4)):
                    key = f"{pname}/{dtype}/D{D}/{batch}"
                    s = sum(map(ord, key))
                    x = randn((*batch, J, D), dtype, s)
                    if x.numel():
                        x.view(-1, J, D)[:, 1] = x.view(-1, J, D)[:, parents.index(-1)]  # a zero-length bone
                    rec[f"kcs_forward/{key}"] = ops.kcs_forward(x, parents)
                    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
                    rec[f"kcs_forward_nc/{key}"] = ops.kcs_forward(xt, parents)
                    g = randn((*batch, J - 1, D), dtype, s + 1)
                    rec[f"kcs_forward_backward/{key}"] = ops.kcs_forward_backward(g, parents)
                    for eps in (0.0, 1e-3, 0.7):
                        u, l = ops.bone_decompose(x, parents, eps)
                        rec[f"bone_decompose/{key}/eps{eps}/unit"] = u
                        rec[f"bone_decompose/{key}/eps{eps}/length"] = l
                        gu = randn((*batch, J - 1, D), dtype, s + 2)
                        gl = randn((*batch, J - 1, 1), dtype, s + 3)
                        for which, a, b in (("both", gu, gl), ("unit", gu, None), ("length", None, gl)):
                            rec[f"bone_decompose_backward/{key}/eps{eps}/{which}"] = ops.bone_decompose_backward(
                                a, b, x, parents, eps)
                    bones = randn((*batch, J - 1, D), dtype, s + 4)
                    root = randn((*batch, 1, D), dtype, s + 5)
                    rec[f"kcs_inverse/{key}/noroot"] = ops.kcs_inverse(bones, parents, None)
                    rec[f"kcs_inverse/{key}/root"] = ops.kcs_inverse(bones, parents, root)
                    gb, gr = ops.kcs_inverse_backward(randn((*batch, J, D), dtype, s + 6), parents)
                    rec[f"kcs_inverse_backward/{key}/bones"] = gb
                    rec[f"kcs_inverse_backward/{key}/root"] = gr


def gram_cases(rec):
    ops = torch.ops.fastsmall
    for dtype in DTYPES:
        for (pb, ps), pname in ((PARTS, "parts"), (OVERLAP_PARTS, "overlap")):
            for D in (2, 3):
                for batch in ((0,), (1,), (5,), (2, 3), (777,)):
                    for compact in (False, True):
                        key = f"{pname}/{dtype}/D{D}/{batch}/compact{compact}"
                        s = sum(map(ord, key))
                        bones = randn((*batch, 15, D), dtype, s)
                        out = ops.part_kcs_gram(bones, pb, ps, compact)
                        rec[f"part_kcs_gram/{key}"] = out
                        g = randn(out.shape, dtype, s + 1)
                        rec[f"part_kcs_gram_backward/{key}"] = ops.part_kcs_gram_backward(g, bones, pb, ps, compact)


def da_cases(rec, tag):
    ops = torch.ops.fastsmall
    shapes = [(0, 10), (1, 1), (5, 3), (31, 10), (33, 10), (448, 10), (100, 100), (64, 127), (65, 128),
              (37, 129), (300, 1000), (3000, 17), (2, 5000)]
    for dtype in DTYPES:
        for B, C in shapes:
            key = f"{tag}/{dtype}/{B}x{C}"
            s = sum(map(ord, key.split("/", 1)[1]))
            z = randn((B, C), dtype, s, scale=3.0)
            if B >= 3 and C >= 2:
                z[1, 0] = float("inf") if dtype != torch.bfloat16 else z[1, 0]
                z[2, :] = 1.0  # ties: argmax is the first index
            prior = torch.rand(C, generator=gen(s + 1), dtype=torch.float64).to(dtype) + 0.1
            running = torch.rand(C, generator=gen(s + 2), dtype=torch.float64).to(dtype) + 0.1
            for T, thr, eps, rp in ((1.0, 0.95, 1e-6, True), (0.5, 0.3, 0.0, False), (2.0, 0.0, 1e-2, True)):
                outs = ops.distribution_align(z, prior, running, T, thr, eps, rp)
                for name, o in zip(("probs", "label", "mask", "mean"), outs):
                    rec[f"distribution_align/{key}/T{T}/{name}"] = o
            rec[f"softmax_batch_mean/{key}"] = ops.softmax_batch_mean(z)
            y = torch.randint(0, C, (B,), generator=gen(s + 3))
            mb = torch.rand(B, generator=gen(s + 4)) < 0.6
            mf = (torch.rand(B, generator=gen(s + 5), dtype=torch.float64) * (mb.double())).to(dtype)
            for mname, m in (("bool", mb), ("float", mf), ("f64", mf.double())):
                rec[f"masked_cross_entropy/{key}/{mname}"] = ops.masked_cross_entropy(z, y, m)
                for grad in (1.0, -0.37):
                    gt = torch.tensor(grad, dtype=dtype)
                    rec[f"masked_cross_entropy_backward/{key}/{mname}/g{grad}"] = \
                        ops.masked_cross_entropy_backward(gt, z, y, m)


def ke_cases(rec):
    ops = torch.ops.fastsmall
    shapes = [(64, 33), (7, 5, 3, 3), (1000, 129), (0, 4), (3, 0), (2, 2), (4097, 3)]
    for dtype in DTYPES:
        for init in ("torch_default", "kaiming_normal", "zero", None):
            tensors, masks, ko, ki, rate, wseed = [], [], [], [], [], []
            for i, shape in enumerate(shapes):
                for kind in ("dense", "kels", "wels"):
                    key = f"{dtype}/{shape}/{kind}"
                    s = sum(map(ord, key))
                    tensors.append(randn(shape, dtype, s))
                    if kind == "dense":
                        masks.append(torch.rand(shape, generator=gen(s + 1)) < 0.3)
                        ko.append(-1), ki.append(-1), rate.append(-1.0)
                    elif kind == "kels":
                        masks.append(None)
                        ko.append(shape[0] // 2), ki.append(shape[1] // 3 if shape[1] else 0), rate.append(-1.0)
                    else:
                        masks.append(None)
                        ko.append(-1), ki.append(-1), rate.append([0.0, 0.25, 1.0, 0.6][i % 4])
                    wseed.append(s * 7919 - 2 ** 40)
            if init is None:
                ops.masked_mul_(tensors, masks, ko, ki, rate, wseed)
                name = "masked_mul_"
            else:
                ops.ke_reinit_(tensors, masks, ko, ki, rate, wseed, 12345, 3, init)
                name = f"ke_reinit_/{init}"
            for i, t in enumerate(tensors):
                rec[f"{name}/{dtype}/{i}"] = t
    # ~1M elements in one tensor: several parallel chunks.
    big = randn((1024, 1024), torch.float32, 99)
    ops.ke_reinit_([big], [None], [-1], [-1], [0.4], [5], 7, 1, "kaiming_normal")
    rec["ke_reinit_/big"] = big


def record(lib, simd, threads):
    torch.ops.load_library(lib)
    torch.set_num_threads(threads)
    rec = {}
    da_cases(rec, f"simd{simd}")
    if simd == "default":  # the other kernels have no FASTSMALL_SIMD_BYTES switch
        kcs_cases(rec)
        gram_cases(rec)
        ke_cases(rec)
    return {f"t{threads}/{k}": v for k, v in rec.items()}


def save(args):
    lib = os.path.abspath(args.lib or default_lib())
    if args.child:
        simd, threads = args.child.split(",")
        rec = record(lib, simd, int(threads))
        torch.save(rec, args.out)
        return
    merged = {}
    for simd in ["default"] + args.simd:
        for threads in (1, 2):
            part = args.out + f".part-{simd}-{threads}"
            env = dict(os.environ)
            env.pop("FASTSMALL_SIMD_BYTES", None)
            if simd != "default":
                env["FASTSMALL_SIMD_BYTES"] = simd
            subprocess.run([sys.executable, __file__, "save", part, "--lib", lib, "--child", f"{simd},{threads}"],
                           check=True, env=env)
            merged.update(torch.load(part))
            os.remove(part)
    torch.save(merged, args.out)
    print(f"{len(merged)} outputs from {lib} -> {args.out}")


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape or a.stride() != b.stride():
        return False
    if a.dtype == torch.bool or not a.is_floating_point():
        return torch.equal(a, b)
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def compare(args):
    a, b = torch.load(args.a), torch.load(args.b)
    missing = sorted(set(a) ^ set(b))
    differ = [k for k in sorted(set(a) & set(b)) if not same_bits(a[k], b[k])]
    for k in missing[:20]:
        print("only in one record:", k)
    for k in differ[:40]:
        print("DIFFERENT BITS:", k)
    print(f"{len(set(a) & set(b))} outputs compared, {len(differ)} differ, {len(missing)} in one record only")
    sys.exit(1 if differ or missing else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--lib", help="the _C*.so to record (default: fastsmall/_C*.so of this tree)")
    s.add_argument("--simd", nargs="*", default=["16", "32", "64"], help="FASTSMALL_SIMD_BYTES caps to record")
    s.add_argument("--child", help=argparse.SUPPRESS)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    save(args) if args.cmd == "save" else compare(args)


if __name__ == "__main__":
    main()
