"""gpu_suite: the memory op (naive / chunked / triton) and HOPE vs a matched transformer on one GPU, in one command.

    python benchmarks/gpu_suite                      # on a CUDA machine: <= 8 min, writes reports/gpu/<device>-<date>.md
    python benchmarks/gpu_suite --cpu-smoke          # tiny shapes on CPU under TRITON_INTERPRET=1, ~1 min (make test)

Sections (each a child process with its own time limit, so one slow or failing case never loses the others):
  1. op_bench.py: titans_memory forward+backward at the pilot (B 8, H 8, L 2048, C 8) and mid (B 4, H 16, L 4096,
     C 16) shapes, bf16 and fp32, triton / chunked / naive (naive at the pilot shape only: see op_bench.NAIVE_SKIP);
  2. train_bench.py: HOPE (configs/hope/pilot.yaml) and a parameter-matched transformer through loop.pretrain, one
     GPU, BF16, local spec, mock tokens, seq 2048 and 4096 (8192 tokens per iteration), tokens/s, ratio, MFU, peak
     memory beside the preflight's estimate.
The report names the device, the software versions and the commit, and says plainly what was skipped, what failed
and whether the triton path really launched its kernels (a fallback to the chunked form is reported as such).
Nothing is fetched from the network. On the lent GPU machine see benchmarks/gpu_suite/README.md for the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from report import SECTIONS, write_report  # noqa: E402


def environment(smoke: bool) -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    if smoke or not torch.cuda.is_available():
        env["device"] = "cpu"
        env["device_note"] = f"{os.cpu_count()} CPU cores (smoke run: no GPU figure)"
    else:
        p = torch.cuda.get_device_properties(0)
        env["device"] = p.name
        env["device_note"] = f"{p.total_memory / 2 ** 30:.1f} GiB, {p.multi_processor_count} SMs, " \
                             f"capability {p.major}.{p.minor}"
    for mod in ("triton", "megatron.core", "transformer_engine"):
        try:
            m = __import__(mod, fromlist=["_"])
            env[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except Exception:  # noqa: BLE001 - absent is a fact to report
            env[mod] = "not installed"
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    try:
        env["commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        env["commit"] = "unknown"
    return env


def _dist_version(mod: str) -> str:
    from importlib import metadata

    name = {"megatron.core": "megatron-core", "transformer_engine": "transformer-engine"}.get(mod, mod)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def run_child(script: str, argv, limit_s: float, env):
    """(results, note): the @@RESULT lines of a child, also when it is stopped at its limit."""
    cmd = [sys.executable, os.path.join(HERE, script), *argv]
    note = ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, env=env, cwd=REPO)
        out, err = proc.stdout, proc.stderr
        if proc.returncode != 0:
            note = f"{script} exited {proc.returncode}: {(err.strip().splitlines() or [''])[-1][:300]}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        note = f"{script} was stopped at its {limit_s:.0f} s limit; the rows above are what it finished"
    results = [json.loads(line[len("@@RESULT "):]) for line in out.splitlines() if line.startswith("@@RESULT ")]
    fallback = sorted(set(re.findall(r"impl='triton' runs the chunked form instead: ([^\n]*)", out + err)))
    return results, note, fallback


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_suite", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1 (~1 min)")
    ap.add_argument("--out", default=None, help="report folder (default reports/gpu; --cpu-smoke: runs/gpu_suite)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="time for the two sections (default 420: with the child processes' grace and start-up the "
                         "suite stays under the device tool's 600 s per command; smoke 80)")
    ap.add_argument("--peak-flops", type=float, default=0.0, help="peak BF16 FLOP/s per device for MFU "
                                                                    "(default: from the device name)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONWARNINGS="ignore")
    if smoke:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device is visible; run this on a GPU machine, or pass --cpu-smoke for the CPU "
                  "smoke run.", file=sys.stderr)
            return 2
    budget = args.budget_s or (80.0 if smoke else 420.0)
    out_dir = args.out or os.path.join(REPO, *(("runs", "gpu_suite") if smoke else ("reports", "gpu")))
    t0 = time.perf_counter()
    info = environment(smoke)
    print(f"gpu_suite: {info['device']} ({info['device_note']}); budget {budget:.0f} s", flush=True)

    share = 0.5 if smoke else 0.4  # the interpreter makes the smoke's op section the slower one
    op_argv = ["--budget-s", f"{share * budget:.0f}"] + (["--smoke", "--device", "cpu"] if smoke else [])
    info["command"] = "python benchmarks/gpu_suite" + (" --cpu-smoke" if smoke else "")
    ops, op_note, op_fb = run_child("op_bench.py", op_argv, share * budget + (30 if smoke else 60), env)
    info["wall_s"] = time.perf_counter() - t0
    # written now and again at the end: a run cut short by the machine's own limit still leaves section 1
    path = write_report(out_dir, info, ops, [], [op_note] if op_note else [], op_fb, smoke)
    print(f"gpu_suite: op section done ({len(ops)} cases, {info['wall_s']:.0f} s)", flush=True)

    tr_argv = ["--budget-s", f"{(1 - share) * budget:.0f}"]
    tr_argv += ["--smoke", "--seqs", "64,128", "--tokens-per-iteration", "256", "--warmup", "1", "--iters", "2"] \
        if smoke else []
    if args.peak_flops:
        tr_argv += ["--peak-flops", str(args.peak_flops)]
    train, tr_note, tr_fb = run_child("train_bench.py", tr_argv, (1 - share) * budget + (30 if smoke else 90), env)
    info["wall_s"] = time.perf_counter() - t0
    path = write_report(out_dir, info, ops, train, [n for n in (op_note, tr_note) if n], sorted(set(op_fb + tr_fb)),
                        smoke, path=path)
    print(open(path, encoding="utf-8").read())
    print(f"gpu_suite: wrote {path} ({info['wall_s']:.0f} s)")
    missing = [s for s in SECTIONS if s not in open(path, encoding="utf-8").read()]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
