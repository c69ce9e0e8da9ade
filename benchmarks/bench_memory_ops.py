"""Naive token loop vs chunk-parallel Titans memory op: forward and forward+backward tokens/s and peak memory.

    python benchmarks/bench_memory_ops.py                 # B=2, H=8, d_h=64, T=2048, C=16, expansion 1 (issue 3)
    python benchmarks/bench_memory_ops.py --seq-len 256   # quick look

Every case runs in a fresh subprocess (no allocator or autograd state shared between cases) with the HOPE defaults
(self-modification on: M_k, M_v, M_η, M_α, M_mem; DGD; momentum 0.9; decay; inner clip 0.3), fp32, one torch thread unless
--threads says otherwise. Each child warms up on a 64-token sequence, then times ONE call at the full length.
Peak memory = ru_maxrss − RSS just before the timed call. The children run with MALLOC_MMAP_THRESHOLD_=131072 so
that glibc serves every allocation ≥ 128 KiB by mmap and returns it on free: RSS then tracks live tensor memory
instead of heap fragmentation (with the default allocator the naive form's peak RSS is ~2× its live tensors:
5.75 vs 2.90 GiB at T=512; at T=2048 that would be ~24 GiB, more than this machine has). Both forms run under the
same setting; the price is that every such allocation page-faults its memory afresh, which shows as sys CPU time, so
each case also prints its user and sys CPU seconds and the ratios are given for wall, user+sys and user time alike.
Cases: chunked (the training form: keeps W, m per chunk for the backward), chunked-recompute (cfg.recompute_chunks:
keeps one boundary state per chunk, re-runs each chunk in the backward) and naive. Nothing is extrapolated: every
number printed was measured at the stated shape. The last line is `speedup(chunked vs naive, fwd+bwd): X.XX`
(wall clock, the training form).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(impl: str, mode: str, args) -> dict:
    import psutil
    import torch

    sys.path.insert(0, ROOT)
    from hope_megatron.ops import TitansOpConfig, init_meta_params, titans_memory
    from hope_megatron.ops.memory_mlp import l2norm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # inner_clip 0.3 = the seed's inner clip (hope_math §5.3): with c_clip = ∞ these unit-scale random inputs drive
    # the default inner loop to inf/NaN within a few chunks, and a benchmark of NaN arithmetic would prove nothing.
    cfg = TitansOpConfig(chunk_size=args.chunk, expansion=args.expansion, inner_clip=args.inner_clip,
                         recompute_chunks=(impl == "chunked-recompute"))
    impl = "chunked" if impl == "chunked-recompute" else impl
    params = {n: t.requires_grad_(True) for n, t in init_meta_params(args.heads, args.head_dim, cfg).items()}

    def call(length: int):
        x = torch.nn.functional.silu(torch.randn(args.batch, args.heads, length, args.head_dim)).requires_grad_(True)
        q = l2norm(torch.randn(args.batch, args.heads, length, args.head_dim))
        rss0 = psutil.Process().memory_info().rss
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                y = titans_memory(x, q, params, cfg, impl=impl)
        else:
            y = titans_memory(x, q, params, cfg, impl=impl)
            y.square().mean().backward()
        seconds = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime)
        return seconds, cpu, rss0, float(y.detach().double().norm())

    call(64)  # warm-up: first-call costs (kernels, allocator) stay out of the timing
    seconds, cpu, rss0, ynorm = call(args.seq_len)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0  # ru_maxrss is KiB on Linux
    return {"impl": impl, "mode": mode, "seconds": seconds, "tokens_per_s": args.batch * args.seq_len / seconds,
            "user_s": cpu[0], "sys_s": cpu[1], "peak_mib": peak / 2 ** 20, "y_norm": ynorm}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--expansion", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inner-clip", type=float, default=0.3)
    ap.add_argument("--mmap-threshold", type=int, default=131072,
                    help="MALLOC_MMAP_THRESHOLD_ for the children (bytes); 0 leaves glibc's default allocator, under "
                         "which peak RSS includes heap fragmentation (the naive form's is ~2x its live tensors)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, mode = args.child.split(":")
        print(json.dumps(child(impl, mode, args)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if args.mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    alloc = (f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold > 0
             else "glibc default allocator (peak RSS includes heap fragmentation)")
    print(f"bench_memory_ops: B={args.batch} H={args.heads} d_h={args.head_dim} T={args.seq_len} C={args.chunk} "
          f"expansion={args.expansion}; HOPE defaults (5 memories, DGD, momentum 0.9, decay), inner_clip={args.inner_clip}, fp32, "
          f"{args.threads} torch thread(s), host {os.cpu_count()} cores")
    print("each case: fresh subprocess, 64-token warm-up, then ONE timed call at full length; fwd = no_grad forward, "
          f"fwd+bwd = forward + backward of mean(y^2); peak = ru_maxrss - RSS before the call; {alloc}")
    results = {}
    cases = [("chunked", "fwd"), ("chunked", "fwdbwd"), ("chunked-recompute", "fwdbwd"), ("naive", "fwd"),
             ("naive", "fwdbwd")]
    for impl, mode in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{impl}:{mode}"] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench_memory_ops: case {impl}:{mode} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[(impl, mode)] = r
        print(f"  {impl:17s} {'fwd+bwd' if mode == 'fwdbwd' else 'fwd':8s} {r['seconds']:8.2f} s "
              f"(cpu user {r['user_s']:6.2f} s, sys {r['sys_s']:6.2f} s) {r['tokens_per_s']:9.1f} tokens/s  "
              f"peak {r['peak_mib']:8.1f} MiB  |y|={r['y_norm']:.6g}", flush=True)
    for impl, mode in (("chunked", "fwd"), ("chunked", "fwdbwd"), ("chunked-recompute", "fwdbwd")):
        n, c = results[("naive", mode)], results[(impl, mode)]
        cpu = (n["user_s"] + n["sys_s"]) / max(c["user_s"] + c["sys_s"], 1e-9)
        print(f"{impl} {'fwd+bwd' if mode == 'fwdbwd' else 'fwd'}: {impl}/naive peak memory "
              f"{c['peak_mib'] / n['peak_mib']:.3f} ({c['peak_mib']:.1f} MiB vs {n['peak_mib']:.1f} MiB); "
              f"speedup {n['seconds'] / c['seconds']:.2f}x wall, {cpu:.2f}x cpu (user+sys), "
              f"{n['user_s'] / max(c['user_s'], 1e-9):.2f}x user cpu")
    print(f"speedup(chunked vs naive, fwd+bwd): "
          f"{results[('naive', 'fwdbwd')]['seconds'] / results[('chunked', 'fwdbwd')]['seconds']:.2f}")


if __name__ == "__main__":
    main()
