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

from typing import List, Optional, Sequence, Tuple

import torch

from .config import TitansOpConfig
from .memory_mlp import clip_scale


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _flat(x: torch.Tensor, lead) -> torch.Tensor:
    """[*lead, a, b] (x may broadcast over lead) -> [N, a, b]."""
    return x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-matrix Frobenius inner product ⟨x_i, y_i⟩ of contiguous [N, a, b] tensors (one fused reduction)."""
    return torch.linalg.vecdot(x.flatten(1), y.flatten(1))


class _ChunkWrite(torch.autograd.Function):
    """The state-sized end of a chunk write, fused, with its own backward (hope_math §2.5, §3.4, §3.5, §2.8).

    Per layer l of a group, on flattened leading dims N = (memories, sequences, heads):
      ΔW_l = g W_l − r m_l + A_lᵀ Ẑ_l           g = Γ − 1, r = ρ_n (None without momentum), A_l = written rows
      W_l' = W_l + f ΔW_l,  f = min(1, c / ‖(ΔW_1, ΔW_2)‖_F)   (per-chunk clip; f ≡ 1 with c = ∞)
      m_l' = β^n m_l + B_lᵀ Ẑ_l                  B_l = diag(β^{n−t}) U_l
    Autograd through the unfused form keeps and revisits several state-sized temporaries per layer; here each
    state-sized tensor is touched a fixed few times and the gate gradients ⟨·,·⟩ are single reductions.
    Saved: W, m and W' (all alive anyway as boundary states), the O(n·d) factors, and per-head scalars. The
    backward needs the applied write fΔW only where the clip is active, and takes it as W' − W.
    """

    @staticmethod
    def forward(ctx, c_clip, beta_n, n_layers, g, r, *tensors):
        ws, ms, as_, bs, zs = (tensors[i * n_layers:(i + 1) * n_layers] for i in range(5))
        g3 = g[:, None, None]
        deltas = []
        for w, m, a, z in zip(ws, ms, as_, zs):
            d = torch.bmm(a.transpose(1, 2), z).addcmul_(g3, w)               # Aᵀ Ẑ + g W
            if r is not None:
                d.addcmul_(r[:, None, None], m, value=-1.0)                    # − r m
            deltas.append(d)
        f, norm = clip_scale(deltas, c_clip) if c_clip != float("inf") else (None, None)  # f ≡ 1 when inactive
        # W' = W + f ΔW, written over ΔW's buffer (no further state-sized allocation)
        new_ws = [torch.addcmul(w, f[:, None, None], d, out=d) if f is not None else d.add_(w)
                  for w, d in zip(ws, deltas)]
        new_ms = [torch.bmm(b.transpose(1, 2), z) for b, z in zip(bs, zs)]   # Bᵀ Ẑ
        if beta_n != 0.0:
            new_ms = [nm.add_(m, alpha=beta_n) for nm, m in zip(new_ms, ms)]  # + β^n m
        ctx.c_clip, ctx.beta_n, ctx.n_layers, ctx.has_r = c_clip, beta_n, n_layers, r is not None
        empty = g.new_empty(0)
        ctx.save_for_backward(g, r if r is not None else empty, f if f is not None else empty,
                              norm if norm is not None else empty, *ws, *ms, *as_, *bs, *zs, *new_ws)
        return (*new_ws, *new_ms)

    @staticmethod
    def backward(ctx, *grads):
        nl = ctx.n_layers
        g, r, f, norm, *rest = ctx.saved_tensors
        ws, ms, as_, bs, zs, new_ws = (rest[i * nl:(i + 1) * nl] for i in range(6))
        # incoming gradients are often transposed views (from the next chunk's W @ ·ᵀ reads); one copy each
        # here makes every state-sized op below run on contiguous memory (strided ones are ~5× slower on CPU)
        gws, gms = [gw.contiguous() for gw in grads[:nl]], [gm.contiguous() for gm in grads[nl:]]
        if f.numel():
            # W' = W + fΔ. Where the clip is active (f = c/‖Δ‖) ∂W'/∂Δ adds −(f/‖Δ‖²) Δ ⟨G_W', Δ⟩, which in terms
            # of the applied write Δ̃ = fΔ = W' − W is −Δ̃ ⟨G_W', Δ̃⟩ / (c ‖Δ‖); where f is clamped to 1, nothing.
            f3 = f[:, None, None]
            gds = [gw * f3 for gw in gws]
            active = norm > ctx.c_clip
            applied = [nw - w for nw, w in zip(new_ws, ws)]
            coef = torch.where(active, sum(_dot(gw, d) for gw, d in zip(gws, applied)) / (ctx.c_clip * norm),
                               torch.zeros_like(f))[:, None, None]
            gds = [gd.addcmul_(coef, d, value=-1.0) for gd, d in zip(gds, applied)]
        else:
            gds = gws
        g3 = g[:, None, None]
        out_w = [torch.addcmul(gw, g3, gd) for gw, gd in zip(gws, gds)]       # ∂/∂W = G_W' + g G_Δ
        out_m = [gm * ctx.beta_n for gm in gms]                                # ∂/∂m = β^n G_m' (− r G_Δ)
        grad_r = None
        if ctx.has_r:
            out_m = [om.addcmul_(r[:, None, None], gd, value=-1.0) for om, gd in zip(out_m, gds)]
            grad_r = -sum(_dot(gd, m) for gd, m in zip(gds, ms))
        grad_g = sum(_dot(gd, w) for gd, w in zip(gds, ws))
        out_a = [torch.bmm(z, gd.transpose(1, 2)) for z, gd in zip(zs, gds)]   # ∂/∂A = Ẑ G_Δᵀ
        out_b = [torch.bmm(z, gm.transpose(1, 2)) for z, gm in zip(zs, gms)]   # ∂/∂B = Ẑ G_m'ᵀ
        out_z = [torch.baddbmm(torch.bmm(a, gd), b, gm) for a, b, gd, gm in zip(as_, bs, gds, gms)]  # A G_Δ + B G_m'
        return (None, None, None, grad_g, grad_r, *out_w, *out_m, *out_a, *out_b, *out_z)


def _chunk_write(ws, ms, written, mom_u, zs, g, r, beta_n: float, c_clip: float):
    """Apply _ChunkWrite over any leading dims: returns ([W_l'], [m_l'])."""
    lead = ws[0].shape[:-2]
    nl = len(ws)
    flat = [_flat(t, lead) for t in (*ws, *ms, *written, *mom_u, *zs)]
    gf = g.expand(lead).reshape(-1)
    rf = r.expand(lead).reshape(-1) if r is not None else None
    out = _ChunkWrite.apply(c_clip, beta_n, nl, gf, rf, *flat)
    return ([o.view(w.shape) for o, w in zip(out[:nl], ws)], [o.view(m.shape) for o, m in zip(out[nl:], ms)])


def advance_chunk(ws: Sequence[torch.Tensor], ms: Sequence[torch.Tensor],
                  factors: Sequence[Tuple[torch.Tensor, torch.Tensor]], eta: torch.Tensor,
                  log_alpha: torch.Tensor, cfg: TitansOpConfig,
                  c_clip: float = float("inf"),
                  zw: Optional[Sequence[torch.Tensor]] = None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Same contract as naive.advance_token_loop, computed in closed form (hope_math §3.4, §3.5).

    With a finite c_clip the chunk's write is clipped as well (§2.5, fused into the same op); the default
    ∞ gives exactly the unclipped W_end of the token loop. zw: Ẑ W_startᵀ per layer when the caller already
    has it (memory_mlp.boundary_terms), saving one state-sized matmul and its gradient per layer.
    """
    beta, n, dt = cfg.momentum, eta.shape[-1], eta.dtype
    idx = torch.arange(n, device=eta.device)
    strict = idx[:, None] > idx[None, :]          # s < t
    incl = idx[:, None] >= idx[None, :]           # s ≤ t
    neg_inf = float("-inf")

    lam_cum = torch.cumsum(log_alpha, dim=-1)     # Λ_t
    lam_prev = lam_cum - log_alpha                # Λ_{t−1}
    gamma_end_m1 = torch.expm1(lam_cum[..., -1])  # Γ − 1 = e^{Λ_n} − 1
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

    written_all, mom_u_all, zs = [], [], []
    for i, (w, m, (u, z)) in enumerate(zip(ws, ms, factors)):
        z = z.expand(*u.shape[:-1], z.shape[-1])                      # Ẑ rows ẑ_tᵀ  [G, B, H, n, d_in]
        rhs = -eta[..., None] * u                                     # −diag(η) U
        if dgd:
            gram = z @ _t(z)                                          # ⟨ẑ_s, ẑ_t⟩
            phi = lam[..., :, None] * decay_ts * gram                 # Φ (strictly lower)
            z_w = zw[i] if zw is not None else z @ _t(w)              # Ẑ W_startᵀ
            rhs = rhs - (lam * gamma_prev)[..., None] * z_w           # − diag(λγ_{t−1}) Ẑ W_startᵀ
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
        written_all.append(written)
        mom_u_all.append(mom_weights[:, None] * u)                    # diag(β^{n−t}) U
        zs.append(z)
    # W_end = W_start + (Γ − 1) W_start − ρ_n m_start + (…)ᵀ Ẑ;  m_end = β^n m_start + Uᵀ diag(β^{n−t}) Ẑ
    return _chunk_write(ws, ms, written_all, mom_u_all, zs, gamma_end_m1, rho[..., n - 1] if use_mom else None,
                        beta ** n, c_clip)


def wy_factor(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """T of the compact WY/UT form Π_t (I − b_t ẑ_t ẑ_tᵀ) = I − Ẑᵀ T Ẑ (hope_math §3.4), upper triangular.

    T = (I + diag(b) triu₁(ẐẐᵀ))⁻¹ diag(b). z: [..., n, d], b: [..., n]. Used by tests (§8 row 2).
    """
    n = z.shape[-2]
    a = b[..., :, None] * torch.triu(z @ _t(z), diagonal=1)
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    return torch.linalg.solve_triangular(eye + a, torch.diag_embed(b), upper=True)
