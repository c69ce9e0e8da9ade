"""gpu_suite, section 2: HOPE vs a parameter-matched transformer through the real training loop (loop.pretrain).

One child process runs every case in turn (HOPE and the transformer at each sequence length) and prints one
`@@RESULT {json}` line per case. A case trains `warmup + iters` iterations on mock tokens, one GPU, BF16, the local
spec, micro-batch = global batch; its iteration times come from the loop's after_step hook, so a case stopped at its
time limit (it raises out of the loop; the next case re-initialises) still reports the iterations it finished.
tokens/s = tokens per iteration / median timed iteration; MFU = model FLOPs per iteration (training/flops.py, the
loop's own count) / iteration time / peak FLOP/s. Peak memory = torch.cuda.max_memory_allocated, beside the
preflight's estimate for the same layout (hope_megatron/training/memory_estimate.py, without its runtime allowance).
The transformer's MLP width is solved from the analytic parameter counts (models/summary.py, held equal to built
models by tests/unit/model/test_summary.py), which are affine in the width: no model is built for it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12,
             "L40S": 362e12, "B200": 2250e12}  # dense BF16 tensor-core peak per device, FLOP/s


class _OutOfTime(Exception):
    pass


def peak_flops(device_name: str, override: float = 0.0) -> float:
    if override:
        return override
    for key, val in PEAK_BF16.items():
        if key in device_name.upper():
            return val
    return 0.0  # unknown: MFU not reported


def emit(obj) -> None:
    print("@@RESULT " + json.dumps(obj), flush=True)


def base_argv(config: str, seq: int, micro: int, iters: int, cuda: bool, vocab: int = 32000):
    argv = ["--config", config, "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab),
            "--seq-length", str(seq), "--max-position-embeddings", str(seq), "--micro-batch-size", str(micro),
            "--global-batch-size", str(micro), "--train-iters", str(iters), "--log-interval", "1",
            "--no-exit-signal-handler", "--transformer-impl", "local"]
    return argv + (["--bf16"] if cuda else [])


def transformer_extra(ffn: int):
    return ["--hope-variant", "transformer", "--cms-levels", "1", "--cms-periods", "1", "--cms-warmup", "0",
            "--ffn-hidden-size", str(ffn)]


def analytic_params(argv) -> int:
    from hope_megatron.models.summary import count_parameters
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_setup import build_config

    args = parse_args(argv)
    return count_parameters(build_config(args, configure=False), args.vocab_size,
                            tied=not args.untie_embeddings_and_output_weights)["total"]


def matched_ffn(argv, target: int) -> tuple:
    """(width, params): the multiple of 8 whose transformer parameter count is closest to `target`."""
    n1, n2 = (analytic_params(argv + transformer_extra(f)) for f in (512, 1024))
    slope = (n2 - n1) / 512
    best = max(8, round((target - (n1 - 512 * slope)) / slope / 8) * 8)
    cands = [(abs(analytic_params(argv + transformer_extra(f)) - target), f) for f in (best - 8, best, best + 8)
             if f >= 8]
    ffn = min(cands)[1]
    return ffn, analytic_params(argv + transformer_extra(ffn))


def run_case(argv, warmup: int, limit_s: float, cuda: bool) -> dict:
    import torch

    from hope_megatron.training import flops, memory_estimate
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.data import build_tokenizer_from_args, padded_vocab_size
    from hope_megatron.training.loop import pretrain
    from hope_megatron.training.model_setup import build_config

    args = parse_args(argv)
    config = build_config(args, configure=False)
    vocab = padded_vocab_size(build_tokenizer_from_args(args).vocab_size, args.make_vocab_size_divisible_by, 1)
    fam = flops.flops_per_iteration(flops.from_args(args, config, vocab), args.global_batch_size)
    layout = memory_estimate.layout_from_args(args, 1, on_cuda=cuda)
    est = memory_estimate.estimate(config, layout, vocab, not args.untie_embeddings_and_output_weights)
    est_gib = (est["total"] - est["items"]["runtime"]) / 2 ** 30
    stamps = []
    start = time.perf_counter()

    class Hooks:
        def after_step(self, iteration, *_):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            if stamps[-1] - start > limit_s and iteration + 1 < args.train_iters:
                raise _OutOfTime()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stopped, error = None, None
    try:
        pretrain(args, hooks=Hooks())
    except _OutOfTime:
        stopped = f"stopped at its {limit_s:.0f} s limit after {len(stamps)} iterations"
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported, the next case still runs
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    times = [b - a for a, b in zip(stamps, stamps[1:])][max(warmup - 1, 0):]
    tokens = args.global_batch_size * args.seq_length
    out = {"iterations": len(stamps), "timed": len(times), "flops_per_iteration": fam["total"],
           "estimate_gib": est_gib, "stopped": stopped, "error": error,
           "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}
    if times:
        med = statistics.median(times)
        out.update(seconds_per_iteration=med, tokens_per_s=tokens / med, flops_per_s=fam["total"] / med)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the tiny config on CPU, FP32")
    ap.add_argument("--seqs", default="2048,4096")
    ap.add_argument("--tokens-per-iteration", type=int, default=8192, help="micro-batch = this / seq")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--budget-s", type=float, default=270.0)
    ap.add_argument("--peak-flops", type=float, default=0.0)
    args = ap.parse_args(argv)
    import torch

    from hope_megatron import platform

    cuda = torch.cuda.is_available() and not args.smoke
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = os.path.join(repo, "configs", "hope", "tiny.yaml" if args.smoke else "pilot.yaml")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_flops(name, args.peak_flops)
    seqs = [int(s) for s in args.seqs.split(",")]
    # HOPE gets twice a transformer's share of the budget: it is the slower one, and the one this suite is about
    shares = {"hope": 2.0, "transformer": 1.0}
    unit = args.budget_s / (len(seqs) * sum(shares.values()))
    start = time.perf_counter()
    for seq in seqs:
        micro = max(1, args.tokens_per_iteration // seq)
        base = base_argv(config, seq, micro, args.warmup + args.iters, cuda, 8192 if args.smoke else 32000)
        n_hope = analytic_params(base)
        ffn, n_tf = matched_ffn(base, n_hope)
        for variant, extra, n in (("hope", [], n_hope), ("transformer", transformer_extra(ffn), n_tf)):
            left = args.budget_s - (time.perf_counter() - start)
            case = {"variant": variant, "seq": seq, "micro": micro, "params": n, "ffn": ffn if extra else None,
                    "device": name, "peak_flops": peak, "precision": "BF16" if cuda else "FP32"}
            if left < 5:
                emit({**case, "error": "skipped: the section's time budget was used up"})
                continue
            r = run_case(base + extra, args.warmup, min(shares[variant] * unit, left), cuda)
            if peak and "flops_per_s" in r:
                r["mfu"] = r["flops_per_s"] / peak
            emit({**case, **r})
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    platform.teardown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
