"""The reference state advance: a token loop that reads like the paper (hope_math §3.1 step (b)).

For every memory □ of a group, every weight matrix W of □ (W₁ with input ĥ_t, W₂ with input k̂_t) and every
token t of the chunk, in order (hope_math §2.5, NL-arXiv Eq 88 plus momentum and decay):

    m ← β m + u_t ẑ_tᵀ                          (momentum over the rank-1 inner gradient G_t = u_t ẑ_tᵀ, §2.4)
    W ← W (α_t I − λ_t ẑ_t ẑ_tᵀ) − η_t m         (DGD decay with weight decay α_t, λ_t = η_t or 0; NL-arXiv Eq 57)

The gradients u_t ẑ_tᵀ were all taken at the chunk-boundary weights (step (a), in memory_mlp.py), so the loop
only replays the writes. The chunk-end clip (step (c)) is applied by the caller. The full autograd graph is
kept: this form is the correctness oracle, not the training path (chunked.py is).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .config import TitansOpConfig


def advance_token_loop(ws: Sequence[torch.Tensor], ms: Sequence[torch.Tensor],
                       factors: Sequence[Tuple[torch.Tensor, torch.Tensor]], eta: torch.Tensor,
                       log_alpha: torch.Tensor, cfg: TitansOpConfig) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Advance every weight matrix of a group of G memories over one chunk of n tokens.

    ws, ms: per layer [G, B, H, d_out, d_in] weights and momenta at the chunk start.
    factors: per layer (u [G, B, H, n, d_out], ẑ [G or absent, B, H, n, d_in]).
    eta, log_alpha: [B, H, n] (shared by every memory of a head, hope_math §3.2).
    """
    beta = cfg.momentum
    alpha = torch.exp(log_alpha)                        # α_t (log α computed as logsigmoid, §2.3)
    lam = eta if cfg.dgd else torch.zeros_like(eta)     # λ_t = η_t with DGD, else 0 (§2.5, §5.4)
    n = eta.shape[-1]
    new_ws, new_ms = [], []
    for w_all, m_all, (u_all, z_all) in zip(ws, ms, factors):
        z_all = z_all.expand(*u_all.shape[:-1], z_all.shape[-1])
        w_out, m_out = [], []
        for g in range(w_all.shape[0]):                 # one memory □ at a time
            w, m, u, z = w_all[g], m_all[g], u_all[g], z_all[g]
            for t in range(n):                          # tokens of the chunk, in order
                u_t, z_t = u[..., t, :], z[..., t, :]                     # [B, H, d_out], [B, H, d_in]
                a_t, l_t, e_t = alpha[..., t, None, None], lam[..., t, None, None], eta[..., t, None, None]
                m = beta * m + u_t[..., :, None] * z_t[..., None, :]     # m_t = β m_{t−1} + G_t
                wz = (w * z_t[..., None, :]).sum(-1, keepdim=True)        # W_{t−1} ẑ_t
                # W_t = W_{t−1}(α_t I − λ_t ẑ_t ẑ_tᵀ) − η_t m_t, with W_{t−1} ẑ_t ẑ_tᵀ as an outer product
                # (λ_t scales the vector first, so autograd keeps no extra state-sized tensor per token)
                w = a_t * w - (l_t * wz) * z_t[..., None, :] - e_t * m
            w_out.append(w)
            m_out.append(m)
        new_ws.append(torch.stack(w_out))
        new_ms.append(torch.stack(m_out))
    return new_ws, new_ms
