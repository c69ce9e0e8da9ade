"""The chunk-parallel state advance used in training (hope_math §3.4 compact form, §3.5 momentum).

Replaces naive.advance_token_loop with closed-form matrix algebra over the whole chunk, batched over
(memories, sequences, heads). Notation of hope_math §3.4/§3.5 (tokens t = 1..n of the chunk, 0-based in code):

  Λ_t = Σ_{s≤t} log α_s, γ_t = e^{Λ_t}, Γ = γ_n;  every gate ratio is e^{(non-positive difference)}
  Φ_ts = λ_t e^{Λ_{t−1}−Λ_s} ⟨ẑ_s, ẑ_t⟩ (s < t)
  ρ_t = α_t ρ_{t−1} + η_t β^t;  κ = E·F, E[t,j] = [j≤t] η_j e^{Λ_t−Λ_j}, F[j,s] = [s<j] β^{j−s}
  Ψ_ts = λ_t κ_{t−1,s} ⟨ẑ_s, ẑ_t⟩ (s < t)
  (I + Φ) R = −diag(η)U − diag(λ_t γ_{t−1}) Ẑ W_startᵀ + diag(λ_t ρ_{t−1}) Ẑ m_startᵀ + Ψ U
  W_end = Γ W_start − ρ_n m_start + (diag(e^{Λ_n−Λ_t}) R − diag(κ_{n,t}) U)ᵀ Ẑ
  m_end = β^n m_start + Uᵀ diag(β^{n−t}) Ẑ

Row r_t of R is the value actually written at token t (r_t = −λ_t W_{t−1}ẑ_t − η_t u_t). With DGD off, Φ = Ψ = 0
and no solve is needed. The triangular solve, Λ and all gate ratios run in the state dtype (fp32, or fp64 when
the inputs are fp64; §3.7).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .config import TitansOpConfig


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def advance_chunk(ws: Sequence[torch.Tensor], ms: Sequence[torch.Tensor],
                  factors: Sequence[Tuple[torch.Tensor, torch.Tensor]], eta: torch.Tensor,
                  log_alpha: torch.Tensor, cfg: TitansOpConfig) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Same contract as naive.advance_token_loop, computed in closed form (hope_math §3.4, §3.5)."""
    beta, n, dt = cfg.momentum, eta.shape[-1], eta.dtype
    idx = torch.arange(n, device=eta.device)
    strict = idx[:, None] > idx[None, :]          # s < t
    incl = idx[:, None] >= idx[None, :]           # s ≤ t
    neg_inf = float("-inf")

    lam_cum = torch.cumsum(log_alpha, dim=-1)     # Λ_t
    lam_prev = lam_cum - log_alpha                # Λ_{t−1}
    gamma_end = torch.exp(lam_cum[..., -1])       # Γ = e^{Λ_n}
    to_end = torch.exp(lam_cum[..., -1:] - lam_cum)  # e^{Λ_n − Λ_t}
    # E[t, j] = [j ≤ t] η_j e^{Λ_t − Λ_j}
    e_mat = torch.exp((lam_cum[..., :, None] - lam_cum[..., None, :]).masked_fill(~incl, neg_inf)) * eta[..., None, :]

    use_mom = beta != 0.0
    beta_t = torch.tensor(beta, dtype=dt, device=eta.device)
    if use_mom:
        f_mat = torch.where(strict, beta_t ** (idx[:, None] - idx[None, :]).clamp_min(0).to(dt), torch.zeros((), dtype=dt))
        kappa = e_mat @ f_mat                                         # κ_{t,s}
        rho = e_mat @ beta_t ** (idx + 1).to(dt)                      # ρ_t = Σ_{j≤t} e^{Λ_t−Λ_j} η_j β^j
        rho_prev = torch.cat([torch.zeros_like(rho[..., :1]), rho[..., :-1]], dim=-1)       # ρ_{t−1}
        kappa_prev = torch.cat([torch.zeros_like(kappa[..., :1, :]), kappa[..., :-1, :]], dim=-2)  # κ_{t−1,s}
    mom_weights = beta_t ** (n - 1 - idx).to(dt)                      # β^{n−t}

    dgd = cfg.dgd
    if dgd:
        lam = eta                                                     # λ_t = η_t (§2.5)
        # e^{Λ_{t−1} − Λ_s} for s < t (a product of α's over s+1..t−1)
        decay_ts = torch.exp((lam_prev[..., :, None] - lam_cum[..., None, :]).masked_fill(~strict, neg_inf))
        gamma_prev = torch.exp(lam_prev)                              # γ_{t−1}

    new_ws, new_ms = [], []
    for w, m, (u, z) in zip(ws, ms, factors):
        z = z.expand(*u.shape[:-1], z.shape[-1])                      # Ẑ rows ẑ_tᵀ  [G, B, H, n, d_in]
        rhs = -eta[..., None] * u                                     # −diag(η) U
        if dgd:
            gram = z @ _t(z)                                          # ⟨ẑ_s, ẑ_t⟩
            phi = lam[..., :, None] * decay_ts * gram                 # Φ (strictly lower)
            rhs = rhs - (lam * gamma_prev)[..., None] * (z @ _t(w))   # − diag(λγ_{t−1}) Ẑ W_startᵀ
            if use_mom:
                rhs = rhs + (lam * rho_prev)[..., None] * (z @ _t(m))  # + diag(λρ_{t−1}) Ẑ m_startᵀ
                rhs = rhs + (lam[..., :, None] * kappa_prev * gram) @ u  # + Ψ U
            # (I + Φ) R = rhs: unit lower-triangular forward substitution (§3.4)
            r = torch.linalg.solve_triangular(phi, rhs, upper=False, unitriangular=True)
        else:
            r = rhs                                                   # Φ = Ψ = 0: r_t = −η_t u_t
        written = to_end[..., None] * r                               # diag(e^{Λ_n−Λ_t}) R
        if use_mom:
            written = written - kappa[..., n - 1, :, None] * u        # − diag(κ_{n,t}) U
        w_end = gamma_end[..., None, None] * w + _t(written) @ z      # Γ W_start + (…)ᵀ Ẑ
        if use_mom:
            w_end = w_end - rho[..., n - 1, None, None] * m           # − ρ_n m_start
        m_end = (beta ** n) * m + _t(mom_weights[:, None] * u) @ z    # β^n m_start + Uᵀ diag(β^{n−t}) Ẑ
        new_ws.append(w_end)
        new_ms.append(m_end)
    return new_ws, new_ms


def wy_factor(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """T of the compact WY/UT form Π_t (I − b_t ẑ_t ẑ_tᵀ) = I − Ẑᵀ T Ẑ (hope_math §3.4), upper triangular.

    T = (I + diag(b) triu₁(ẐẐᵀ))⁻¹ diag(b). z: [..., n, d], b: [..., n]. Used by tests (§8 row 2).
    """
    n = z.shape[-2]
    a = b[..., :, None] * torch.triu(z @ _t(z), diagonal=1)
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    return torch.linalg.solve_triangular(eye + a, torch.diag_embed(b), upper=True)
