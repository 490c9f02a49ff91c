"""The benchmarks' bookkeeping (no timing): the least-traffic counts the `x floor` column divides by,
and report.py's per-op targets. A wrong byte count makes a kernel look closer to (or further from)
the hardware than it is, so it is checked like any other result.

bench/ modules run in a subprocess: importing bench/conftest.py changes the process's malloc
settings (mallopt), which the test process should not inherit.
"""
import json
import subprocess
import sys

from conftest import ROOT

_LINES = r"""
import sys, torch
sys.path.insert(0, "bench")
from bench_ke_reinit import _line_traffic
f32 = torch.zeros(64)                                     # 4 lines of 16 float32
keep = torch.ones(64, dtype=torch.bool)
assert _line_traffic([f32], [keep]) == 0                  # nothing reset: nothing moves
keep[:16] = False                                         # line 0 wholly reset: written only
assert _line_traffic([f32], [keep]) == 64, _line_traffic([f32], [keep])
keep[20] = False                                          # line 1 mixed: read + written
assert _line_traffic([f32], [keep]) == 64 + 128
keep[63] = False                                          # line 3 mixed
assert _line_traffic([f32], [keep]) == 64 + 128 + 128
odd = torch.zeros(3, 7)                                   # 21 floats: a full line and a 5-float tail
assert _line_traffic([odd], [torch.zeros(3, 7, dtype=torch.bool)]) == 64 + 128  # the tail line is partial
f64 = torch.zeros(16, dtype=torch.float64)                # 8 per line
k = torch.ones(16, dtype=torch.bool); k[::2] = False       # a WELS-like scatter: every line mixed
assert _line_traffic([f64], [k]) == 2 * 128
assert _line_traffic([f32, f64], [keep, k]) == 64 + 128 + 128 + 2 * 128  # summed over the list
print("ok")
"""


def test_line_traffic_counts_whole_cache_lines():
    out = subprocess.run([sys.executable, "-c", _LINES], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def _row(op, impl, median_s, nbytes, family="ke_reinit", batch=2 ** 20, mode="m"):
    return {"name": f"{op}-{impl}", "stats": {"median": median_s},
            "extra_info": dict(family=family, op=op, mode=mode, batch=batch, impl=impl, bytes=nbytes)}


def test_report_applies_the_per_op_floor_targets(tmp_path):
    """ke_reinit_'s floor target is 3x, everyone else's 2x; the part-Gram's bulk size is 2^18."""
    copy = _row("copy", "copy", 1.0, 10 ** 9)  # 1 GB/s: the floor of b bytes is b / 1e9 s
    rows = [copy,
            _row("ke_reinit_", "fastsmall", 2.5, 10 ** 9),   # 2.5x: within ke_reinit_'s 3x
            _row("masked_mul_", "fastsmall", 2.5, 10 ** 9),  # 2.5x: over the default 2x
            _row("copy", "copy", 1.0, 10 ** 9, family="part_kcs_gram", batch=2 ** 18),
            _row("part_kcs_gram[compact]", "fastsmall", 2.2, 10 ** 9, family="part_kcs_gram", batch=2 ** 18)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": rows, "machine_info": {}, "commit_info": {}}))
    out = subprocess.run([sys.executable, "bench/report.py", str(path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    missed = [line for line in out.stdout.splitlines() if line.startswith("- missed")]
    assert not any("ke_reinit_" in line for line in missed), missed
    assert any("masked_mul_" in line and "2.50x the floor (target within 2.0x)" in line for line in missed), missed
    assert any("part_kcs_gram[compact]" in line and "2.20x the floor" in line for line in missed), missed
