"""Training throughput of HOPE vs a Transformer of (nearly) equal parameter count, same process, same settings.

    python benchmarks/bench_train_step.py [--config configs/hope/tiny.yaml] [--iters 8] [--warmup 2] [hope-train flags]

The transformer's MLP width is chosen so its parameter count matches the HOPE model's (closest multiple of 8). Each
variant trains `warmup + iters` iterations on mock data through the real loop (`loop.pretrain`); tokens/s is the median
over the timed iterations. Prints both rates and the ratio HOPE / transformer. CPU here, GPU when one is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def _param_count(argv) -> int:
    from hope_megatron import platform
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.data import build_tokenizer_from_args, padded_vocab_size
    from hope_megatron.training.model_setup import build_config, build_model_chunks, count_parameters

    args = parse_args(argv)
    platform.initialize(seed=args.seed)
    real = build_tokenizer_from_args(args).vocab_size
    vocab = padded_vocab_size(real, args.make_vocab_size_divisible_by, 1)
    return count_parameters(build_model_chunks(args, build_config(args), real, vocab, init=False))


def _matched_ffn(base, target: int, hidden: int) -> tuple[int, int]:
    """Smallest |params - target| over transformer MLP widths (multiples of 8), by bisection on the monotone count."""
    lo, hi = 8, 64 * hidden
    best = None
    while lo <= hi:
        mid = (lo + hi) // 16 * 8 or 8
        n = _param_count(base + ["--hope-variant", "transformer", "--ffn-hidden-size", str(mid)])
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (mid, n)
        if n < target:
            lo = mid + 8
        else:
            hi = mid - 8
    return best


def _tokens_per_s(argv, warmup: int, iters: int) -> float:
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.loop import pretrain

    args = parse_args(argv + ["--train-iters", str(warmup + iters), "--log-interval", "1", "--no-exit-signal-handler"])
    rates = pretrain(args)["tokens_per_s"]
    return statistics.median(rates[warmup:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    ours, rest = p.parse_known_args(argv)
    base = ["--config", "configs/hope/tiny.yaml", "--mock-data"] + rest if "--config" not in rest else \
        ["--mock-data"] + rest
    from hope_megatron import platform
    from hope_megatron.training.arguments import parse_args

    hidden = parse_args(base).hidden_size
    n_hope = _param_count(base + ["--hope-variant", "hope"])
    ffn, n_tf = _matched_ffn(base, n_hope, hidden)
    tf_argv = base + ["--hope-variant", "transformer", "--ffn-hidden-size", str(ffn)]
    hope_tps = _tokens_per_s(base + ["--hope-variant", "hope"], ours.warmup, ours.iters)
    tf_tps = _tokens_per_s(tf_argv, ours.warmup, ours.iters)
    dev = platform.device()
    print(f"device: {dev}")
    print(f"hope        params {n_hope:,}  tokens/s {hope_tps:.1f}")
    print(f"transformer params {n_tf:,} (ffn {ffn})  tokens/s {tf_tps:.1f}")
    print(f"throughput ratio hope/transformer: {hope_tps / tf_tps:.3f}")
    platform.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
