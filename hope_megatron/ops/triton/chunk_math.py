"""Triton device functions for one chunk of one (sequence, head): the math of hope_math §2.3–§2.5 and §3.4–§3.5, forward
and hand-written backward, on register tiles. kernels.py strings them into the persistent chunk loops.

Tiles: per-token tensors are [BC, BD] / [BC, BR] (chunk rows × head width, zero-padded past the chunk's n valid rows
and past d_h); per-token scalars are [BC]; the n×n gate and Gram matrices are [BC, BC]; a weight W of one memory layer
is [BO, BI] (d_out × d_in: W₁ is [BD, BR], W₂ is [BR, BD], a linear memory's W is [BD, BD]). Zero padding is exact:
a padded token row has z = 0, hence a = h = b = e = 0, U = Ẑ = 0, and η = log α = 0, so it writes nothing.

Every formula mirrors ops/chunked.py and ops/memory_mlp.py (the chunked form these kernels are tested against):
  boundary terms (§2.4)  a = kW₂ᵀ, h = σ(a), M(k) = k + hW₁ᵀ, v̂ = M(v) or v, e = 2(M(k) − v̂), δ = (eW₁) ⊙ σ′(a);
                         (U₁, Ẑ₁, ẐW₁ᵀ) = (‖h‖e, h/‖h‖, b/‖h‖), (U₂, Ẑ₂, ẐW₂ᵀ) = (‖k‖δ, k/‖k‖, a/‖k‖)
  gates (§3.4–3.5)       the functions of η and log α alone: c_u, c_w, c_m, P, Q, e_out, k_out, g = Γ − 1, r = ρ_n
  chunk step (§3.4–3.5)  rhs = c_u⊙U + c_w⊙ẐWᵀ + c_m⊙Ẑmᵀ + (Q⊙S)U,  R = (I + P⊙S)⁻¹ rhs,  A = e_out⊙R + k_out⊙U,
                         Δ = AᵀẐ + gW − r m,  m' = βⁿ m + (β^{n−t}⊙U)ᵀẐ
  clip (§2.5)            W' = W + fΔ, f = min(1, c/‖(Δ₁, Δ₂)‖_F)
The backward of each is derived in chunked._ChunkStep's docstring (step and clip) and in the comments below
(boundary terms, gates, reads); every G_X is ∂L/∂X.
"""

from __future__ import annotations

import triton
import triton.language as tl

EPS = tl.constexpr(1e-6)  # ε of ẑ = z / max(‖z‖, ε), memory_mlp.EPS (hope_math §1)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _mm_nt(a, b, PREC: tl.constexpr):
    """a bᵀ"""
    return tl.dot(a, tl.trans(b), input_precision=PREC)


@triton.jit
def _mm_tn(a, b, PREC: tl.constexpr):
    """aᵀ b"""
    return tl.dot(tl.trans(a), b, input_precision=PREC)


@triton.jit
def _silu(a):
    return a * tl.sigmoid(a)


@triton.jit
def _dsilu(a):
    """σ′(a) = s(1 + a(1 − s)) (hope_math §1)."""
    s = tl.sigmoid(a)
    return s * (1 + a * (1 - s))


@triton.jit
def _d2silu(a):
    """σ″(a) = s(1 − s)(2 + a(1 − 2s))."""
    s = tl.sigmoid(a)
    return s * (1 - s) * (2 + a * (1 - 2 * s))


@triton.jit
def _rownorm(x):
    """max(‖x_t‖, ε) per row, and the raw ‖x_t‖ (the clamp passes no gradient below ε)."""
    raw = tl.sqrt(tl.sum(x * x, axis=1))
    return tl.maximum(raw, EPS), raw


@triton.jit
def _l2norm_bwd(g, x, nrm, raw):
    """Backward of x̂ = x / max(‖x‖, ε): G_x = G_x̂/n − x (Σ G_x̂⊙x)/(n²‖x‖) where ‖x‖ > ε."""
    gn = -tl.sum(g * x, axis=1) / (nrm * nrm)
    return g / nrm[:, None] + tl.where(raw > EPS, gn / tl.where(raw > EPS, raw, 1.0), 0.0)[:, None] * x


@triton.jit
def _expm1(x):
    """e^x − 1 without cancellation near 0 (Kahan's u − 1 scaled by x / log u); Γ − 1 = expm1(Λ_n) is ~−0.008 per
    chunk at α ≈ 0.999, where exp(x) − 1 would lose three digits of the state's decay."""
    u = tl.exp(x)
    um1 = u - 1.0
    safe = (um1 != 0.0) & (um1 != -1.0)
    return tl.where(safe, um1 * x / tl.log(tl.where(safe, u, 2.0)), tl.where(um1 == 0.0, x, um1))


@triton.jit
def _log1p(x):
    """log(1 + x) for x ≥ 0 without losing x's digits when x ≪ 1 (Kahan: log(u)·x/(u − 1), u = 1 + x); log α is
    logsigmoid(s) = −log1p(e^{−s}) ≈ −0.001 at the default α_init."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * x / tl.where(u == 1.0, 1.0, u - 1.0))


@triton.jit
def _last(v, BC: tl.constexpr):
    """v[BC − 1]: with η = log α = 0 on padded rows every cumulative gate of the last padded row equals the last
    valid row's (Λ, ρ and κ stop changing), so the chunk-end values are read there."""
    t = tl.arange(0, BC)
    return tl.sum(tl.where(t == BC - 1, v, 0.0), axis=0)


@triton.jit
def _last_row(m, BC: tl.constexpr):
    t = tl.arange(0, BC)
    return tl.sum(tl.where(t[:, None] == BC - 1, m, 0.0), axis=0)


@triton.jit
def _unit_lower_inverse(low, BC: tl.constexpr, LOG2BC: tl.constexpr, PREC: tl.constexpr):
    """(I + L)⁻¹ for L = tril₋₁(low): L is nilpotent, so (I + L)⁻¹ = (I − L)(I + L²)(I + L⁴)… (chunked.py's
    _unit_lower_inverse); LOG2BC − 1 squarings cover every n ≤ BC."""
    t = tl.arange(0, BC)
    lf = tl.where(t[None, :] < t[:, None], low, 0.0)
    inv = tl.where(t[:, None] == t[None, :], 1.0, 0.0) - lf
    power = lf
    for _ in tl.static_range(LOG2BC - 1):
        power = _mm(power, power, PREC)
        inv = inv + _mm(inv, power, PREC)
    return inv


# ---------------------------------------------------------------------------------------------------------- gates
@triton.jit
def _cumsum_rows(v, BC: tl.constexpr):
    """Σ_{s≤t} v_s as a masked sum (n ≤ 64)."""
    t = tl.arange(0, BC)
    return tl.sum(tl.where(t[None, :] <= t[:, None], v[None, :], 0.0), axis=1)


@triton.jit
def _gates(eta, la, n, bpow_ptr, BC: tl.constexpr, DGD: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """Every function of η and log α the chunk step needs (chunked.advance_chunk's gate block, hope_math §3.4–3.5).

    eta, la [BC] (0 past n); bpow_ptr: β^k for k = 0..BC. Returns (c_u, c_w, c_m, P, Q, e_out, k_out, g, r, mw, βⁿ)."""
    t = tl.arange(0, BC)
    incl = t[None, :] <= t[:, None]
    strict = t[None, :] < t[:, None]
    lam = _cumsum_rows(la, BC)                                   # Λ_t
    lam_p = lam - la                                             # Λ_{t−1}
    lam_n = _last(lam, BC)                                       # Λ_n
    g = _expm1(lam_n)                                            # Γ − 1
    e_out = tl.exp(lam_n - lam)                                  # e^{Λ_n − Λ_t}
    c_u = -eta
    valid = t < n
    mw = tl.where(valid, tl.load(bpow_ptr + tl.where(valid, n - 1 - t, 0)), 0.0)   # β^{n−t} (1-based t)
    beta_n = tl.load(bpow_ptr + n)
    zero_v = eta * 0.0
    zero_m = tl.where(strict, 0.0, 0.0) + zero_v[:, None]
    c_w = zero_v
    c_m = zero_v
    k_out = zero_v
    p = zero_m
    q = zero_m
    r = lam_n * 0.0
    if MOM:
        fmat = tl.where(strict, tl.load(bpow_ptr + tl.where(strict, t[:, None] - t[None, :], 0)), 0.0)  # F[j,s]
        bcol = tl.load(bpow_ptr + t + 1)                                                                # β^{j}, 1-based
        e_mat = tl.where(incl, tl.exp(tl.where(incl, lam[:, None] - lam[None, :], 0.0)), 0.0) * eta[None, :]
        kappa = _mm(e_mat, fmat, PREC)                           # κ_{t,s}
        rho = tl.sum(e_mat * bcol[None, :], axis=1)              # ρ_t
        r = _last(rho, BC)
        k_out = -_last_row(kappa, BC)                            # −κ_{n,t}
    if DGD:
        ep = tl.where(strict, tl.exp(tl.where(strict, lam_p[:, None] - lam[None, :], 0.0)), 0.0)   # e^{Λ_{t−1}−Λ_s}
        p = eta[:, None] * ep                                    # P = λ_t e^{Λ_{t−1}−Λ_s}, λ = η
        c_w = -eta * tl.exp(lam_p)                               # −λ_t γ_{t−1}
        if MOM:
            epe = ep * eta[None, :]                              # [s<t] η_s e^{Λ_{t−1}−Λ_s}: row t−1 of E, shifted
            c_m = eta * tl.sum(epe * bcol[None, :], axis=1)      # λ_t ρ_{t−1}
            q = eta[:, None] * _mm(epe, fmat, PREC)              # λ_t κ_{t−1,s}
    return c_u, c_w, c_m, p, q, e_out, k_out, g, r, mw, beta_n


@triton.jit
def _gates_bwd(eta, la, n, bpow_ptr, g_cu, g_cw, g_cm, g_p, g_q, g_eout, g_kout, g_g, g_r,
               BC: tl.constexpr, DGD: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """(G_η, G_logα) [BC] from the gradients of every gate (_gates). Λ_t = Σ_{s≤t} log α_s, Λ_{t−1} = Λ_t − log α_t,
    so G_logα_s = Σ_{t≥s} G_Λ_t − G_Λ{t−1}_s; each exp(Λ_a − Λ_b) entry X sends +X·G to Λ_a and −X·G to Λ_b."""
    t = tl.arange(0, BC)
    incl = t[None, :] <= t[:, None]
    strict = t[None, :] < t[:, None]
    is_last = t == BC - 1
    lam = _cumsum_rows(la, BC)
    lam_p = lam - la
    lam_n = _last(lam, BC)
    e_out = tl.exp(lam_n - lam)
    g_eta = -g_cu
    x = g_eout * e_out
    g_lam = -x + tl.where(is_last, g_g * tl.exp(lam_n) + tl.sum(x, axis=0), 0.0)
    g_lamp = eta * 0.0
    if DGD:
        ep = tl.where(strict, tl.exp(tl.where(strict, lam_p[:, None] - lam[None, :], 0.0)), 0.0)
        gx = g_p * ep                                            # P = η_t ep
        g_eta += tl.sum(gx, axis=1)
        xp = gx * eta[:, None]
        g_lamp += tl.sum(xp, axis=1)
        g_lam -= tl.sum(xp, axis=0)
        c_w = -eta * tl.exp(lam_p)
        g_eta += -g_cw * tl.exp(lam_p)
        g_lamp += g_cw * c_w
    if MOM:
        fmat = tl.where(strict, tl.load(bpow_ptr + tl.where(strict, t[:, None] - t[None, :], 0)), 0.0)
        bcol = tl.load(bpow_ptr + t + 1)
        eexp = tl.where(incl, tl.exp(tl.where(incl, lam[:, None] - lam[None, :], 0.0)), 0.0)
        # κ = E F, ρ = E β^j: k_out = −κ[n, :], r = ρ[n]
        g_kappa = tl.where(is_last[:, None], -g_kout[None, :], 0.0)
        g_rho = tl.where(is_last, g_r, 0.0)
        g_e = _mm_nt(g_kappa, fmat, PREC) + g_rho[:, None] * bcol[None, :]
        if DGD:
            epe = ep * eta[None, :]
            kappa_p = _mm(epe, fmat, PREC)
            rho_p = tl.sum(epe * bcol[None, :], axis=1)
            # c_m = η ρ_{t−1}, Q = η_t κ_{t−1,s}
            g_eta += g_cm * rho_p + tl.sum(g_q * kappa_p, axis=1)
            g_epe = _mm_nt(g_q * eta[:, None], fmat, PREC) + (g_cm * eta)[:, None] * bcol[None, :]
            # epe[t,s] = [s<t] η_s e^{Λ_{t−1}−Λ_s}
            g_eta += tl.sum(g_epe * ep, axis=0)
            y = g_epe * epe
            g_lamp += tl.sum(y, axis=1)
            g_lam -= tl.sum(y, axis=0)
        # E[t,j] = [j≤t] η_j e^{Λ_t−Λ_j}
        g_eta += tl.sum(g_e * eexp, axis=0)
        y = g_e * eexp * eta[None, :]
        g_lam += tl.sum(y, axis=1) - tl.sum(y, axis=0)
    g_lam += g_lamp
    g_la = tl.sum(tl.where(t[:, None] >= t[None, :], g_lam[:, None], 0.0), axis=0) - g_lamp   # Σ_{t≥s} G_Λ_t
    valid = t < n
    return tl.where(valid, g_eta, 0.0), tl.where(valid, g_la, 0.0)


# ----------------------------------------------------------------------------------------------------- chunk step
@triton.jit
def _step_fwd(u, z, zw, w, m, s, inv, c_u, c_w, c_m, q, e_out, k_out, g, r, mw, beta_n,
              DGD: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """One memory layer's closed-form chunk advance before the clip (chunked._ChunkStep.forward): returns
    (Δ = W_end − W_start unclipped, m', R, Ẑmᵀ). s = ẐẐᵀ and inv = (I + P⊙S)⁻¹ come from the caller (shared by the
    memories of a head for the k̂ layer)."""
    rhs = c_u[:, None] * u
    zm = u * 0.0
    if DGD:
        rhs += c_w[:, None] * zw
        if MOM:
            zm = _mm_nt(z, m, PREC)                               # Ẑ m_startᵀ
            rhs += c_m[:, None] * zm + _mm(q * s, u, PREC)        # + diag(λρ_{t−1}) Ẑmᵀ + Ψ U
        rr = _mm(inv, rhs, PREC)                                  # R = (I + Φ)⁻¹ rhs
    else:
        rr = rhs
    a = e_out[:, None] * rr
    if MOM:
        a += k_out[:, None] * u
    delta = _mm_tn(a, z, PREC) + g * w                            # AᵀẐ + (Γ − 1) W
    if MOM:
        delta -= r * m
    m_new = beta_n * m + _mm_tn(mw[:, None] * u, z, PREC)         # βⁿ m + Uᵀ diag(β^{n−t}) Ẑ
    return delta, m_new, rr, zm


@triton.jit
def _step_bwd(g_delta, g_mnew, u, z, zw, m, s, p, inv, rr, zm, c_u, c_w, c_m, q, e_out, k_out, r, mw, beta_n,
              BC: tl.constexpr, DGD: tl.constexpr, MOM: tl.constexpr, PREC: tl.constexpr):
    """Backward of _step_fwd from G_Δ (after the clip's backward) and G_m' (chunked._ChunkStep.backward).

    Returns (G_U, G_Ẑ, G_ẐWᵀ, G_m, G_c_u, G_c_w, G_c_m, G_P, G_Q, G_e_out, G_k_out); G_W's direct terms (G_W' and
    g·G_Δ) and G_g, G_r are the caller's."""
    a = e_out[:, None] * rr
    if MOM:
        a += k_out[:, None] * u
    g_a = _mm_nt(z, g_delta, PREC)                                # G_A = Ẑ G_Δᵀ
    g_z = _mm(a, g_delta, PREC) + _mm(mw[:, None] * u, g_mnew, PREC)   # A G_Δ + (β^{n−t}⊙U) G_m'
    g_u = mw[:, None] * _mm_nt(z, g_mnew, PREC)                   # β^{n−t} ⊙ Ẑ G_m'ᵀ
    g_m = beta_n * g_mnew
    zero_v = c_u * 0.0
    g_kout = zero_v
    g_cw = zero_v
    g_cm = zero_v
    g_p = s * 0.0
    g_q = s * 0.0
    if MOM:
        g_kout = tl.sum(u * g_a, axis=1)
        g_u += k_out[:, None] * g_a
        g_m -= r * g_delta
    g_eout = tl.sum(rr * g_a, axis=1)
    g_rhs = e_out[:, None] * g_a                                  # G_R
    g_zw = u * 0.0
    if DGD:
        g_rhs = _mm_tn(inv, g_rhs, PREC)                          # (I + Φ)⁻ᵀ G_R
        bc = tl.arange(0, BC)
        g_ps = -tl.where(bc[None, :] < bc[:, None], _mm_nt(g_rhs, rr, PREC), 0.0)   # G_(P⊙S), strictly lower
        g_p = g_ps * s
        g_s = g_ps * p
        g_cw = tl.sum(zw * g_rhs, axis=1)
        g_zw = c_w[:, None] * g_rhs
        if MOM:
            g_cm = tl.sum(zm * g_rhs, axis=1)
            g_zm = c_m[:, None] * g_rhs
            g_z += _mm(g_zm, m, PREC)
            g_m += _mm_tn(g_zm, z, PREC)
            g_qs = _mm_nt(g_rhs, u, PREC)                         # G_(Q⊙S)
            g_u += _mm_tn(q * s, g_rhs, PREC)
            g_q = g_qs * s
            g_s += g_qs * q
        g_z += _mm(g_s + tl.trans(g_s), z, PREC)                  # S = ẐẐᵀ is symmetric
    g_cu = tl.sum(u * g_rhs, axis=1)
    g_u += c_u[:, None] * g_rhs
    return g_u, g_z, g_zw, g_m, g_cu, g_cw, g_cm, g_p, g_q, g_eout, g_kout


# ------------------------------------------------------------------------------------------------- boundary terms
@triton.jit
def _boundary_fwd(k, v, w1, w2, SELF: tl.constexpr, PREC: tl.constexpr):
    """Residual-MLP memory (depth 2): the factors of the rank-1 inner gradients at the boundary weights
    (memory_mlp.boundary_terms): (U₁, Ẑ₁, ẐW₁ᵀ, U₂, Ẑ₂, ẐW₂ᵀ) plus what the backward reuses."""
    a = _mm_nt(k, w2, PREC)                                       # a = W₂k      [BC, BR]
    h = _silu(a)
    b = _mm_nt(h, w1, PREC)                                       # W₁h          [BC, BD]
    if SELF:
        hv = _silu(_mm_nt(v, w2, PREC))
        v_hat = v + _mm_nt(hv, w1, PREC)                          # v̂ = M(v), self-generated (Eqs 84–86)
    else:
        v_hat = v
    e = 2.0 * (k + b - v_hat)                                     # e = 2(M(k) − v̂)
    c = _mm(e, w1, PREC)                                          # W₁ᵀe         [BC, BR]
    delta = c * _dsilu(a)
    nh, _rh = _rownorm(h)
    nk, _rk = _rownorm(k)
    return (nh[:, None] * e, h / nh[:, None], b / nh[:, None],
            nk[:, None] * delta, k / nk[:, None], a / nk[:, None])


@triton.jit
def _boundary_bwd(k, v, w1, w2, g_u1, g_z1, g_zw1, g_u2, g_z2, g_zw2, SELF: tl.constexpr, PREC: tl.constexpr):
    """Backward of _boundary_fwd (recomputing its forward): returns (G_k, G_v, G_W₁, G_W₂).

    (U₁, Ẑ₁, ẐW₁ᵀ) = (n_h e, h/n_h, b/n_h) and (U₂, Ẑ₂, ẐW₂ᵀ) = (n_k δ, k/n_k, a/n_k), n = max(‖·‖, ε); δ = c ⊙ σ′(a),
    c = eW₁; e = 2(k + b − v̂); v̂ = v + σ(vW₂ᵀ)W₁ᵀ (self) or v; b = hW₁ᵀ, h = σ(a), a = kW₂ᵀ."""
    a = _mm_nt(k, w2, PREC)
    h = _silu(a)
    b = _mm_nt(h, w1, PREC)
    if SELF:
        av = _mm_nt(v, w2, PREC)
        hv = _silu(av)
        v_hat = v + _mm_nt(hv, w1, PREC)
    else:
        v_hat = v
    e = 2.0 * (k + b - v_hat)
    c = _mm(e, w1, PREC)
    ds = _dsilu(a)
    delta = c * ds
    nh, rh = _rownorm(h)
    nk, rk = _rownorm(k)
    # layer 1: U₁ = n_h e, Ẑ₁ = h/n_h, ẐW₁ᵀ = b/n_h
    g_e = nh[:, None] * g_u1
    g_nh = tl.sum(g_u1 * e, axis=1) - (tl.sum(g_zw1 * b, axis=1) + tl.sum(g_z1 * h, axis=1)) / (nh * nh)
    g_b = g_zw1 / nh[:, None]
    g_h = g_z1 / nh[:, None] + tl.where(rh > EPS, g_nh / tl.where(rh > EPS, rh, 1.0), 0.0)[:, None] * h
    # layer 2: U₂ = n_k δ, Ẑ₂ = k/n_k, ẐW₂ᵀ = a/n_k
    g_delta = nk[:, None] * g_u2
    g_nk = tl.sum(g_u2 * delta, axis=1) - (tl.sum(g_zw2 * a, axis=1) + tl.sum(g_z2 * k, axis=1)) / (nk * nk)
    g_a = g_zw2 / nk[:, None] + g_delta * c * _d2silu(a)
    g_k = g_z2 / nk[:, None] + tl.where(rk > EPS, g_nk / tl.where(rk > EPS, rk, 1.0), 0.0)[:, None] * k
    g_c = g_delta * ds
    g_e += _mm_nt(g_c, w1, PREC)                                  # c = e W₁
    g_w1 = _mm_tn(e, g_c, PREC)
    g_k += 2.0 * g_e
    g_b += 2.0 * g_e
    g_vhat = -2.0 * g_e
    g_v = g_vhat
    g_w2 = tl.zeros_like(w2)
    if SELF:
        g_hv = _mm(g_vhat, w1, PREC)
        g_w1 += _mm_tn(g_vhat, hv, PREC)
        g_av = g_hv * _dsilu(av)
        g_v += _mm(g_av, w2, PREC)
        g_w2 += _mm_tn(g_av, v, PREC)
    g_h += _mm(g_b, w1, PREC)                                     # b = h W₁ᵀ
    g_w1 += _mm_tn(g_b, h, PREC)
    g_a += g_h * ds
    g_k += _mm(g_a, w2, PREC)                                     # a = k W₂ᵀ
    g_w2 += _mm_tn(g_a, k, PREC)
    return g_k, g_v, g_w1, g_w2


@triton.jit
def _boundary_fwd_linear(k, v, w, SELF: tl.constexpr, PREC: tl.constexpr):
    """Linear memory M(z) = Wz: (U, Ẑ, ẐWᵀ) = (n_k e, k/n_k, Wk/n_k), e = 2(Wk − v̂), v̂ = Wv or v."""
    mk = _mm_nt(k, w, PREC)
    v_hat = _mm_nt(v, w, PREC) if SELF else v
    e = 2.0 * (mk - v_hat)
    nk, _rk = _rownorm(k)
    return nk[:, None] * e, k / nk[:, None], mk / nk[:, None]


@triton.jit
def _boundary_bwd_linear(k, v, w, g_u, g_z, g_zw, SELF: tl.constexpr, PREC: tl.constexpr):
    """Backward of _boundary_fwd_linear: returns (G_k, G_v, G_W)."""
    mk = _mm_nt(k, w, PREC)
    v_hat = _mm_nt(v, w, PREC) if SELF else v
    e = 2.0 * (mk - v_hat)
    nk, rk = _rownorm(k)
    g_e = nk[:, None] * g_u
    g_nk = tl.sum(g_u * e, axis=1) - (tl.sum(g_zw * mk, axis=1) + tl.sum(g_z * k, axis=1)) / (nk * nk)
    g_mk = g_zw / nk[:, None] + 2.0 * g_e
    g_vhat = -2.0 * g_e
    g_k = (g_z / nk[:, None] + tl.where(rk > EPS, g_nk / tl.where(rk > EPS, rk, 1.0), 0.0)[:, None] * k
           + _mm(g_mk, w, PREC))
    g_w = _mm_tn(g_mk, k, PREC)
    if SELF:
        g_v = _mm(g_vhat, w, PREC)
        g_w += _mm_tn(g_vhat, v, PREC)
    else:
        g_v = g_vhat
    return g_k, g_v, g_w


# ------------------------------------------------------------------------------------------------------- reads
@triton.jit
def _read(z, w1, w2, keep, inv_keep, DROP: tl.constexpr, PREC: tl.constexpr):
    """M(z) = z + W₁σ(W₂z) with update dropout on the residual branch (hope_math §2.2–2.3); keep is the 0/1 mask."""
    b = _mm_nt(_silu(_mm_nt(z, w2, PREC)), w1, PREC)
    if DROP:
        b = b * keep * inv_keep
    return z + b


@triton.jit
def _read_bwd(g_o, z, w1, w2, keep, inv_keep, DROP: tl.constexpr, PREC: tl.constexpr):
    """Backward of _read: (G_z, G_W₁, G_W₂)."""
    a = _mm_nt(z, w2, PREC)
    h = _silu(a)
    g_b = g_o * keep * inv_keep if DROP else g_o
    g_h = _mm(g_b, w1, PREC)
    g_w1 = _mm_tn(g_b, h, PREC)
    g_a = g_h * _dsilu(a)
    return g_o + _mm(g_a, w2, PREC), g_w1, _mm_tn(g_a, z, PREC)


@triton.jit
def _read_linear(z, w, keep, inv_keep, DROP: tl.constexpr, PREC: tl.constexpr):
    o = _mm_nt(z, w, PREC)
    if DROP:
        o = o * keep * inv_keep
    return o


@triton.jit
def _read_linear_bwd(g_o, z, w, keep, inv_keep, DROP: tl.constexpr, PREC: tl.constexpr):
    g = g_o * keep * inv_keep if DROP else g_o
    return _mm(g, w, PREC), _mm_tn(g, z, PREC)
