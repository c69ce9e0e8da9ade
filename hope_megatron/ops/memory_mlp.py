"""The per-(sequence, head) memory MLP, its closed-form inner gradients and the per-chunk clip.

Shared by the naive and the chunked forms: everything evaluated at a chunk boundary lives here
(hope_math §2.2 memory, §2.4 inner gradients, §2.5 clip). Weights carry any leading batch dims
([..., d_out, d_in], e.g. [G, B, H, ...] for G stacked memories); inputs are [..., n, d_in] and
broadcast against them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EPS = 1e-6  # ε of ẑ = z / max(‖z‖, ε) (hope_math §1)


def l2norm(z: torch.Tensor) -> torch.Tensor:
    """ẑ = z / max(‖z‖₂, ε) over the last dim (hope_math §1)."""
    return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(EPS)


def silu_grad(a: torch.Tensor) -> torch.Tensor:
    """σ′(a) = s(a)(1 + a(1 − s(a))) (hope_math §1)."""
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(-1, -2)


def memory_eval(ws: Sequence[torch.Tensor], z: torch.Tensor, branch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """M(z) = z + W₁ σ(W₂ z) (NL-arXiv Eq 89, hope_math §2.2), or M(z) = W z for a linear memory.

    branch_mask (update dropout, §2.3) scales the residual branch only; for a linear memory, its output.
    """
    if len(ws) == 2:
        w1, w2 = ws
        branch = F.silu(z @ _t(w2)) @ _t(w1)
        if branch_mask is not None:
            branch = branch * branch_mask
        return z + branch
    (w,) = ws
    out = z @ _t(w)
    return out * branch_mask if branch_mask is not None else out


def inner_grad_factors(ws: Sequence[torch.Tensor], k: torch.Tensor,
                       v_hat: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Rank-1 factors (u_t, ẑ_t) of G_t = ∂ℓ_t/∂W = u_t ẑ_tᵀ per layer, at the boundary weights ws.

    ℓ_t = ‖M(k_t) − v̂_t‖² with v̂ constant for the inner gradient (hope_math §2.4, NL-arXiv Eqs 84–88):
      a = W₂k, h = σ(a), e = 2(k + W₁h − v̂), G₁ = e hᵀ, G₂ = δ kᵀ with δ = (W₁ᵀe) ⊙ σ′(a);
    linear memory: G = 2(Wk − v̂) kᵀ. The left factor absorbs the input's norm, u = max(‖z‖, ε)·(…), so
    that u ẑᵀ equals G exactly. Returned in state order: [(u₁, ĥ), (u₂, k̂)] or [(u, k̂)].
    """
    nk = torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(EPS)
    k_hat = k / nk
    if len(ws) == 2:
        w1, w2 = ws
        a = k @ _t(w2)                                    # a_t = W₂ k_t
        h = F.silu(a)                                     # h_t = σ(a_t)
        e = 2 * (k + h @ _t(w1) - v_hat)                  # e_t = 2(M(k_t) − v̂_t)
        delta = (e @ w1) * silu_grad(a)                   # δ_t = (W₁ᵀ e_t) ⊙ σ′(a_t)
        nh = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(EPS)
        return [(nh * e, h / nh), (nk * delta, k_hat)]    # (u₁, ĥ), (u₂, k̂)
    (w,) = ws
    e = 2 * (k @ _t(w) - v_hat)
    return [(nk * e, k_hat)]


def clip_chunk_delta(start: Sequence[torch.Tensor], end: Sequence[torch.Tensor], c_clip: float) -> List[torch.Tensor]:
    """Per-chunk inner-update clip (hope_math §2.5, §10 #10): joint Frobenius norm of (ΔW₁, ΔW₂).

    Weights are [..., d_out, d_in]; the norm is per leading index (memory, sequence, head). When the norm is
    within c_clip the end state is returned untouched (bitwise), and c_clip = ∞ skips the clip entirely.
    The scale c/‖Δ‖ is differentiable (§2.8).
    """
    if c_clip == float("inf"):
        return list(end)
    deltas = [e - s for s, e in zip(start, end)]
    sq = sum(torch.linalg.vector_norm(d, dim=(-2, -1)) ** 2 for d in deltas)
    norm = torch.sqrt(sq.clamp_min(1e-300 if sq.dtype == torch.float64 else 1e-30))
    over = (norm > c_clip)[..., None, None]
    scale = (c_clip / norm)[..., None, None]
    return [torch.where(over, s + scale * d, e) for s, e, d in zip(start, end, deltas)]
