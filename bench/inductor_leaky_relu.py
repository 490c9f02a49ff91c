"""Why PoseAug's compiled D step is slower than eager (issue #12): inductor's CPU code for
leaky-ReLU forward + backward, alone.

    python bench/inductor_leaky_relu.py

Five [2,048, 256] float32 activations (the 3D discriminator's five part paths at B = 2,048),
``sum(f(x)).backward()``, 2 threads, interleaved medians of 9: eager ``F.leaky_relu``, compiled
``F.leaky_relu``, compiled ``torch.where(x > 0, x, 0.01 x)``, compiled ``torch.maximum(x, 0.01 x)``
(the same values; its gradient differs only at x == 0 exactly, where maximum splits a tie).
Prints the CPU.
"""
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xs = [torch.randn(2048, 256, requires_grad=True) for _ in range(5)]
    forms = {
        "F.leaky_relu": lambda x: F.leaky_relu(x),
        "torch.where(x > 0, x, 0.01 x)": lambda x: torch.where(x > 0, x, 0.01 * x),
        "torch.maximum(x, 0.01 x)": lambda x: torch.maximum(x, 0.01 * x),
    }
    runs = {"eager F.leaky_relu": forms["F.leaky_relu"]}
    runs.update({f"compiled {k}": torch.compile(v) for k, v in forms.items()})
    steps = {k: (lambda f=f: sum(f(x).sum() for x in xs).backward()) for k, f in runs.items()}
    for s in steps.values():
        for _ in range(3):
            s()
    times = {k: [] for k in steps}
    for _ in range(9):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu} ({torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; 2 threads")
    base = statistics.median(times["eager F.leaky_relu"])
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:<45} {m * 1e3:8.2f} ms  {m / base:5.1f}x eager")


if __name__ == "__main__":
    main()
