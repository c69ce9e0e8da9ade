"""The per-(sequence, head) memory MLP, its closed-form inner gradients and the per-chunk clip.

Shared by the naive and the chunked forms: everything evaluated at a chunk boundary lives here
(hope_math §2.2 memory, §2.4 inner gradients, §2.5 clip). Weights carry any leading batch dims
([..., d_out, d_in], e.g. [G, B, H, ...] for G stacked memories); inputs are [..., n, d_in] and
broadcast against them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EPS = 1e-6  # ε of ẑ = z / max(‖z‖, ε) (hope_math §1)


def l2norm(z: torch.Tensor) -> torch.Tensor:
    """ẑ = z / max(‖z‖₂, ε) over the last dim (hope_math §1)."""
    return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(EPS)


class _SiluGradMul(torch.autograd.Function):
    """g ⊙ σ′(a) in one fused kernel (aten's silu_backward), differentiable in both g and a.

    σ′(a) = s(1 + a(1 − s)), σ″(a) = s(1 − s)(2 + a(1 − 2s)) with s = sigmoid(a) (hope_math §1). Written out with
    autograd the product costs six O(n·d) passes and temporaries, and aten's fused kernel has no derivative.
    """

    @staticmethod
    def forward(ctx, g, a):
        ctx.save_for_backward(g, a)
        return torch.ops.aten.silu_backward(g, a)

    @staticmethod
    def backward(ctx, grad):
        g, a = ctx.saved_tensors
        gg = torch.ops.aten.silu_backward(grad, a) if ctx.needs_input_grad[0] else None
        ga = None
        if ctx.needs_input_grad[1]:
            s = torch.sigmoid(a)
            ga = grad * g * s * (1 - s) * (2 + a * (1 - 2 * s))              # σ″(a)
        return gg, ga


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(-1, -2)


class _ZWt(torch.autograd.Function):
    """z Wᵀ with W's gradient produced as Gᵀz directly in W's own [d_out, d_in] layout.

    Autograd of z @ W.mT hands back zᵀG transposed (a strided view); summed with the chunk write's contiguous
    gradient, every state-sized accumulation would then run strided (~5× slower on CPU). Broadcast leading dims
    (an input shared by every memory of a group) are summed back.
    """

    @staticmethod
    def forward(ctx, z, w):
        ctx.save_for_backward(z, w)
        return z @ _t(w)

    @staticmethod
    def backward(ctx, grad):
        z, w = ctx.saved_tensors
        gz = (grad @ w).sum_to_size(z.shape) if ctx.needs_input_grad[0] else None
        gw = (_t(grad) @ z).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None
        return gz, gw


def zwt(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """z Wᵀ over broadcast leading dims: z [..., n, d_in], w [..., d_out, d_in] → [..., n, d_out]."""
    return _ZWt.apply(z, w)


def memory_eval(ws: Sequence[torch.Tensor], z: torch.Tensor, branch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """M(z) = z + W₁ σ(W₂ z) (NL-arXiv Eq 89, hope_math §2.2), or M(z) = W z for a linear memory.

    branch_mask (update dropout, §2.3) scales the residual branch only; for a linear memory, its output.
    """
    if len(ws) == 2:
        w1, w2 = ws
        branch = zwt(F.silu(zwt(z, w2)), w1)
        if branch_mask is not None:
            branch = branch * branch_mask
        return z + branch
    (w,) = ws
    out = zwt(z, w)
    return out * branch_mask if branch_mask is not None else out


def _mlp(ws: Sequence[torch.Tensor], z: torch.Tensor):
    """(a, h, b, M(z)): a = W₂z, h = σ(a), b = W₁h, M(z) = z + b (Eq 89); a linear memory gives (None, None, Wz, Wz)."""
    if len(ws) == 2:
        w1, w2 = ws
        a = zwt(z, w2)
        h = F.silu(a)
        b = zwt(h, w1)
        return a, h, b, z + b
    out = zwt(z, ws[0])
    return None, None, out, out


def _factors(ws, k, a, h, m_k, v_hat):
    """(u, ẑ) per layer from the forward pieces a = W₂k, h = σ(a), m_k = M(k) at the boundary weights (§2.4);
    also returns the norms max(‖h‖, ε), max(‖k‖, ε) that turn those pieces into ẑ Wᵀ."""
    nk = torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(EPS)
    k_hat = k / nk
    e = 2 * (m_k - v_hat)                                 # e_t = 2(M(k_t) − v̂_t)
    if len(ws) == 2:
        delta = _SiluGradMul.apply(e @ ws[0], a)          # δ_t = (W₁ᵀ e_t) ⊙ σ′(a_t)
        nh = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(EPS)
        return [(nh * e, h / nh), (nk * delta, k_hat)], (nh, nk)   # (u₁, ĥ), (u₂, k̂)
    return [(nk * e, k_hat)], (nk,)


def boundary_terms(ws: Sequence[torch.Tensor], k: torch.Tensor, v: torch.Tensor, self_target: bool,
                   read: Optional[torch.Tensor] = None):
    """What one chunk needs from a memory at its boundary weights, each weight read once per matmul (§2.4, §2.6).

    Returns (M(read) or None, factors, ẑ Wᵀ per layer) for the target v̂ = M(v) (self-generated, Eqs 84–86) or
    v̂ = v (plain Titans). factors: rank-1 (u_t, ẑ_t) of G_t = ∂ℓ_t/∂W = u_t ẑ_tᵀ, ℓ_t = ‖M(k_t) − v̂_t‖² with v̂
    constant (NL-arXiv Eqs 84–88): a = W₂k, h = σ(a), e = 2(k + W₁h − v̂), G₁ = e hᵀ, G₂ = δ kᵀ with
    δ = (W₁ᵀe) ⊙ σ′(a); linear memory: G = 2(Wk − v̂) kᵀ. u = max(‖z‖, ε)·(…) absorbs the input's norm so that
    u ẑᵀ equals G exactly; state order [(u₁, ĥ), (u₂, k̂)] or [(u, k̂)]. The read, v and k rows are stacked
    along the token axis, so the W₂ and W₁ products of all three are two matmuls instead of six; ẑ Wᵀ (the DGD
    term of §3.4) falls out of the k rows' products: k̂ W₂ᵀ = a/‖k‖, ĥ W₁ᵀ = W₁h/‖h‖ (linear: k̂ Wᵀ = Wk/‖k‖).
    """
    parts = ([read] if read is not None else []) + ([v] if self_target else []) + [k]
    sizes = [t.shape[-2] for t in parts]
    a, h, b, out = _mlp(ws, torch.cat(parts, dim=-2) if len(parts) > 1 else k)
    outs = list(out.split(sizes, dim=-2))
    y = outs.pop(0) if read is not None else None
    v_hat = outs.pop(0) if self_target else v
    n_k = sizes[-1]
    b_k = b[..., -n_k:, :]
    if a is not None:
        a, h = a[..., -n_k:, :], h[..., -n_k:, :]
    factors, norms = _factors(ws, k, a, h, outs[0], v_hat)
    zw = [b_k / norms[0], a / norms[1]] if a is not None else [b_k / norms[0]]
    return y, factors, zw


_CLIP_RECORD: Optional[List[torch.Tensor]] = None  # set by record_clip_scales() for the length of one op call


@contextmanager
def record_clip_scales(stats: Optional[Dict[str, torch.Tensor]]):
    """Within the block, every chunk clip's scale f (clip_scale) is kept; on exit `stats` receives (device tensors,
    no host sync): clip_writes = clipped writes counted per (memory, sequence, head, chunk), clip_hits = those with
    f < 1 (the clip was active), clip_scale_sum = Σ f. Nothing is recorded with an infinite clip (f ≡ 1)."""
    global _CLIP_RECORD
    if stats is None:
        yield
        return
    outer, _CLIP_RECORD = _CLIP_RECORD, []
    try:
        yield
        add_clip_stats(stats, _CLIP_RECORD)
    finally:
        _CLIP_RECORD = outer


def add_clip_stats(stats: Dict[str, torch.Tensor], scales: Sequence[torch.Tensor]) -> None:
    """Accumulate clip scales f (any shapes) into stats' clip_writes / clip_hits / clip_scale_sum."""
    for f in scales:
        f = f.detach().float()
        for key, val in (("clip_writes", f.new_tensor(float(f.numel()))), ("clip_hits", (f < 1).sum().float()),
                         ("clip_scale_sum", f.sum())):
            stats[key] = stats[key] + val if key in stats else val


def clip_scale(deltas: Sequence[torch.Tensor], c_clip: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(f, ‖(ΔW₁, ΔW₂)‖_F) of the per-chunk inner-update clip (hope_math §2.5, §10 #10), per leading index.

    f = min(1, c_clip / ‖Δ‖) is exactly 1 when the clip is inactive; c/‖Δ‖ is differentiable where it is active.
    """
    sq = sum(torch.linalg.vector_norm(d, dim=(-2, -1)) ** 2 for d in deltas)
    norm = torch.sqrt(sq.clamp_min(1e-300 if sq.dtype == torch.float64 else 1e-30))
    f = (c_clip / norm).clamp(max=1.0)
    if _CLIP_RECORD is not None:
        _CLIP_RECORD.append(f.detach())
    return f, norm


def apply_clipped_delta(start: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor],
                        c_clip: float) -> List[torch.Tensor]:
    """W_end = W_start + f·ΔW with the per-chunk clip (clip_scale); W_start + ΔW bitwise when inactive or c = ∞."""
    if c_clip == float("inf"):
        return [s + d for s, d in zip(start, deltas)]
    scale = clip_scale(deltas, c_clip)[0][..., None, None]
    return [torch.addcmul(s, scale, d) for s, d in zip(start, deltas)]
