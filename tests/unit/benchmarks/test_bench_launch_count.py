"""benchmarks/bench_launch_count.py: its counting machinery (what the lead quotes for issue 14's launch target).
Run in a child process under TRITON_INTERPRET=1, which must be set before any @triton.jit is decorated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_CHILD = r"""
import argparse, json, sys, torch
import triton, triton.language as tl
sys.path.insert(0, "benchmarks")
import bench_launch_count as b

@triton.jit
def add_one(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

out = {}
x = torch.zeros(64)
for guarded in (False, True):
    m = b._counter_mode()
    with b._interpreter_guard() if guarded else torch.no_grad():
        with m:
            y = x * 2
            add_one[(4,)](x, 64, BLOCK=16)
    out[str(guarded)] = dict(m.ops)
out["x"] = float(x.sum())
a = argparse.Namespace(heads=2, head_dim=16, batch=1, chunk=8, inner_clip=0.3, update_dropout=0.2, dtype="fp32",
                       device="cpu")
counts = {n: b.count_call("chunked", 8 * n, a) for n in (4, 8, 16)}
fits = {p: b.fit(counts, p) for p in ("fwd", "bwd")}
out["fits"] = fits
out["per_layer"] = {p: counts[16][p] for p in ("fwd", "bwd")}
out["triton"] = b.count_call("triton", 16, a)  # 2 chunks: the interpreter is slow
print(json.dumps(out))
"""


def test_counting_machinery():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # the interpreter's host copies inside a launch are not counted; the op outside it is, and the kernel ran (twice)
    assert sum(r["False"].values()) > 1 and r["True"] == {"aten.mul": 1} and r["x"] == 128.0
    # the chunked op count is affine in chunks: fixed + slope x n reproduces every measured length exactly
    for phase in ("fwd", "bwd"):
        fixed, slope, affine = r["fits"][phase]
        assert affine and slope > 100 and fixed + 16 * slope == r["per_layer"][phase]
    # under the interpreter the kernels run: counted as Triton launches, never reported as a fallback
    t = r["triton"]
    assert not t.get("fell_back"), t
    assert t["fwd_triton"] > 0 and t["bwd_triton"] > 0 and sum(t["kernels"].values()) == t["fwd_triton"] + \
        t["bwd_triton"], t
