#!/usr/bin/env python
"""Preprocessing throughput: MB/s of text per worker with a SentencePiece tokenizer, for 1 and 2 workers.

  python benchmarks/bench_preprocess.py                       # data/demo/*.jsonl, trains an 8k unigram model first
  python benchmarks/bench_preprocess.py --tokenizer-model data/tok/demo8k.model --max-mb 5

Prints the tokenizer training time (when it trains one), then per worker count: wall seconds, MB/s, MB/s per
worker and the speed-up over 1 worker. Outputs go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cpu():
    """CPU seconds of this process and its reaped children (the pool workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def slice_inputs(paths, max_mb, out_dir):
    """The first max_mb MB of each domain's jsonl (whole lines), so runs stay short on small machines."""
    sliced = []
    for path in paths:
        dest = os.path.join(out_dir, os.path.basename(path))
        budget = max_mb * 1e6
        with open(path, "rb") as src, open(dest, "wb") as dst:
            for line in src:
                if budget <= 0:
                    break
                dst.write(line)
                budget -= len(line)
        sliced.append(dest)
    return sliced


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", default=sorted(glob.glob(os.path.join(REPO, "data", "demo", "*.jsonl"))))
    p.add_argument("--tokenizer-model", default=None, help="default: train an 8k unigram model on --input first")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--max-mb", type=float, default=None, help="use only the first MB of each input")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    if not args.input:
        sys.exit("error: no input; run tools/fetch_demo_corpus.py first or pass --input.")
    preprocess = load_tool("preprocess_data")
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import torch/megatron outside the timed runs)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = slice_inputs(args.input, args.max_mb, tmp) if args.max_mb else args.input
        size_mb = sum(os.path.getsize(f) for f in inputs) / 1e6
        model = args.tokenizer_model
        if model is None:
            trainer = load_tool("train_tokenizer")
            start = time.monotonic()
            code = trainer.main(["--input", *inputs, "--model-prefix", os.path.join(tmp, "tok"),
                                 "--vocab-size", str(args.vocab_size), "--model-type", args.model_type])
            if code:
                sys.exit(code)
            meta = json.load(open(os.path.join(tmp, "tok.json")))
            print(f"tokenizer: {args.model_type} {args.vocab_size} on {size_mb:.1f} MB: {time.monotonic() - start:.1f} s wall "
                  f"({meta['train_seconds']:.1f} s training, {meta['train_cpu_seconds']:.1f} s CPU, "
                  f"{os.cpu_count()} threads; load average {os.getloadavg()[0]:.1f})")
            model = os.path.join(tmp, "tok.model")
        base = None
        print(f"preprocess: {len(inputs)} files, {size_mb:.1f} MB, SentencePiece, --append-eod")
        for workers in args.workers:
            pargs = preprocess.get_args(["--input", *inputs, "--output-prefix", os.path.join(tmp, f"w{workers}"),
                                         "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model,
                                         "--append-eod", "--workers", str(workers), "--log-interval", "1e9"])
            plan = preprocess.check_args(pargs)
            start, cpu0 = time.monotonic(), _cpu()
            preprocess.run(pargs, plan)
            wall, cpu = time.monotonic() - start, _cpu() - cpu0
            rate = size_mb / wall
            base = base or rate
            # MB per CPU-second does not depend on what else runs on the machine
            print(f"  workers={workers}: {wall:6.2f} s  {rate:6.2f} MB/s  {rate / workers:6.2f} MB/s/worker  "
                  f"speed-up x{rate / base:.2f}  ({size_mb / cpu:.2f} MB per CPU-second, load average "
                  f"{os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
