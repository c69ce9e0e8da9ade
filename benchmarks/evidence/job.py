"""One (variant, seed) job of the evidence grid, in its own process: for each task, `hope_megatron.train.main` (the
function `python -m hope_megatron.train` runs) on the seed's shards, `checkpoints_convert/convert_to_torch.py`'s main
on the checkpoint, and the evaluation of the converted model (measure.py). Writes one JSON.

    python benchmarks/evidence/job.py SPEC.json      (run.py writes the spec and starts the jobs)

Each training run is a fresh process group and model (platform.initialize/teardown), as in separate processes; the
train log goes to this job's log and its progress lines give the loss and inner-clip curves.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LINE = re.compile(r"iteration +(\d+)/ +\d+ \|.*?\| lm loss: ([\d.E+-]+|nan|inf) \|.*?"
                  r"(?:inner clip hits: ([\d.]+)% \(mean scale ([\d.]+)\))?$")
PARAMS = re.compile(r"\| parameters ([\d,]+) \|")


class _Tee(io.TextIOBase):
    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.out.write(s)
        self.buf.write(s)
        return len(s)

    def flush(self):
        self.out.flush()


def train(argv) -> dict:
    """hope_megatron.train.main(argv); returns the parsed progress lines. A non-zero exit is an error here."""
    from hope_megatron.train import main as train_main

    print("hope-train " + " ".join(argv), flush=True)
    tee, t0 = _Tee(sys.stdout), time.time()
    with contextlib.redirect_stdout(tee):
        rc = train_main(argv)
    if rc != 0:
        raise RuntimeError(f"hope_megatron.train exited with {rc} for: {' '.join(argv)}")
    text = tee.buf.getvalue()
    if "received SIGTERM/SIGINT" in text:  # the loop saved and returned early: the job is being ended, not done
        sys.exit(143)
    curve = {"iteration": [], "loss": [], "clip_hit_rate": [], "clip_scale": []}
    for line in text.splitlines():
        m = LINE.search(line)
        if m:
            curve["iteration"].append(int(m.group(1)))
            curve["loss"].append(float(m.group(2)))
            curve["clip_hit_rate"].append(float(m.group(3)) / 100 if m.group(3) else None)
            curve["clip_scale"].append(float(m.group(4)) if m.group(4) else None)
    params = PARAMS.search(text)
    curve["parameters"] = int(params.group(1).replace(",", "")) if params else None
    curve["seconds"] = time.time() - t0
    return curve


def convert(save: str, out: str):
    from checkpoints_convert.convert_to_torch import main as convert_main
    from hope_megatron.inference import load_model, read_config

    convert_main(["--load", save, "--output", out])
    return load_model(out), read_config(out)


def train_flags(spec: dict, budget, data: str, vocab: int, save: str, log_every: int) -> list:
    b = budget
    return spec["model_flags"] + [
        "--seq-length", str(b.seq), "--micro-batch-size", str(b.batch), "--global-batch-size", str(b.batch),
        "--lr", str(b.lr), "--lr-warmup-iters", str(b.warmup), "--weight-decay", "0.1", "--clip-grad", "1.0",
        "--data-path", data, "--split", "1,0,0", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab),
        "--seed", str(spec["seed"]), "--save", save, "--log-interval", str(log_every)]


def run_mqar(spec, grid, work) -> dict:
    from benchmarks.evidence import measure, shards

    b, mspec = grid.mqar, shards.mqar_spec(grid)
    curve = train(train_flags(spec, b, spec["data"]["mqar"], mspec.vocab, f"{work}/ckpt_mqar", max(1, b.iters // 20))
                  + ["--train-iters", str(b.iters), "--min-lr", str(b.lr / 10), "--lr-decay-style", "cosine"])
    model, _ = convert(f"{work}/ckpt_mqar", f"{work}/torch_mqar")
    acc = {}
    for length in grid.mqar_eval_lengths:
        for pairs in grid.mqar_eval_pairs:
            if 4 * pairs <= length:
                acc[f"{length}/{pairs}"] = measure.mqar_accuracy(model, mspec, length, pairs,
                                                                 grid.mqar_eval_sequences, seed=1000 + spec["seed"])
    return {"train": curve, "accuracy": acc}


def run_passkey(spec, grid, work) -> dict:
    from benchmarks.evidence import measure, tasks

    b, pspec = grid.passkey, tasks.PasskeySpec()
    curve = train(train_flags(spec, b, spec["data"]["passkey"], pspec.vocab, f"{work}/ckpt_passkey",
                              max(1, b.iters // 20))
                  + ["--train-iters", str(b.iters), "--min-lr", str(b.lr / 10), "--lr-decay-style", "cosine"])
    model, cfg = convert(f"{work}/ckpt_passkey", f"{work}/torch_passkey")
    seed = 2000 + spec["seed"]
    cells = measure.passkey_cells(model, cfg, pspec, grid.passkey_lengths, grid.passkey_depths, grid.passkey_trials,
                                  grid.passkey_segment, grid.passkey_attention_max, seed)
    if grid.measure_memory and spec["measure_memory"]:
        t0 = time.time()
        probe = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "evidence", "memory_probe.py"),
                                f"{work}/torch_passkey", str(grid.passkey_segment), str(seed),
                                str(grid.passkey_attention_max)] + [str(n) for n in grid.passkey_lengths],
                               capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if probe.returncode != 0:
            raise RuntimeError(f"memory_probe.py failed: {probe.stderr[-2000:]}")
        peaks = json.loads(probe.stdout.strip().splitlines()[-1])
        for c in cells:
            if str(c["length"]) in peaks and c["depth"] == grid.passkey_depths[0]:
                c["peak_bytes"] = peaks[str(c["length"])]
        print(f"[evidence] memory probe: {peaks} ({time.time() - t0:.0f} s)", flush=True)
    return {"train": curve, "cells": cells}


def run_classes(spec, grid, work) -> dict:
    """Tasks trained one after another in ONE run: each stage resumes the previous checkpoint (optimizer, CMS clocks
    and accumulators included) on the next task's shard, with a constant LR after warm-up; after each stage the
    checkpoint is converted and every task evaluated. Then test-time CMS from the stage-0 model."""
    from hope_megatron.eval.continual import forgetting
    from hope_megatron.inference import load_model

    from benchmarks.evidence import measure, shards

    b, T = grid.classes, grid.classes_tasks
    universe = shards.classes_universe(grid, spec["seed"])
    save, rows, curves = f"{work}/ckpt_classes", [], []
    for t in range(T):
        argv = train_flags(spec, b, spec["data"]["classes"][t], universe.spec.vocab, save, max(1, b.iters // 10))
        argv += ["--train-iters", str((t + 1) * b.iters), "--lr-decay-style", "constant",
                 "--lr-decay-iters", str(T * b.iters), "--min-lr", str(b.lr)]
        if t:
            argv += ["--load", save]
        curves.append(train(argv))
        model, _ = convert(save, f"{work}/torch_classes_{t}")
        rows.append([measure.class_accuracy(model, universe, j, grid.classes_eval_examples, b.seq, spec["seed"])
                     for j in range(T)])
    err = [[1.0 - a for a in row] for row in rows]  # eval.continual.forgetting takes losses: 1 - acc rises
    ttc = measure.test_time_cms_matrix(load_model(f"{work}/torch_classes_0"), universe, T, grid.ttc_stream_tokens,
                                       b.seq, grid.classes_eval_examples, grid.ttc_periods, grid.ttc_lr,
                                       grid.ttc_segment, spec["seed"])
    ttc["forgetting"] = forgetting([[1.0 - a for a in row] for row in ttc["matrix"]])
    return {"train": curves, "matrix": rows, "forgetting": forgetting(err), "test_time_cms": ttc}


def main(path: str) -> None:
    import torch

    from benchmarks.evidence.grid import grid_from_dict

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: a running memory probe is killed with the job
    spec = json.load(open(path, encoding="utf-8"))
    grid = grid_from_dict(spec["grid"])
    work = spec["work"]
    os.makedirs(work, exist_ok=True)
    result = {"variant": spec["variant"], "seed": spec["seed"], "grid_hash": spec["grid_hash"], "times": {}}
    for name, fn in (("mqar", run_mqar), ("passkey", run_passkey), ("classes", run_classes)):
        t0 = time.time()
        result[name] = fn(spec, grid, work)
        result["times"][name] = time.time() - t0
        print(f"[evidence] {spec['variant']} seed {spec['seed']}: {name} done in {time.time() - t0:.1f} s", flush=True)
    tmp = spec["output"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, spec["output"])


if __name__ == "__main__":  # the guard matters: dist_checkpointing's writer re-imports __main__
    main(sys.argv[1])
