"""Bytes the Titans memory op keeps for its backward, per layer and sequence: chunked vs the fused Triton kernels.

    python benchmarks/bench_saved_memory.py                       # pilot, mid, target (per TP-2 rank), chunked + triton
    TRITON_INTERPRET=1 python benchmarks/bench_saved_memory.py --shapes pilot   # the triton path on CPU

Measured with torch.autograd.graph.saved_tensors_hooks around one forward as the Titans mixer makes it (training,
return_state=True, bf16 x̃ and q requiring grad, B = 1, the pilot's op settings: HOPE defaults, inner clip 0.3, update
dropout 0.2): the sum of the unique storages the pack hook sees (a view counts its whole storage, once), parameters
excluded. "live" cross-checks it: what stays allocated after the forward less the output (glibc's in-use heap on
CPU, torch.cuda.memory_allocated on CUDA), which also sees tensors kept outside autograd's hooks
(hope_megatron/training/saved_memory.py). Beside each measurement, the figure the launchers' preflight uses
(hope_megatron/training/memory_estimate.py): for triton ops.triton.saved_bytes(), for chunked the live bytes measured
at 4 and 8 chunks of one head and extrapolated. Only the forward runs (the saved set is complete when it returns).

Shapes (issue 14): pilot L 2048, H 8, d_h 64, C 8; mid L 4096, H 16, C 16; target per TP-2 rank L 8192, H 12 (of 24),
C 32. Target for the fused kernels: <= 64 MiB per layer and sequence at the pilot shape.
Cost (2-core CPU, one thread): chunked ~1-2 min for the three shapes, peak RSS ~5 GiB (target: ~4 GiB saved). The
triton path under TRITON_INTERPRET=1 runs its kernels in numpy, one program per head in turn: use --heads 1 there
(heads are independent, so the figure is scaled by H; the forward at the pilot shape then takes a few minutes).
A triton path that launches no fused kernel is reported as NOT MEASURED with the reason, never as the kernel's figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

SHAPES = {  # name: (L, H, d_h, C)
    "pilot": (2048, 8, 64, 8),
    "mid": (4096, 16, 64, 16),
    "target": (8192, 12, 64, 32),
}
PILOT_TARGET_MIB = 64
MIB = 2.0 ** 20


def measure(impl: str, shape, args) -> dict:
    import torch

    from hope_megatron.ops import TitansOpConfig
    from hope_megatron.ops import triton as op_triton
    from hope_megatron.training.saved_memory import measure_saved_bytes, measured_op_bytes

    length, heads, d, chunk = shape
    run_heads = min(args.heads or heads, heads)  # heads are independent: measure fewer, scale by heads / run_heads
    scale = heads / run_heads
    cfg = TitansOpConfig(chunk_size=chunk, inner_clip=args.inner_clip, update_dropout=args.update_dropout)
    t0 = time.perf_counter()
    r = {"hooks": 0, "live": None, "fell_back": False}
    if impl == "triton":  # a short probe first: a fallback is not worth measuring at full length
        r = measure_saved_bytes(cfg, impl, 1, 1, 2 * chunk, d, torch.bfloat16, device=args.device)
    if not r["fell_back"]:
        r = measure_saved_bytes(cfg, impl, 1, run_heads, length, d, torch.bfloat16, device=args.device)
    seconds = time.perf_counter() - t0
    if impl == "triton":
        predicted = op_triton.saved_bytes(cfg, 1, heads, length, d, input_bytes=2)
    else:
        predicted = measured_op_bytes(cfg, impl, 1, heads, length, d, input_bytes=2)
    reason = None
    if r["fell_back"]:
        x = torch.empty(1, heads, 1, d, device=args.device)
        reason = op_triton.unsupported(x, cfg, None, True) or "no Triton kernel was launched"
    # live also holds per-op host allocations (autograd's graph) that do not grow with heads: not scaled, not shown
    return {"bytes": r["hooks"] * scale, "live": None if r["live"] is None or scale != 1 else r["live"],
            "predicted": predicted, "seconds": seconds, "fell_back": reason, "run_heads": run_heads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--shapes", default="pilot,mid,target", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--impls", default="chunked,triton", help="comma-separated: chunked, triton, naive")
    ap.add_argument("--inner-clip", type=float, default=0.3)
    ap.add_argument("--update-dropout", type=float, default=0.2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heads", type=int, default=0, help="measure at this many heads and scale to the shape's (the "
                                                          "op is head-local; for the interpreter: --heads 1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        ap.error(f"--shapes: unknown {', '.join(bad)}; use any of {', '.join(SHAPES)}.")
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    import torch

    torch.set_num_threads(args.threads)
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and args.device == "cpu" and "triton" in impls:
        print("note: TRITON_INTERPRET is not set: on CPU the triton path can only fall back to the chunked form; run "
              "with TRITON_INTERPRET=1 to measure the fused kernels under Triton's interpreter.")
    print(f"bench_saved_memory: bytes kept for the backward per layer and sequence (B=1, bf16 inputs, training, "
          f"inner clip {args.inner_clip}, update dropout {args.update_dropout}) on {args.device}")
    hdr = (f"{'shape':7s} {'L':>5s} {'H':>3s} {'C':>3s} {'impl':8s} {'saved (hooks)':>13s} {'live':>13s} "
           f"{'preflight figure':>17s} {'hooks/pred':>10s} {'time':>7s}")
    print(hdr)
    print("-" * len(hdr))
    results = {}
    for name in shapes:
        for impl in impls:
            r = measure(impl, SHAPES[name], args)
            results[(name, impl)] = r
            L, H, _, C = SHAPES[name]
            if r["fell_back"]:
                print(f"{name:7s} {L:5d} {H:3d} {C:3d} {impl:8s} {'NOT MEASURED':>13s} {'':>13s} "
                      f"{r['predicted'] / MIB:13.1f} MiB {'':>10s} {r['seconds']:6.1f}s  (no fused kernel ran: "
                      f"{r['fell_back']})", flush=True)
                continue
            live = f"{r['live'] / MIB:9.1f} MiB" if r["live"] is not None else f"{'—':>13s}"
            print(f"{name:7s} {L:5d} {H:3d} {C:3d} {impl:8s} {r['bytes'] / MIB:9.1f} MiB {live} "
                  f"{r['predicted'] / MIB:13.1f} MiB {r['bytes'] / r['predicted']:10.3f} {r['seconds']:6.1f}s"
                  + (f"  (measured at {r['run_heads']} heads, x{H / r['run_heads']:g})" if r["run_heads"] != H else ""),
                  flush=True)
    print()
    for name in shapes:
        c, t = results.get((name, "chunked")), results.get((name, "triton"))
        if c and t and not t["fell_back"]:
            print(f"{name}: chunked / triton saved bytes = {c['bytes'] / t['bytes']:.1f}x "
                  f"({c['bytes'] / MIB:.1f} MiB vs {t['bytes'] / MIB:.1f} MiB per layer and sequence)")
    pilot = results.get(("pilot", "triton"))
    if pilot and not pilot["fell_back"]:
        mib = pilot["bytes"] / MIB
        print(f"triton at the pilot shape: {mib:.1f} MiB per layer and sequence; "
              f"{'meets' if mib <= PILOT_TARGET_MIB else 'misses'} the target <= {PILOT_TARGET_MIB} MiB")
    elif "triton" in impls and "pilot" in shapes:
        print(f"triton at the pilot shape: not measured (no fused kernel ran); saved_bytes() predicts "
              f"{pilot['predicted'] / MIB:.1f} MiB against the target <= {PILOT_TARGET_MIB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
