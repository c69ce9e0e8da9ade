"""gpu_suite, section 1: the Titans memory op forward+backward, naive / chunked / triton, per shape and dtype.

Run by the suite (`python benchmarks/gpu_suite`), one child process for the whole section; prints one
`@@RESULT {json}` line per case as soon as it is timed, so a section cut short by its time limit still reports what ran.
A case: x̃, q [B, H, L, d_h] in the dtype (requiring grad), the pilot's op settings (HOPE defaults, inner clip 0.3,
update dropout 0.2, the shape's C), training, return_state=True as the mixer calls it; one untimed call (compiles the
Triton kernels), then timed forward + y.backward(g) calls, synchronised, until `reps` or the case's time share is used. The naive
token loop (~800 aten ops per token, dispatcher-bound on a GPU, no compile step) is timed on its one call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SHAPES = {  # name: (B, H, L, d_h, C) -- the configs' micro-batches (pilot.yaml, mid.yaml)
    "pilot": (8, 8, 2048, 64, 8),
    "mid": (4, 16, 4096, 64, 16),
}
SMOKE_SHAPES = {"pilot": (1, 1, 16, 16, 8), "mid": (1, 1, 32, 16, 16)}  # 2 chunks each: the interpreter is slow
NAIVE_SKIP = {"mid": "the token loop at the mid shape needs ~4x the pilot's time and ~8x its memory (per-token states "
                     "for the backward); skipped to keep the suite inside 8 minutes"}


def emit(obj) -> None:
    print("@@RESULT " + json.dumps(obj), flush=True)


def time_case(impl, shape, dtype_name, device, max_reps, time_share):
    import torch

    from hope_megatron.ops import TitansOpConfig, init_meta_params, titans_memory
    from hope_megatron.ops import triton as op_triton
    from hope_megatron.ops.memory_mlp import l2norm

    B, H, L, d, C = shape
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    cfg = TitansOpConfig(chunk_size=C, inner_clip=0.3, update_dropout=0.2)
    gen = torch.Generator().manual_seed(0)
    params = {n: t.to(device).requires_grad_(True) for n, t in init_meta_params(H, d, cfg, generator=gen).items()}
    x = torch.nn.functional.silu(torch.randn(B, H, L, d, generator=gen)).to(device, dtype).requires_grad_(True)
    q = l2norm(torch.randn(B, H, L, d, generator=gen)).to(device, dtype).requires_grad_(True)
    g = torch.randn(B, H, L, d, generator=gen).to(device, dtype)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def call():
        y, _ = titans_memory(x, q, params, cfg, impl=impl, training=True, return_state=True)
        y.backward(g)
        return y

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    op_triton.LAUNCHES.clear()
    sync()
    t0 = time.perf_counter()
    y = call()
    sync()
    first = time.perf_counter() - t0
    last = dict(op_triton.LAUNCHES)  # launches of the last call (the first may add the kernels' self-check)
    finite = bool(torch.isfinite(y).all())
    times = [] if max_reps else [first]  # naive: the one call is the measurement (dispatcher-bound, no compile)
    while max_reps and len(times) < max_reps and (sum(times) + first < time_share or not times):
        for t in (x, q, *params.values()):
            t.grad = None
        op_triton.LAUNCHES.clear()
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
        last = dict(op_triton.LAUNCHES)
    fell_back = impl == "triton" and not last
    times.sort()
    med = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None
    return {"first_s": first, "median_s": med, "reps": len(times), "tokens_per_s": B * L / med, "finite": finite,
            "peak_gib": peak, "fell_back": op_triton.unsupported(x, cfg, None, True) if fell_back else None,
            "launches": last}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=180.0)
    ap.add_argument("--max-reps", type=int, default=5)
    args = ap.parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)  # steady on a shared CPU box; the smoke run checks the suite, not CPU speed
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    # GPU: the triton/chunked ratio first, the slow token loop last, so a short budget cuts the reference, not the
    # point. Smoke (interpreter: a triton call takes seconds): shape by shape, so the pilot rows always all run.
    if args.smoke:
        cases = [(s, dt, impl) for s in shapes for dt in ("bf16", "fp32") for impl in ("chunked", "naive", "triton")]
    else:
        cases = [(s, dt, impl) for impl in ("triton", "chunked") for s in shapes for dt in ("bf16", "fp32")]
        cases += [(s, dt, "naive") for s in shapes for dt in ("bf16", "fp32")]
    share = args.budget_s / len(cases)
    start = time.perf_counter()
    for name, dt, impl in cases:
        base = {"shape": name, "dims": shapes[name], "dtype": dt, "impl": impl}
        if impl == "naive" and name in NAIVE_SKIP:
            emit({**base, "skipped": NAIVE_SKIP[name]})
            continue
        left = args.budget_s - (time.perf_counter() - start)
        if left < 1.0:
            emit({**base, "skipped": "the section's time budget was used up before this case"})
            continue
        try:
            # naive, and triton under the interpreter: the one call is the measurement
            reps = 0 if impl == "naive" or (args.smoke and impl == "triton") else \
                (min(2, args.max_reps) if args.smoke else args.max_reps)
            r = time_case(impl, shapes[name], dt, args.device, reps,
                          min(share, left))
            emit({**base, **r})
        except Exception as e:  # noqa: BLE001 - one failed case (e.g. out of memory) must not end the section
            emit({**base, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})
        finally:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main())
