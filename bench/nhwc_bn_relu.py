"""Would ``bn_act_dropout`` on the [N*H*W, C] view of a channels-last feature map (BatchNorm2d's
layout exactly) beat ``F.relu(bn(x))`` in the CNN pipelines? Forward + backward at CReST's DigitsCNN
shapes (480 images of 8 x 8), float32 and bf16 (autocast for the modules), training statistics.
Best of 3 interleaved medians of 21 (ms).

    python bench/nhwc_bn_relu.py [--threads 2]
"""
import argparse
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
    print("| shape [N, C, H, W] | dtype | F.relu(bn(x)) ms | bn_act_dropout on [N*H*W, C] ms |\n|---|---|---|---|")
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
                rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: channels-last is [N, H, W, C] in memory
                out = fs.ops.bn_act_dropout_layer(rows, bn).reshape(n, h, h, c).permute(0, 3, 1, 2)
                out.backward(g)

            modules(), fused()
            a, b = [], []
            for _ in range(3):
                a.append(median_ms(modules))
                b.append(median_ms(fused))
            print(f"| [{n}, {c}, {h}, {h}] | {str(dtype).split('.')[1]} | {min(a):.2f} | {min(b):.2f} |")


if __name__ == "__main__":
    main()
