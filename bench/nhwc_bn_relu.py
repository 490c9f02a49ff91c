"""Does ``bn_act_dropout_layer`` on a channels-last feature map (the op on its [N*H*W, C] view,
BatchNorm2d's layout exactly) beat ``F.relu(bn(x))`` in the CNN pipelines? Forward + backward at
CReST's DigitsCNN shapes (480 images of 8 x 8), float32 and bf16 (autocast for the modules),
training statistics; the fused op with the kernel's column split forced
(``FASTSMALL_BN_ACT_SPLIT=columns``, the only split before the row split existed) and with its
automatic choice (the row split at these 32-64 channels). Best of 3 interleaved medians of 21 (ms).

    python bench/nhwc_bn_relu.py [--threads 2]
"""
import argparse
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastsmall as fs


def median_ms(fn, n=21):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads\n| shape [N, C, H, W] | dtype | F.relu(bn(x)) ms | fused, column split ms | "
          "fused, automatic split ms |\n|---|---|---|---|---|")
    for n, c, h in ((480, 32, 8), (480, 64, 4)):
        for dtype in (torch.float32, torch.bfloat16):
            bn = nn.BatchNorm2d(c).train()
            x = torch.randn(n, c, h, h, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
            g = torch.randn(n, c, h, h, dtype=dtype).contiguous(memory_format=torch.channels_last)

            def modules():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    out = F.relu(bn(x))
                out.backward(g)

            def fused():
                fs.ops.bn_act_dropout_layer(x, bn).backward(g)

            def columns():
                os.environ["FASTSMALL_BN_ACT_SPLIT"] = "columns"  # read by the kernel at every call
                try:
                    return median_ms(fused)
                finally:
                    os.environ.pop("FASTSMALL_BN_ACT_SPLIT")

            modules(), fused()
            a, b, r = [], [], []
            for _ in range(3):
                a.append(median_ms(modules))
                b.append(columns())
                r.append(median_ms(fused))
            print(f"| [{n}, {c}, {h}, {h}] | {str(dtype).split('.')[1]} | {min(a):.2f} | {min(b):.2f} | {min(r):.2f} |")


if __name__ == "__main__":
    main()
