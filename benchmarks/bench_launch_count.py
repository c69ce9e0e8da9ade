"""Kernel launches of the Titans memory op: aten ops + Triton launches, per chunk and per layer, forward and backward.

    python benchmarks/bench_launch_count.py                          # L=2048, C=8, H=8, d_h=64: chunked vs triton
    TRITON_INTERPRET=1 python benchmarks/bench_launch_count.py --seq-len 256 --heads 1   # the triton path on CPU

Every aten op is one dispatcher pass and, on a GPU, at least one kernel launch; a fused Triton kernel is one launch.
Counted with a TorchDispatchMode (aten ops; views, which launch nothing, also shown apart) and
hope_megatron.ops.triton.LAUNCHES (Triton launches), around one titans_memory call as the Titans mixer makes it:
training, return_state=True, x̃ and q requiring grad, the pilot's op settings (HOPE defaults, inner clip 0.3, update
dropout 0.2, C=8), B=1, fp32. The backward is y.backward(g) with g made outside the count. Aten ops issued by Triton's
CPU interpreter inside a launch (copies to and from its host buffers) are not counted: on a GPU they do not exist.

Why the counts do not depend on --seq-len or --heads: ops are batched over heads, and the count of one call is
affine in its number of chunks n (a per-layer constant + a per-chunk slope). The benchmark counts each form at n, n/2
and n/4 chunks, fits count = fixed + slope * n on the two longest, checks the third against the fit, and prints
fixed, slope and the per-chunk figure at the reference shape (L=2048, C=8: 256 chunks) = slope + fixed / 256. When a
form is not affine (e.g. a backward that launches per segment of ceil(sqrt(n)) chunks) it says so, and the reference
figure is printed only when --seq-len is 2048. Heads: any H >= 2 gives the same counts (with H = 1 one reshape per
chunk becomes a view, one op fewer, so --heads 1 is refused); batch: B = 1, as the issue's figures (B = 2 adds a few
copies per chunk).

Cost (2-core CPU, one torch thread): the chunked form at the defaults (H=8, lengths 512/1024/2048) ~20 s, ~4 s with
--heads 2 --seq-len 256. The triton path under TRITON_INTERPRET=1 runs every kernel program in numpy, one (sequence,
head) after another: --seq-len 256 --heads 2 (the same counts) took ~7 min on a shared 2-core box, so the defaults
(32x the programs x chunks) would take hours there; on a GPU the defaults take seconds.
A triton path that launches no fused kernel (the settings are not covered, or TRITON_INTERPRET is unset on CPU) is
reported as NOT COUNTED with the reason, never as the kernel's figure. Target (issue 14): <= 8 per chunk, fwd + bwd.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

REF_LEN, REF_CHUNK = 2048, 8
TARGET_PER_CHUNK = 8
_INSIDE = threading.local()


def _interpreter_guard():
    """Mark the time spent inside a Triton interpreter launch, so that its host copies are not counted."""
    try:
        from triton.runtime import interpreter
    except Exception:  # noqa: BLE001 - no Triton: nothing to guard
        return contextlib.nullcontext()
    grid = interpreter.GridExecutor
    original = grid.__call__

    def call(self, *args, **kwargs):
        _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _INSIDE.depth -= 1

    @contextlib.contextmanager
    def patched():
        grid.__call__ = call
        try:
            yield
        finally:
            grid.__call__ = original

    return patched()


def _counter_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.views = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not getattr(_INSIDE, "depth", 0):
                self.ops[str(func.overloadpacket)] += 1
                self.views += bool(getattr(func, "is_view", False))
            return func(*args, **(kwargs or {}))

    return Count()


def count_call(impl: str, length: int, args) -> dict:
    """Counts of one forward and one backward at `length` tokens."""
    import torch

    from hope_megatron.ops import TitansOpConfig, init_meta_params, titans_memory
    from hope_megatron.ops import triton as op_triton
    from hope_megatron.ops.memory_mlp import l2norm

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cfg = TitansOpConfig(chunk_size=args.chunk, inner_clip=args.inner_clip, update_dropout=args.update_dropout)
    gen = torch.Generator().manual_seed(0)
    params = {n: t.to(args.device).requires_grad_(True)
              for n, t in init_meta_params(args.heads, args.head_dim, cfg, generator=gen).items()}

    def inputs(n):
        shape = (args.batch, args.heads, n, args.head_dim)
        x = torch.nn.functional.silu(torch.randn(shape, generator=gen)).to(args.device, dtype).requires_grad_(True)
        q = l2norm(torch.randn(shape, generator=gen)).to(args.device, dtype).requires_grad_(True)
        return x, q

    x, q = inputs(2 * args.chunk)  # warm-up: Triton compiles/autotunes here, not in the count
    op_triton.LAUNCHES.clear()
    titans_memory(x, q, params, cfg, impl=impl, training=True, return_state=True)[0].sum().backward()
    if impl == "triton" and not op_triton.LAUNCHES:
        return {"fell_back": op_triton.unsupported(x, cfg, None, True) or "no Triton kernel was launched"}
    op_triton.LAUNCHES.clear()
    fwd, bwd = _counter_mode(), _counter_mode()
    with _interpreter_guard():
        x, q = inputs(length)
        with fwd:
            y, _ = titans_memory(x, q, params, cfg, impl=impl, training=True, return_state=True)
        launches_fwd = sum(op_triton.LAUNCHES.values())
        g = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
        with bwd:
            y.backward(g)
    launches_bwd = sum(op_triton.LAUNCHES.values()) - launches_fwd
    if impl == "triton" and launches_fwd + launches_bwd == 0:  # e.g. the kernels' first-call self-check failed
        return {"fell_back": op_triton.unsupported(x, cfg, None, True) or "no Triton kernel was launched"}
    return {"fwd": sum(fwd.ops.values()) + launches_fwd, "bwd": sum(bwd.ops.values()) + launches_bwd,
            "fwd_aten": sum(fwd.ops.values()), "bwd_aten": sum(bwd.ops.values()),
            "fwd_views": fwd.views, "bwd_views": bwd.views, "fwd_triton": launches_fwd, "bwd_triton": launches_bwd,
            "kernels": dict(op_triton.LAUNCHES), "top_fwd": fwd.ops.most_common(6), "top_bwd": bwd.ops.most_common(6),
            "fell_back": None}


def fit(counts: dict, phase: str):
    """(fixed, slope, affine?) from {chunks: counts} over the two longest lengths, checked on the shortest."""
    ns = sorted(counts)
    n0, n1, n2 = ns[0], ns[-2], ns[-1]
    slope = (counts[n2][phase] - counts[n1][phase]) / (n2 - n1)
    fixed = counts[n2][phase] - slope * n2
    return fixed, slope, abs(fixed + slope * n0 - counts[n0][phase]) < 0.5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seq-len", type=int, default=REF_LEN, help="longest length counted (also its 1/2 and 1/4)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=REF_CHUNK)
    ap.add_argument("--inner-clip", type=float, default=0.3)
    ap.add_argument("--update-dropout", type=float, default=0.2)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--impls", default="chunked,triton", help="comma-separated: chunked, triton, naive")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.heads < 2:
        ap.error("--heads must be at least 2: with one head a reshape per chunk is a view instead of a copy, which "
                 "counts one op per chunk fewer than the real multi-head layer.")
    if args.seq_len % (4 * args.chunk) or args.seq_len < 8 * args.chunk:
        ap.error(f"--seq-len {args.seq_len} must be a multiple of 4 x --chunk ({4 * args.chunk}) and at least "
                 f"{8 * args.chunk}, so that L/2 and L/4 are whole chunks.")
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and args.device == "cpu" and "triton" in args.impls:
        print("note: TRITON_INTERPRET is not set: on CPU the triton path can only fall back to the chunked form; run "
              "with TRITON_INTERPRET=1 to count the fused kernels under Triton's interpreter.")
    print(f"bench_launch_count: B={args.batch} H={args.heads} d_h={args.head_dim} C={args.chunk} {args.dtype} on "
          f"{args.device}; training, return_state, HOPE defaults, inner clip {args.inner_clip}, update dropout "
          f"{args.update_dropout}; lengths {args.seq_len // 4}, {args.seq_len // 2}, {args.seq_len}")
    ref_chunks = REF_LEN // REF_CHUNK
    rows, summary = [], {}
    fell_back = {}
    for impl in [s.strip() for s in args.impls.split(",") if s.strip()]:
        t0 = time.perf_counter()
        counts = {}
        for length in (args.seq_len // 4, args.seq_len // 2, args.seq_len):
            counts[length // args.chunk] = count_call(impl, length, args)
            if counts[length // args.chunk]["fell_back"]:
                break
        seconds = time.perf_counter() - t0
        last = counts[max(counts)]
        if last["fell_back"]:
            fell_back[impl] = last["fell_back"]
            continue
        label = impl
        per_phase = {}
        for phase in ("fwd", "bwd"):
            fixed, slope, affine = fit(counts, phase)
            measured = last[phase]
            at_ref = (slope + fixed / ref_chunks) if affine else (
                measured / ref_chunks if args.seq_len == REF_LEN and args.chunk == REF_CHUNK else None)
            per_phase[phase] = at_ref
            rows.append((label, phase, measured, last[f"{phase}_aten"], last[f"{phase}_views"],
                         last[f"{phase}_triton"], measured / (args.seq_len // args.chunk), fixed, slope, affine,
                         at_ref))
        summary[impl] = (per_phase, last, seconds)
    hdr = (f"{'impl':9s} {'phase':5s} {'per layer':>10s} {'aten':>8s} {'(views)':>8s} {'triton':>7s} "
           f"{'per chunk':>10s} | {'fixed':>8s} {'slope':>8s} {'affine':>6s} {'per chunk @L=2048':>18s}")
    print(f"\ncounts of one layer at L={args.seq_len} ({args.seq_len // args.chunk} chunks); fit over "
          f"{args.seq_len // 4}..{args.seq_len} tokens")
    print(hdr)
    print("-" * len(hdr))
    for label, phase, total, aten, views, trit, per_chunk, fixed, slope, affine, at_ref in rows:
        ref = f"{at_ref:18.2f}" if at_ref is not None else f"{'(measure at 2048)':>18s}"
        print(f"{label:9s} {phase:5s} {total:10d} {aten:8d} {views:8d} {trit:7d} {per_chunk:10.2f} | "
              f"{fixed:8.1f} {slope:8.2f} {str(affine):>6s} {ref}")
    print()
    for impl, reason in fell_back.items():
        print(f"{impl}: NOT COUNTED: impl='{impl}' launched no fused kernel and runs the chunked form ({reason}); "
              f"its counts are the chunked row's.")
    for impl, (per_phase, last, seconds) in summary.items():
        if last["kernels"]:
            print(f"{impl}: Triton launches by kernel at L={args.seq_len}: {last['kernels']}")
        print(f"{impl}: most frequent aten ops at L={args.seq_len}: fwd {last['top_fwd']}; bwd {last['top_bwd']}")
        print(f"{impl}: counted in {seconds:.1f} s")
    print()
    for impl, (per_phase, last, _) in summary.items():
        if None in per_phase.values():
            print(f"{impl}: per chunk at L=2048, C=8: not affine in chunks here; rerun with --seq-len 2048")
            continue
        total = per_phase["fwd"] + per_phase["bwd"]
        verdict = "meets" if total <= TARGET_PER_CHUNK else "misses"
        print(f"{impl}: per chunk at L=2048, C=8: fwd {per_phase['fwd']:.2f} + bwd {per_phase['bwd']:.2f} = "
              f"{total:.2f} launches; {verdict} the target <= {TARGET_PER_CHUNK}")
    if "chunked" in summary and "triton" in summary:
        c, t = summary["chunked"][0], summary["triton"][0]
        if None not in c.values() and None not in t.values():
            print(f"ratio chunked / triton launches per chunk (fwd+bwd): "
                  f"{(c['fwd'] + c['bwd']) / (t['fwd'] + t['bwd']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
