"""How often the inner chunk clip is active at initialisation, and what drives it (hope_math §10 #17, issue 16 item 5).

    python benchmarks/bench_inner_clip.py                  # pilot head shape: D=512, H=8, d_h=64, C=8, T=1024
    python benchmarks/bench_inner_clip.py --hidden 64 --heads 4 --seq-len 128   # the demo's tiny.yaml shape

The mixer's inputs are built as the megatron layer builds them at step 0: hidden states with RMS 1 (the pre-norm's
output), in_proj ~ N(0, 0.02) (megatron's init_method_std), the depthwise conv ~ U(±1/2) (its reset_parameters),
SiLU, q ℓ2-normalised per head; the meta-inits and readouts come from init_meta_params. Each row changes ONE factor
from the HOPE defaults (self-modification on, DGD, β = 0.9, η_init = 0.01, clip 0.3) and prints the share of
(memory, head, sequence, chunk) writes the clip scaled down and the mean scale f = min(1, c/‖Δ‖) (1 = untouched).
Rows: the meta-init scaled by s (s·N(0, 1/fan_in)), a smaller η_init, no momentum, the clip widened, larger inputs
(in_proj std 0.1). The sequence is long enough (T/C chunks) for the momentum to reach its steady state.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F

from hope_megatron.ops import TitansOpConfig, causal_conv1d, init_meta_params, titans_memory


def clip_stats(cfg: TitansOpConfig, hidden: int, heads: int, seq: int, batch: int, meta_scale: float,
               proj_std: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = hidden // heads
    h = torch.randn(batch, seq, hidden, generator=g)
    h = h / h.pow(2).mean(-1, keepdim=True).sqrt()                      # RMSNorm output at init (weight 1)
    w_in = torch.randn(2 * heads * d, hidden, generator=g) * proj_std    # [x̃ | q] rows of in_proj
    conv = (torch.rand(2 * heads * d, 4, generator=g) * 2 - 1) / math.sqrt(4)
    a, _ = causal_conv1d(h @ w_in.T, conv)
    a = F.silu(a)

    def to_heads(t):
        return t.reshape(batch, seq, heads, d).permute(0, 2, 1, 3)

    x, q = to_heads(a[..., :heads * d]), to_heads(a[..., heads * d:])
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    p = init_meta_params(heads, d, cfg, generator=g)
    p = {n: t * meta_scale if ("_w" in n and not n.endswith("readout")) else t for n, t in p.items()}
    profile = []
    with torch.no_grad():
        for piece in range(8):  # streamed in eighths (equal to one call), so the share can be read per eighth
            stats = {}
            sl = slice(piece * seq // 8, (piece + 1) * seq // 8)
            _, state = titans_memory(x[:, :, sl], q[:, :, sl], p, cfg, state=None if piece == 0 else state,
                                     impl="chunked", return_state=True, stats=stats)
            profile.append((float(stats["clip_writes"]), float(stats["clip_hits"]), float(stats["clip_scale_sum"])))
    writes = sum(w for w, _, _ in profile)
    return (sum(h for _, h, _ in profile) / writes, sum(f for _, _, f in profile) / writes, int(writes),
            [h / w for w, h, _ in profile])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8)
    a = ap.parse_args(argv)
    base = TitansOpConfig(chunk_size=a.chunk)
    rows = [
        ("HOPE defaults (meta-init N(0, 1/fan_in))", base, 1.0, 0.02),
        ("meta-init x 0.1", base, 0.1, 0.02),
        ("meta-init x 0.01", base, 0.01, 0.02),
        ("meta-init x 3", base, 3.0, 0.02),
        ("eta_init 0.001 (default 0.01)", dataclasses.replace(base, eta_init=0.001), 1.0, 0.02),
        ("no inner momentum (beta 0)", dataclasses.replace(base, momentum=0.0), 1.0, 0.02),
        ("beta 0, eta_init 0.001", dataclasses.replace(base, momentum=0.0, eta_init=0.001), 1.0, 0.02),
        ("clip 1.0 (default 0.3)", dataclasses.replace(base, inner_clip=1.0), 1.0, 0.02),
        ("in_proj std 0.1 (larger inputs)", base, 1.0, 0.1),
    ]
    d = a.hidden // a.heads
    print(f"inner chunk clip at init: D={a.hidden}, H={a.heads}, d_h={d}, C={a.chunk}, T={a.seq_len}, B={a.batch}")
    print(f"{'setting':<42} {'hit rate':>9} {'mean scale':>11} {'writes':>7}  hit rate per eighth of the sequence")
    for name, cfg, scale, std in rows:
        rate, mean, writes, profile = clip_stats(cfg, a.hidden, a.heads, a.seq_len, a.batch, scale, std)
        print(f"{name:<42} {100 * rate:>8.1f}% {mean:>11.3f} {writes:>7d}  "
              + " ".join(f"{100 * r:3.0f}%" for r in profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
