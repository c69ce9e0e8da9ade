"""Same seed, same data, every parallel layout: the training CLI's losses against the single process's.

    python tools/layout_parity.py [--variants hope titans deltanet transformer] [--iters 3] [--tol 1e-5]

For each variant it runs `python -m hope_megatron.train` once on one process (TP1, the reference) and then on 2
processes (torchrun --standalone) at TP2, PP2, DP2, DP2 + distributed optimizer, TP2 + sequence parallel and FSDP
(--use-torch-fsdp2), with the CLI's defaults otherwise (tied embeddings, the vocabulary padded to a multiple of
128 x TP: NullTokenizer's 513 ids give 640 rows at TP1 and 768 at TP2). It reads the `lm loss` and the parameter count
the CLI prints and writes a markdown table of max_i |loss_i - loss_i(TP1)| / loss_i(TP1) over the iterations. Exit
status 1 when a cell exceeds --tol or a parameter count differs from TP1's. About 25 launches: ~6 min on 2 CPU cores.

Runs the CLI in subprocesses only (tools/ never imports model code).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "128",
         "--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "4", "--mock-data",
         "--tokenizer-type", "NullTokenizer", "--vocab-size", "512", "--lr", "3e-3", "--lr-warmup-iters", "1",
         "--log-interval", "1", "--seed", "1234", "--no-exit-signal-handler"]
LAYOUTS = {  # name -> (processes, flags)
    "TP2": (2, ["--tensor-model-parallel-size", "2"]),
    "PP2": (2, ["--pipeline-model-parallel-size", "2"]),
    "DP2": (2, []),
    "DP2+distopt": (2, ["--use-distributed-optimizer"]),
    "TP2+SP": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "FSDP": (2, ["--use-torch-fsdp2"]),
}
LOSS = re.compile(r"iteration +(\d+)/ +\d+ \|.*?lm loss: (\S+) \|")
PARAMS = re.compile(r"\| parameters ([\d,]+) \|")


def run_cli(python: str, procs: int, flags, timeout: float):
    """(losses by iteration, parameter count) printed by one CLI run; raises with the log tail on failure."""
    if procs == 1:
        cmd = [python, "-m", "hope_megatron.train", *flags]
    else:
        cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "hope_megatron.train", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    losses = {int(i): float(x) for i, x in LOSS.findall(proc.stdout)}
    params = PARAMS.search(proc.stdout)
    return losses, int(params.group(1).replace(",", "")) if params else None


def rel_diff(losses, ref) -> float:
    if sorted(losses) != sorted(ref):
        return float("inf")
    return max(abs(losses[i] - ref[i]) / abs(ref[i]) for i in ref)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["hope", "titans", "deltanet", "transformer"])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--iters", type=int, default=3, help="training iterations per run")
    p.add_argument("--tol", type=float, default=1e-5, help="largest relative loss difference accepted")
    p.add_argument("--python", default=sys.executable, help="interpreter with hope_megatron installed")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    rows, ok = [], True
    for variant in a.variants:
        flags = MODEL + ["--hope-variant", variant, "--train-iters", str(a.iters)]
        ref, ref_params = run_cli(a.python, 1, flags, a.timeout)
        print(f"{variant} TP1: losses {[ref[i] for i in sorted(ref)]}, parameters {ref_params:,}", file=sys.stderr)
        cells = []
        for name in a.layouts:
            procs, extra = LAYOUTS[name]
            losses, params = run_cli(a.python, procs, flags + extra, a.timeout)
            d = rel_diff(losses, ref)
            same_params = params == ref_params
            ok &= d <= a.tol and same_params
            cells.append(f"{d:.1e}" + ("" if same_params else f" (params {params:,})"))
            print(f"  {name}: max rel diff {d:.2e}, parameters {params:,}", file=sys.stderr)
        rows.append((variant, f"{ref[1]:.7f}", cells))
    print(f"relative loss difference to TP1, max over {a.iters} iterations (tolerance {a.tol:g}); "
          f"same seed and mock data, CLI defaults")
    print()
    print("| variant | TP1 loss at 1 | " + " | ".join(a.layouts) + " |")
    print("|---|---|" + "---|" * len(a.layouts))
    for variant, first, cells in rows:
        print(f"| {variant} | {first} | " + " | ".join(cells) + " |")
    print()
    print(f"{'all within tolerance' if ok else 'SOME LAYOUT DIFFERS'} ({time.monotonic() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
