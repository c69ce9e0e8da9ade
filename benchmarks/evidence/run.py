"""The evidence grid in one command: MQAR, passkey retrieval past the training length and the permuted-class continual
stress test, for HOPE and parameter-matched baselines over several seeds, through the shipped path (shards written
like tools/preprocess_data.py -> hope_megatron.train -> checkpoints_convert/convert_to_torch.py -> plain-PyTorch
evaluation), then reports/evidence.md with tables (mean and 95% CI over seeds) and plots.

    python benchmarks/evidence/run.py                  # the default grid (~38 min on 2 CPU cores, --jobs 2), reports/evidence.md
    python benchmarks/evidence/run.py --quick          # every stage on tiny budgets (seconds; what make test runs)
    python benchmarks/evidence/run.py --jobs 1 --variants hope,transformer --seeds 1,2

Jobs are (variant, seed) pairs, each its own process with one torch thread, `--jobs` at a time; a finished job's JSON
is reused when the same grid runs again into the same --output-dir (delete it to start over).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.evidence import grid as grid_mod  # noqa: E402

COST_ORDER = ("hope", "hope_eta1e-3", "deltanet", "titans", "titans_nocms", "transformer", "swa")  # slowest first


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets, 3 variants x 2 seeds: the pipeline, not the "
                   "science (make test)")
    p.add_argument("--output-dir", default=None, help="work folder: shards, checkpoints, logs, job JSON "
                   "(default runs/evidence, or runs/evidence_quick with --quick)")
    p.add_argument("--report", default=None, help="markdown report (default reports/evidence.md; with --quick "
                   "OUTPUT_DIR/evidence.md, so a quick run never replaces the committed report)")
    p.add_argument("--jobs", type=int, default=2, help="jobs run at once (one torch thread each; default 2)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {','.join(grid_mod.VARIANTS)} (default: "
                   f"all but the diagnostic {','.join(grid_mod.DIAGNOSTIC)})")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3; quick 1,2)")
    return p


def _parse(argv):
    a = build_parser().parse_args(argv)
    g = grid_mod.quick() if a.quick else grid_mod.DEFAULT
    if a.variants:
        chosen = [v.strip() for v in a.variants.split(",") if v.strip()]
        bad = [v for v in chosen if v not in grid_mod.VARIANTS]
        if bad or not chosen:
            raise SystemExit(f"run.py: --variants {a.variants!r} names {', '.join(bad) or 'nothing'}; choose from "
                             f"{', '.join(grid_mod.VARIANTS)}.")
        g = dataclasses.replace(g, variants=chosen)
    if a.seeds:
        try:
            seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        except ValueError:
            raise SystemExit(f"run.py: --seeds {a.seeds!r} must be comma-separated integers, e.g. 1,2,3.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise SystemExit(f"run.py: --seeds {a.seeds!r} must name distinct seeds (one seed runs, but gives no "
                             f"confidence interval).")
        g = dataclasses.replace(g, seeds=seeds)
    if a.jobs < 1:
        raise SystemExit(f"run.py: --jobs {a.jobs} must be at least 1.")
    try:  # the figures are drawn after the whole grid ran: check now, not after half an hour
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("run.py: the report's figures need matplotlib; pip install -e '.[eval]' (or '.[dev]').") \
            from None
    a.output_dir = a.output_dir or os.path.join(ROOT, "runs", "evidence_quick" if a.quick else "evidence")
    a.report = a.report or (os.path.join(a.output_dir, "evidence.md") if a.quick
                            else os.path.join(ROOT, "reports", "evidence.md"))
    return a, g


def _job_specs(g, out: str, data: dict, widths: dict) -> list:
    """One spec per (variant, seed). Its hash covers what the job computes (the grid's budgets and evaluations, the
    variant's flags, the seed), not the lists of variants and seeds: adding a variant reuses the finished jobs."""
    budgets = {k: v for k, v in dataclasses.asdict(g).items() if k not in ("variants", "seeds", "name")}
    specs = []
    for v in sorted(g.variants, key=lambda v: COST_ORDER.index(v) if v in COST_ORDER else len(COST_ORDER)):
        flags = grid_mod.model_flags(v, g, widths)
        for s in g.seeds:
            name = f"{v}_seed{s}"
            digest = hashlib.sha1(json.dumps([budgets, flags, s], sort_keys=True).encode()).hexdigest()[:12]
            specs.append({"variant": v, "seed": s, "grid": dataclasses.asdict(g), "grid_hash": digest,
                          "model_flags": flags, "data": data[s],
                          "measure_memory": s == g.seeds[0], "work": os.path.join(out, "work", name),
                          "output": os.path.join(out, "results", f"{name}.json"),
                          "log": os.path.join(out, "logs", f"{name}.log")})
    return specs


def _run_jobs(specs: list, jobs: int) -> tuple:
    """Start up to `jobs` job processes at a time; returns (failed specs, number run). A result JSON from the same
    grid is reused."""
    pending, running, failed = [], [], []
    for spec in specs:
        if os.path.isfile(spec["output"]) and json.load(open(spec["output"])).get("grid_hash") == spec["grid_hash"]:
            print(f"[evidence] {os.path.basename(spec['output'])}: reused (same grid)", flush=True)
            continue
        pending.append(spec)
    pending_all = list(pending)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
    try:
        _schedule(pending, running, failed, jobs, env)
    finally:  # interrupted (Ctrl-C, SIGTERM): no job outlives the grid
        for proc, spec, log, _ in running:
            proc.terminate()  # a job in training saves at the end of the iteration, then exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    return failed, len(pending_all)


def _schedule(pending: list, running: list, failed: list, jobs: int, env: dict) -> None:
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            os.makedirs(os.path.dirname(spec["log"]), exist_ok=True)
            os.makedirs(os.path.dirname(spec["output"]), exist_ok=True)
            path = spec["output"][:-5] + ".spec.json"
            with open(path, "w", encoding="utf-8") as f:
                json.dump(spec, f)
            log = open(spec["log"], "w", encoding="utf-8")
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", "evidence", "job.py"), path],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, spec, log, time.time()))
            print(f"[evidence] started {spec['variant']} seed {spec['seed']} (log {spec['log']})", flush=True)
        time.sleep(0.5)
        for item in list(running):
            proc, spec, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            ok = proc.returncode == 0 and os.path.isfile(spec["output"])
            print(f"[evidence] {'finished' if ok else 'FAILED'} {spec['variant']} seed {spec['seed']} in "
                  f"{time.time() - t0:.0f} s", flush=True)
            if not ok:
                failed.append(spec)


def _uptime() -> str:
    """The 1, 5 and 15 minute load averages (what `uptime` prints)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def main(argv=None) -> int:
    a, g = _parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C: running jobs are ended
    from benchmarks.evidence import report, shards

    t0, load_before = time.time(), _uptime()
    os.makedirs(a.output_dir, exist_ok=True)
    widths = {v: grid_mod.matched_width(v, g) for v in g.variants}
    print(f"[evidence] grid {g.name}: variants {', '.join(g.variants)}; seeds {g.seeds}; widths {widths}", flush=True)
    data = {s: shards.write_seed(g, s, os.path.join(a.output_dir, "data")) for s in g.seeds}
    specs = _job_specs(g, a.output_dir, data, widths)
    failed, ran = _run_jobs(specs, a.jobs)
    if failed:
        names = ", ".join(f"{s['variant']} seed {s['seed']} ({s['log']})" for s in failed)
        print(f"run.py: {len(failed)} job(s) failed: {names}; read the log's last lines.", file=sys.stderr)
        return 1
    results = [json.load(open(s["output"], encoding="utf-8")) for s in specs]
    args = sys.argv[1:] if argv is None else list(argv)
    record = {"command": " ".join(["python benchmarks/evidence/run.py"] + ([shlex.join(args)] if args else [])),
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "wall_seconds": time.time() - t0,
              "load_before": load_before, "load_after": _uptime(), "cpus": os.cpu_count(), "jobs": a.jobs,
              "jobs_run": ran, "jobs_reused": len(specs) - ran}
    if ran:  # every invocation that ran jobs, for the report (one that only rebuilds the report adds nothing)
        with open(os.path.join(a.output_dir, "runs.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    runs = os.path.join(a.output_dir, "runs.jsonl")
    history = [json.loads(line) for line in open(runs, encoding="utf-8") if line.strip()] \
        if os.path.isfile(runs) else []
    if any(h["cpus"] != os.cpu_count() for h in history):
        print("[evidence] note: some jobs ran on a machine with another CPU count (runs.jsonl).", flush=True)
    meta = dict(record, history=history, grid=dataclasses.asdict(g), widths=widths)
    path = report.write(results, meta, g, a.report)
    print(f"[evidence] wrote {path} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
