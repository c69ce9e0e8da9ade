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
and no solve is needed. The unit-triangular system is solved with its inverse (I + Φ)⁻¹, a finite product of
log₂ n batched matmuls (_unit_lower_inverse), which the backward reuses. The inverse, Λ and all gate ratios run in
the state dtype (fp32, or fp64 when the inputs are fp64; §3.7).

Split of the work: the gates (everything built from η and log α alone: [B, H, n] vectors and [B, H, n, n]
matrices) are computed with autograd in advance_chunk; everything with a d-sized axis (Gram matrices, the inverse,
the written rows, the state write and the clip) is one autograd Function, _ChunkStep, whose backward is written by
hand (derivation in its docstring). Autograd over that part would keep and revisit ~20 O(n·d) temporaries per
layer and accumulate the state-sized gradients piecewise.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .config import TitansOpConfig
from .memory_mlp import clip_scale


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _dot(x: torch.Tensor, y: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Per-matrix Frobenius inner product ⟨x_i, y_i⟩ over the last two dims; the product goes to a reused
    state-sized scratch buffer (linalg.vecdot allocates a fresh one per call and measured ~2× slower on CPU)."""
    return torch.mul(x, y, out=scratch).sum((-2, -1))


def _rowdot(x: torch.Tensor, y: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Σ_memories ⟨x_t, y_t⟩ per (head, token): the gradient of a per-token gate from [G, N, n, d] factors."""
    return torch.mul(x, y, out=scratch).sum(-1).sum(0)


def _f3(x: torch.Tensor) -> torch.Tensor:
    """[G, N, a, b] → [G·N, a, b] for bmm/baddbmm (a view for every layout used here, transposed ones included)."""
    return x.flatten(0, 1)


def _full(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x [1 or G, N, a, b] with the memory axis of `like` (a contiguous copy only when x is shared by all G)."""
    return x if x.shape[0] == like.shape[0] else x.expand(like.shape[0], *x.shape[1:]).contiguous()


def _mom_weights(beta: float, n: int, like: torch.Tensor) -> torch.Tensor:
    """β^{n−t} for the chunk's tokens t = 1..n, as a column [n, 1] in like's dtype (§3.5)."""
    return (beta ** torch.arange(n - 1, -1, -1, device=like.device, dtype=like.dtype))[:, None]


def _written_rows(rr, u, e_out, k_out):
    """A = diag(e^{Λ_n−Λ_t}) R − diag(κ_{n,t}) U (k_out = −κ_{n,t}; None without momentum): the rows written to W."""
    a = rr * e_out[..., None]
    return a.addcmul_(k_out[..., None], u) if k_out is not None else a


_GATES = ("c_u", "c_w", "c_m", "p", "q", "e_out", "k_out")


def _unit_lower_inverse(low: torch.Tensor) -> torch.Tensor:
    """(I + L)⁻¹ for L = the strictly lower part of `low` [..., n, n] (like a unit-triangular solve, the diagonal
    and upper part are never read).

    L is nilpotent (Lⁿ = 0), so (I + L)⁻¹ = Σ_{k<n} (−L)^k = (I − L)(I + L²)(I + L⁴)⋯(I + L^{2^j}) with 2^{j+1} ≥ n:
    2·⌈log₂ n⌉ − 2 batched n×n matmuls for n ≥ 2. For the chunk's 16×16 systems this measured ~3× faster than a batched
    triangular solve on CPU (MKL solves matrix by matrix), and the backward applies the same inverse transposed
    with one matmul instead of a second solve. Products of strictly lower matrices stay exactly zero on and above
    the diagonal, so the result is exactly unit lower triangular.
    """
    n = low.shape[-1]
    lf = torch.tril(low.reshape(-1, n, n), diagonal=-1)
    inv = torch.eye(n, dtype=low.dtype, device=low.device) - lf        # Σ_{k<2} (−L)^k
    power, covered = lf, 2
    while covered < n:
        power = torch.bmm(power, power)                                  # L^{covered}
        inv = torch.baddbmm(inv, inv, power)                             # · (I + L^{covered}): Σ_{k<2·covered}
        covered *= 2
    return inv.view(low.shape)


def _sum_to(x: torch.Tensor, lead: int) -> torch.Tensor:
    """Reduce the memory axis of x [G, …] to `lead` (1 for an input shared by all memories, e.g. k̂)."""
    return x.sum(0, keepdim=True) if lead == 1 and x.shape[0] != 1 else x


class _ChunkStep(torch.autograd.Function):
    """One chunk's state advance and write for a group of memories, with its own backward (hope_math §3.4, §3.5,
    §2.5, §2.8).

    Shapes: G memories, N = B·H sequence-heads, n tokens. Per layer: W, m [G, N, o, i]; U [G, N, n, o];
    Ẑ [Gz, N, n, i] with Gz ∈ {1, G} (ĥ differs per memory, k̂ is shared); ẐWᵀ [G, N, n, o] or None (then computed
    here). Gates, shared by every memory and layer of a head: c_u = −η, c_w = −λγ_{t−1}, c_m = λρ_{t−1},
    e_out = e^{Λ_n−Λ_t}, k_out = −κ_{n,t} ([N, n]); P = λ_t e^{Λ_{t−1}−Λ_s}, Q = λ_t κ_{t−1,s} ([N, n, n], strictly
    lower); g = Γ − 1, r = ρ_n ([N]). Forward, per layer (the clip couples the layers of one memory):

      S = ẐẐᵀ,  (I + P⊙S) R = c_u⊙U + c_w⊙ẐWᵀ + c_m⊙Ẑmᵀ + (Q⊙S) U        (written rows; R = (I + P⊙S)⁻¹ rhs)
      A = e_out⊙R + k_out⊙U,  Δ = AᵀẐ + gW − r m,  W' = W + fΔ,  f = min(1, c/‖(Δ₁, Δ₂)‖_F)
      m' = β^n m + (β^{n−t}⊙U)ᵀ Ẑ

    Backward, from G_W', G_m' (G_X = ∂L/∂X; ⊙ with an [N, n] gate scales rows):
      G_Δ = f G_W' − [clip active] Δ̃ ⟨G_W', Δ̃⟩ / (c‖Δ‖) with Δ̃ = W' − W;  G_W = G_W' + g G_Δ (+ terms below),
      G_m = β^n G_m' − r G_Δ,  G_g = Σ⟨G_Δ, W⟩,  G_r = −Σ⟨G_Δ, m⟩
      G_A = Ẑ G_Δᵀ,  G_Ẑ = A G_Δ + (β^{n−t}⊙U) G_m',  G_U = β^{n−t}⊙Ẑ G_m'ᵀ + k_out⊙G_A,  G_R = e_out⊙G_A
      G_rhs = (I + P⊙S)⁻ᵀ G_R  (the forward's inverse, transposed),  G_(P⊙S) = −tril₋₁(G_rhs Rᵀ)
      G_U += c_u⊙G_rhs + (Q⊙S)ᵀ G_rhs,  G_(Q⊙S) = G_rhs Uᵀ,  G_ẐWᵀ = c_w⊙G_rhs,
      G_(Ẑmᵀ) = c_m⊙G_rhs → G_Ẑ += G_(Ẑmᵀ) m, G_m += G_(Ẑmᵀ)ᵀ Ẑ
      G_S = P⊙G_(P⊙S) + Q⊙G_(Q⊙S) → G_Ẑ += (G_S + G_Sᵀ) Ẑ;  G_P = Σ_G S⊙G_(P⊙S), G_Q = Σ_G S⊙G_(Q⊙S)
      each row gate's gradient is Σ over memories and the row of (its factor ⊙ the gradient it scales).
    Saved: W, m and W' (alive anyway as boundary states) and O(n·d) factors per layer (U, Ẑ, ẐWᵀ, R, Ẑmᵀ; A is
    rebuilt from R) with the n×n S and (I + P⊙S)⁻¹; nothing else state-sized.
    The backward needs the applied write fΔ only where the clip is active, and takes it as W' − W. With the clip on,
    the two state-sized temporaries it allocates per layer (W' − W and G_Δ) are reused as the buffers of the
    returned G_W and G_m, so a chunk's backward allocates two state-sized tensors per layer, not four.
    """

    @staticmethod
    def forward(ctx, spec, c_u, c_w, c_m, p, q, e_out, k_out, g, r, *tensors):
        nl, dgd, mom, beta, c_clip = spec
        ws, ms, us, zs, zws = (list(tensors[i * nl:(i + 1) * nl]) for i in range(5))
        n = us[0].shape[-2]
        mw = _mom_weights(beta, n, g)                                         # β^{n−t}
        g3 = g[:, None, None]
        r3 = r[:, None, None] if mom else None
        keep, deltas, new_ms = [], [], []
        for li, (w, m, u, z) in enumerate(zip(ws, ms, us, zs)):
            ze = _full(z, u)                                                  # Ẑ per memory (one copy if shared)
            rhs = u * c_u[..., None]                                          # −diag(η) U
            gram = zm = inv = None
            if dgd:
                gram = z @ _t(z)                                              # S = ẐẐᵀ (once if shared)
                # state-sized products as bmm over [G·N] views: matmul on the 4-d transposed W copied it first
                if zws[li] is None:
                    zws[li] = torch.bmm(_f3(ze), _f3(_t(w))).view(u.shape)    # Ẑ W_startᵀ
                rhs.addcmul_(c_w[..., None], zws[li])                         # − diag(λγ_{t−1}) Ẑ W_startᵀ
                if mom:
                    zm = torch.bmm(_f3(ze), _f3(_t(m))).view(u.shape)
                    rhs.addcmul_(c_m[..., None], zm)                          # + diag(λρ_{t−1}) Ẑ m_startᵀ
                    _f3(rhs).baddbmm_(_f3(_full(q * gram, u)), _f3(u))        # + Ψ U
                inv = _full(_unit_lower_inverse(p * gram), u)                 # (I + Φ)⁻¹ (once if Ẑ is shared)
                rr = torch.bmm(_f3(inv), _f3(rhs)).view(u.shape)              # R = (I + Φ)⁻¹ rhs
            else:
                rr = rhs                                                      # Φ = Ψ = 0: r_t = −η_t u_t
            a = _written_rows(rr, u, e_out, k_out if mom else None)
            d = torch.bmm(_f3(_t(a)), _f3(ze)).view(w.shape).addcmul_(g3, w)  # AᵀẐ + (Γ − 1) W
            if mom:
                d.addcmul_(r3, m, value=-1.0)                                 # − ρ_n m
            deltas.append(d)
            # m' = β^n m + Uᵀ diag(β^{n−t}) Ẑ, the scale of m riding on the matmul's output pass
            new_ms.append(torch.baddbmm(_f3(m), _f3(_t(u * mw)), _f3(ze), beta=beta ** n).view(m.shape))
            keep.append((rr, gram, zm, inv))                                  # A is rebuilt from R in the backward
        f, norm = clip_scale(deltas, c_clip) if c_clip != float("inf") else (None, None)   # f ≡ 1 when inactive
        # W' = W + f ΔW, written over ΔW's buffer (no further state-sized allocation)
        new_ws = [torch.addcmul(w, f[..., None, None], d, out=d) if f is not None else d.add_(w)
                  for w, d in zip(ws, deltas)]
        ctx.spec, ctx.zw_given = spec, [t is not None for t in tensors[4 * nl:5 * nl]]
        empty = g.new_empty(0)
        opt = lambda t: empty if t is None else t  # noqa: E731
        ctx.save_for_backward(c_u, opt(c_w), opt(c_m), opt(p), opt(q), e_out, opt(k_out), g, opt(r),
                              opt(f), opt(norm), *ws, *ms, *new_ws, *us, *zs, *[opt(t) for t in zws],
                              *[opt(t) for kp in keep for t in kp])
        return (*new_ws, *new_ms)

    @staticmethod
    def backward(ctx, *grads):
        nl, dgd, mom, beta, c_clip = ctx.spec
        c_u, c_w, c_m, p, q, e_out, k_out, g, r, f, norm, *rest = ctx.saved_tensors
        ws, ms, new_ws, us, zs, zws = (rest[i * nl:(i + 1) * nl] for i in range(6))
        keep = [rest[6 * nl + 4 * li:6 * nl + 4 * li + 4] for li in range(nl)]
        n = us[0].shape[-2]
        mw = _mom_weights(beta, n, g)
        # the reads hand back contiguous weight gradients (memory_mlp.zwt); a caller's strided view is copied once
        # so that every state-sized op below runs on contiguous memory (strided ones are ~5× slower on CPU)
        gws, gms = [x.contiguous() for x in grads[:nl]], [x.contiguous() for x in grads[nl:]]
        # reused scratch for the products behind every ⟨·,·⟩ (one state-sized, one O(n·d) per shape)
        scratch: dict = {}

        def buf(x):
            if x.shape not in scratch:
                scratch[x.shape] = torch.empty_like(x)
            return scratch[x.shape]

        dot = lambda x, y: _dot(x, y, buf(x))  # noqa: E731
        rowdot = lambda x, y: _rowdot(x, y, buf(x))  # noqa: E731
        if f.numel():
            # W' = W + fΔ. Where the clip is active (f = c/‖Δ‖) ∂W'/∂Δ adds −(f/‖Δ‖²) Δ ⟨G_W', Δ⟩, which in terms
            # of the applied write Δ̃ = fΔ = W' − W is −Δ̃ ⟨G_W', Δ̃⟩ / (c ‖Δ‖); where f is clamped to 1, nothing.
            applied = [nw - w for nw, w in zip(new_ws, ws)]
            coef = torch.where(norm > c_clip, sum(dot(gw, d) for gw, d in zip(gws, applied)) / (c_clip * norm),
                               torch.zeros_like(f))[..., None, None]
            gds = [torch.mul(gw, f[..., None, None]).addcmul_(coef, d, value=-1.0) for gw, d in zip(gws, applied)]
            spare, own = applied, True              # W' − W is dead from here: it becomes G_W; G_Δ becomes G_m
        else:
            gds, spare, own = gws, [None] * nl, False                          # G_Δ = G_W' is the caller's buffer
        g3 = g[:, None, None]
        out_w = [torch.addcmul(gw, g3, gd, out=sp) if sp is not None else torch.addcmul(gw, g3, gd)
                 for gw, gd, sp in zip(gws, gds, spare)]                       # G_W = G_W' + g G_Δ
        del spare
        grad_g = sum(dot(gd, w) for gd, w in zip(gds, ws)).sum(0)
        grad_r = -sum(dot(gd, m) for gd, m in zip(gds, ms)).sum(0) if mom else None
        out_m = []
        grad = {k: 0 for k in _GATES}
        out_u, out_z, out_zw = [], [], []
        for li in range(nl):
            w, m, u, z, gd, gm = ws[li], ms[li], us[li], zs[li], gds[li], gms[li]
            rr, gram, zm, inv = keep[li]
            a = _written_rows(rr, u, e_out, k_out if mom else None)
            ze = _full(z, u)
            g_a = torch.bmm(_f3(ze), _f3(_t(gd))).view(u.shape)               # G_A = Ẑ G_Δᵀ
            g_z = torch.bmm(_f3(a), _f3(gd))                                   # G_Ẑ = A G_Δ + (β^{n−t}⊙U) G_m'
            g_z.baddbmm_(_f3(u * mw), _f3(gm))
            g_z = g_z.view(ze.shape)
            g_u = torch.bmm(_f3(ze), _f3(_t(gm))).view(u.shape).mul_(mw)       # β^{n−t} ⊙ Ẑ G_m'ᵀ
            if mom:
                grad["k_out"] = grad["k_out"] + rowdot(u, g_a)
                g_u.addcmul_(k_out[..., None], g_a)
            grad["e_out"] = grad["e_out"] + rowdot(rr, g_a)
            g_rhs = g_a.mul_(e_out[..., None])                                 # G_R (G_A's buffer is free now)
            g_zw = None
            if dgd:
                g_rhs = torch.bmm(_f3(_t(inv)), _f3(g_rhs)).view(u.shape)     # (I + Φ)⁻ᵀ G_R
                g_ps = torch.bmm(_f3(g_rhs), _f3(_t(rr))).view(inv.shape).tril_(-1).neg_()  # G_(P⊙S), strictly lower
                grad["p"] = grad["p"] + (g_ps * gram).sum(0)
                g_gram = g_ps.mul_(p)
                grad["c_w"] = grad["c_w"] + rowdot(zws[li], g_rhs)
                g_zw = g_rhs * c_w[..., None]                                  # G_(ẐWᵀ)
                if mom:
                    grad["c_m"] = grad["c_m"] + rowdot(zm, g_rhs)
                    g_zm = g_rhs * c_m[..., None]
                    _f3(g_z).baddbmm_(_f3(g_zm), _f3(m))
                    g_qs = torch.bmm(_f3(g_rhs), _f3(_t(u))).view(inv.shape)  # G_(Q⊙S)
                    _f3(g_u).baddbmm_(_f3(_full(_t(q * gram), u)), _f3(g_rhs))
                    grad["q"] = grad["q"] + (g_qs * gram).sum(0)
                    g_gram.addcmul_(g_qs, q)
                if not ctx.zw_given[li]:                                       # ẐWᵀ was computed here
                    _f3(g_z).baddbmm_(_f3(g_zw), _f3(w))
                    _f3(out_w[li]).baddbmm_(_f3(_t(g_zw)), _f3(ze))
                    g_zw = None
                g_gram = _sum_to(g_gram, z.shape[0])
                g_z = _sum_to(g_z, z.shape[0])
                _f3(g_z).baddbmm_(_f3(g_gram + _t(g_gram)), _f3(z))            # S = ẐẐᵀ is symmetric
            else:
                g_z = _sum_to(g_z, z.shape[0])
            # G_m = β^n G_m' − r G_Δ (+ G_(Ẑmᵀ)ᵀ Ẑ), in G_Δ's buffer when it is ours (its last use was above)
            om = gd if own else torch.empty_like(gd)
            if mom:
                torch.mul(gd, -r[:, None, None], out=om).add_(gm, alpha=beta ** n)
                if dgd:
                    _f3(om).baddbmm_(_f3(_t(g_zm)), _f3(ze))
            else:
                torch.mul(gm, beta ** n, out=om)
            out_m.append(om)
            grad["c_u"] = grad["c_u"] + rowdot(u, g_rhs)
            g_u.addcmul_(c_u[..., None], g_rhs)
            out_u.append(g_u)
            out_z.append(g_z)
            out_zw.append(g_zw)
        gates = [grad[k] if isinstance(grad[k], torch.Tensor) else None for k in _GATES]
        return (None, *gates, grad_g, grad_r, *out_w, *out_m, *out_u, *out_z, *out_zw)


def advance_chunk(ws: Sequence[torch.Tensor], ms: Sequence[torch.Tensor],
                  factors: Sequence[Tuple[torch.Tensor, torch.Tensor]], eta: torch.Tensor,
                  log_alpha: torch.Tensor, cfg: TitansOpConfig,
                  c_clip: float = float("inf"),
                  zw: Optional[Sequence[torch.Tensor]] = None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Same contract as naive.advance_token_loop, computed in closed form (hope_math §3.4, §3.5).

    ws, ms: per layer [G, *batch, d_out, d_in]; factors: per layer (u [G, *batch, n, d_out], ẑ [G or absent,
    *batch, n, d_in]); eta, log_alpha [*batch, n]. With a finite c_clip the chunk's write is clipped as well
    (§2.5, fused into the same op); the default ∞ gives exactly the unclipped W_end of the token loop. zw: Ẑ W_startᵀ
    per layer when the caller already has it (memory_mlp.boundary_terms), saving one state-sized matmul per layer.
    """
    beta, n, dt = cfg.momentum, eta.shape[-1], eta.dtype
    idx = torch.arange(n, device=eta.device)
    strict = idx[:, None] > idx[None, :]          # s < t
    incl = idx[:, None] >= idx[None, :]           # s ≤ t
    neg_inf = float("-inf")
    use_mom, dgd = beta != 0.0, cfg.dgd

    # ---- gates: functions of η and log α only, [*batch, n] and [*batch, n, n] (autograd) ----
    lam_cum = torch.cumsum(log_alpha, dim=-1)     # Λ_t
    lam_prev = lam_cum - log_alpha                # Λ_{t−1}
    gamma_end_m1 = torch.expm1(lam_cum[..., -1])  # g = Γ − 1 = e^{Λ_n} − 1
    to_end = torch.exp(lam_cum[..., -1:] - lam_cum)  # e^{Λ_n − Λ_t}
    c_w = c_m = p = q = k_out = rho_n = None
    if use_mom:
        # E[t, j] = [j ≤ t] η_j e^{Λ_t − Λ_j};  F[j, s] = [s < j] β^{j−s}
        e_mat = torch.exp((lam_cum[..., :, None] - lam_cum[..., None, :]).masked_fill(~incl, neg_inf)) * eta[..., None, :]
        beta_t = torch.tensor(beta, dtype=dt, device=eta.device)
        f_mat = torch.where(strict, beta_t ** (idx[:, None] - idx[None, :]).clamp_min(0).to(dt), torch.zeros((), dtype=dt))
        kappa = e_mat @ f_mat                                         # κ_{t,s}
        rho = e_mat @ beta_t ** (idx + 1).to(dt)                      # ρ_t = Σ_{j≤t} e^{Λ_t−Λ_j} η_j β^j
        rho_n = rho[..., n - 1]
        k_out = -kappa[..., n - 1, :]                                 # − κ_{n,t}
    if dgd:
        lam = eta                                                     # λ_t = η_t (§2.5)
        # P_ts = λ_t e^{Λ_{t−1} − Λ_s} for s < t (a product of α's over s+1..t−1), so Φ = P ⊙ ẐẐᵀ
        p = lam[..., :, None] * torch.exp((lam_prev[..., :, None] - lam_cum[..., None, :]).masked_fill(~strict, neg_inf))
        c_w = -lam * torch.exp(lam_prev)                              # − λ_t γ_{t−1}
        if use_mom:
            rho_prev = torch.cat([torch.zeros_like(rho[..., :1]), rho[..., :-1]], dim=-1)       # ρ_{t−1}
            kappa_prev = torch.cat([torch.zeros_like(kappa[..., :1, :]), kappa[..., :-1, :]], dim=-2)  # κ_{t−1,s}
            c_m = lam * rho_prev                                      # + λ_t ρ_{t−1}
            q = lam[..., :, None] * kappa_prev                        # Ψ = Q ⊙ ẐẐᵀ

    # ---- everything with a d axis: one Function over [G, N = Π batch, …] ----
    batch = eta.shape[:-1]
    if tuple(ws[0].shape[1:-2]) != tuple(batch):
        raise ValueError(f"advance_chunk: weights {tuple(ws[0].shape)} must be [G, *{tuple(batch)}, d_out, d_in] "
                         "to match eta's batch dims.")
    nb = eta[..., 0].numel()
    flat = lambda x: None if x is None else x.reshape(nb, *x.shape[len(batch):])  # noqa: E731  [*batch, …] → [N, …]
    lead = lambda x: x.reshape(x.shape[0] if x.dim() == len(batch) + 3 else 1, nb, *x.shape[-2:])  # noqa: E731
    nl = len(ws)
    tensors = ([lead(w) for w in ws] + [lead(m) for m in ms] + [lead(u) for u, _ in factors]
               + [lead(z) for _, z in factors] + [lead(t) if t is not None else None for t in (zw or [None] * nl)])
    out = _ChunkStep.apply((nl, dgd, use_mom, beta, c_clip), flat(-eta), flat(c_w), flat(c_m), flat(p), flat(q),
                           flat(to_end), flat(k_out), flat(gamma_end_m1), flat(rho_n), *tensors)
    return [o.view(w.shape) for o, w in zip(out[:nl], ws)], [o.view(m.shape) for o, m in zip(out[nl:], ms)]


def wy_factor(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """T of the compact WY/UT form Π_t (I − b_t ẑ_t ẑ_tᵀ) = I − Ẑᵀ T Ẑ (hope_math §3.4), upper triangular.

    T = (I + diag(b) triu₁(ẐẐᵀ))⁻¹ diag(b). z: [..., n, d], b: [..., n]. Used by tests (§8 row 2).
    """
    n = z.shape[-2]
    a = b[..., :, None] * torch.triu(z @ _t(z), diagonal=1)
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    return torch.linalg.solve_triangular(eye + a, torch.diag_embed(b), upper=True)
