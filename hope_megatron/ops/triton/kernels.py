"""The persistent Triton kernels of the Titans memory op: one program per (sequence, head) walks every chunk of a layer.

Forward (_titans_fwd_kernel): for each chunk j of C tokens (hope_math §2.7, §3.6 with C_proj = C_mem):
  read   every memory of the group at the boundary state S_j: M_k, M_v, M_η, M_α on x̃ give k, v, η, log α (or they
         come in as inputs: static channels, §2.1/§5.4), M_mem on q gives y (§2.6);
  write  if the chunk writes, each memory advances S_j → S_{j+1} in closed form (chunk_math: boundary terms, gates,
         chunk step, clip; §2.4–2.5, §3.4–3.5), in place in the working state;
  keep   the boundary state of every n_r-th chunk for the backward (hope_math §2.8).
Backward (_titans_bwd_kernel): segments of n_r chunks in reverse; each segment's boundary states are recomputed from its
kept state into a scratch buffer, then its chunks run backward in reverse, carrying ∂L/∂S from chunk to chunk and
writing ∂L/∂(x̃, q, static inputs, readouts) per chunk; what is left of ∂L/∂S at the end is ∂L/∂S₀.

State buffers are fp32 (fp64 for fp64 inputs), [programs, G, d_out, d_in] per weight matrix, layer order (W₁, W₂) as
in memory_mlp (a linear memory uses the W₁ buffers only). Memories of the group: the projection memories in
TitansOpConfig.projection_memories() order, then mem last; IDX_* give each role's position (−1: the role's values
come in as inputs). Stores a program re-reads are fenced with tl.debug_barrier().
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_math import (_boundary_bwd, _boundary_bwd_linear, _boundary_fwd, _boundary_fwd_linear, _gates,
                         _gates_bwd, _l2norm_bwd, _log1p, _mm_nt, _read, _read_bwd, _read_linear, _read_linear_bwd,
                         _rownorm, _step_bwd, _step_fwd, _unit_lower_inverse)
from .tiles import _copy_state, _program, _put, _put_rows, _put_vec, _rows, _tile, _vec


# -------------------------------------------------------------------------------------------------- read phase
@triton.jit
def _chunk_read(x_ptr, q_ptr, kin_ptr, vin_ptr, etain_ptr, lain_ptr, keep_ptr, keep_stride, weta_ptr, beta_b,
                walpha_ptr, balpha_b, w1_ptr, w2_ptr, n, eta_max, inv_keep,
                D, R, BC: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, G: tl.constexpr, DEPTH: tl.constexpr,
                IDX_K: tl.constexpr, IDX_V: tl.constexpr, IDX_ETA: tl.constexpr, IDX_ALPHA: tl.constexpr,
                HAS_LAIN: tl.constexpr, DROP: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr):
    """k, v, η, log α and y of one chunk's n tokens at the boundary state (hope_math §2.3, §2.6); rows ≥ n are 0.
    Pointers are at this program's chunk start (token rows) and this program's state (w1_ptr, w2_ptr)."""
    t = tl.arange(0, BC)
    valid = t < n
    x = _rows(x_ptr, n, D, BC, BD, CDT)
    q = _rows(q_ptr, n, D, BC, BD, CDT)
    c = tl.arange(0, BD)
    k = x * 0.0
    v = x * 0.0
    eta = tl.sum(x, axis=1) * 0.0
    la = eta
    y = x * 0.0
    if IDX_K < 0:
        k = _rows(kin_ptr, n, D, BC, BD, CDT)                    # ℓ2norm(static k̃), normalised by the caller
    if IDX_V < 0:
        v = _rows(vin_ptr, n, D, BC, BD, CDT)
    if IDX_ETA < 0:
        eta = _vec(etain_ptr, n, BC, CDT)
    if IDX_ALPHA < 0:
        if HAS_LAIN:
            la = _vec(lain_ptr, n, BC, CDT)
    for gi in tl.static_range(G):
        z = q if gi == G - 1 else x                              # M_mem reads q, the projection memories x̃
        dropped = DROP and gi < G - 1
        keep = x * 0.0
        if dropped:
            keep = _rows(keep_ptr + gi * keep_stride, n, D, BC, BD, CDT)
        if DEPTH == 2:
            o = _read(z, _tile(w1_ptr + gi * D * R, D, R, BD, BR), _tile(w2_ptr + gi * R * D, R, D, BR, BD),
                      keep, inv_keep, dropped, PREC)
        else:
            o = _read_linear(z, _tile(w1_ptr + gi * D * D, D, D, BD, BD), keep, inv_keep, dropped, PREC)
        if gi == IDX_K:
            nk, _rko = _rownorm(o)
            k = o / nk[:, None]                                  # k = ℓ2norm(M_k(x̃))
        if gi == IDX_V:
            v = o                                                # v = M_v(x̃)
        if gi == IDX_ETA:
            w = tl.load(weta_ptr + c, mask=c < D, other=0).to(CDT)
            eta = tl.where(valid, eta_max * tl.sigmoid(tl.sum(o * w[None, :], axis=1) + beta_b), 0.0)
        if gi == IDX_ALPHA:
            w = tl.load(walpha_ptr + c, mask=c < D, other=0).to(CDT)
            s = tl.sum(o * w[None, :], axis=1) + balpha_b
            la = tl.where(valid, tl.minimum(s, 0.0) - _log1p(tl.exp(-tl.abs(s))), 0.0)   # logsigmoid, fp32-exact
        if gi == G - 1:
            y = o
    return k, v, eta, la, y


# ------------------------------------------------------------------------------------------------- write phase
@triton.jit
def _chunk_write(k, v, eta, la, n, bpow_ptr, src_w1, src_w2, src_m1, src_m2, dst_w1, dst_w2, dst_m1, dst_m2,
                 clipf_ptr, clipf_stride, clip, D, R, BC: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr,
                 LOG2BC: tl.constexpr, G: tl.constexpr, DEPTH: tl.constexpr, SELF: tl.constexpr,
                 DGD: tl.constexpr, MOM: tl.constexpr, CLIP_ON: tl.constexpr, STORE_F: tl.constexpr,
                 PREC: tl.constexpr):
    """S_j → S_{j+1} for every memory of the group (src may equal dst: each memory is read before it is written)."""
    c_u, c_w, c_m, p, q, e_out, k_out, g, r, mw, beta_n = _gates(eta, la, n, bpow_ptr, BC, DGD, MOM, PREC)
    nk, _rk = _rownorm(k)
    khat = k / nk[:, None]
    s2 = _mm_nt(khat, khat, PREC)                               # k̂ is shared by every memory's W₂ (hope_math §3.2)
    inv2 = s2
    if DGD:
        inv2 = _unit_lower_inverse(p * s2, BC, LOG2BC, PREC)
    for gm in range(G):
        if DEPTH == 2:
            w1 = _tile(src_w1 + gm * D * R, D, R, BD, BR)
            w2 = _tile(src_w2 + gm * R * D, R, D, BR, BD)
            m1 = _tile(src_m1 + gm * D * R, D, R, BD, BR)
            m2 = _tile(src_m2 + gm * R * D, R, D, BR, BD)
            u1, z1, zw1, u2, z2, zw2 = _boundary_fwd(k, v, w1, w2, SELF, PREC)
            s1 = _mm_nt(z1, z1, PREC)
            inv1 = s1
            if DGD:
                inv1 = _unit_lower_inverse(p * s1, BC, LOG2BC, PREC)
            d1, m1n, _r1, _zm1 = _step_fwd(u1, z1, zw1, w1, m1, s1, inv1, c_u, c_w, c_m, q, e_out, k_out, g, r, mw,
                                      beta_n, DGD, MOM, PREC)
            d2, m2n, _r2, _zm2 = _step_fwd(u2, z2, zw2, w2, m2, s2, inv2, c_u, c_w, c_m, q, e_out, k_out, g, r, mw,
                                      beta_n, DGD, MOM, PREC)
            f = tl.sum(tl.sum(d1 * d1, axis=1), axis=0) * 0.0 + 1.0
            if CLIP_ON:                                          # ‖(Δ₁, Δ₂)‖_F per memory (hope_math §2.5, §10 #10)
                sq = tl.sum(tl.sum(d1 * d1, axis=1), axis=0) + tl.sum(tl.sum(d2 * d2, axis=1), axis=0)
                f = tl.minimum(clip / tl.sqrt(tl.maximum(sq, 1e-30)), 1.0)
            tl.debug_barrier()                                   # src may be dst: all warps have read S_j
            _put(dst_w1 + gm * D * R, w1 + f * d1, D, R, BD, BR)
            _put(dst_w2 + gm * R * D, w2 + f * d2, R, D, BR, BD)
            _put(dst_m1 + gm * D * R, m1n, D, R, BD, BR)
            _put(dst_m2 + gm * R * D, m2n, R, D, BR, BD)
        else:
            w = _tile(src_w1 + gm * D * D, D, D, BD, BD)
            m = _tile(src_m1 + gm * D * D, D, D, BD, BD)
            u, z, zw = _boundary_fwd_linear(k, v, w, SELF, PREC)
            d, mn, _rr, _zm = _step_fwd(u, z, zw, w, m, s2, inv2, c_u, c_w, c_m, q, e_out, k_out, g, r, mw, beta_n,
                                    DGD, MOM, PREC)
            f = tl.sum(tl.sum(d * d, axis=1), axis=0) * 0.0 + 1.0
            if CLIP_ON:
                f = tl.minimum(clip / tl.sqrt(tl.maximum(tl.sum(tl.sum(d * d, axis=1), axis=0), 1e-30)), 1.0)
            tl.debug_barrier()
            _put(dst_w1 + gm * D * D, w + f * d, D, D, BD, BD)
            _put(dst_m1 + gm * D * D, mn, D, D, BD, BD)
        if STORE_F:
            tl.store(clipf_ptr + gm * clipf_stride, f)


@triton.jit
def _fro(a, b):
    return tl.sum(tl.sum(a * b, axis=1), axis=0)


@triton.jit
def _layer_bwd(w_ptr, m_ptr, gw_ptr, gm_ptr, d, f, coef, u, z, zw, s, p, inv, rr, zm, c_u, c_w, c_m, q, e_out,
               k_out, g, r, mw, beta_n, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g, a_r, O, I,
               BO: tl.constexpr, BI: tl.constexpr, BC: tl.constexpr, DGD: tl.constexpr, MOM: tl.constexpr,
               CLIP_ON: tl.constexpr, PREC: tl.constexpr):
    """One layer's share of the write's backward: the clip (W' = W + fΔ), the chunk step, and the state-sized
    results stored at once (G_m, and G_W = G_W' + g·G_Δ before the boundary terms' share), so that few state-sized
    tiles are alive at a time. Returns (G_U, G_Ẑ, G_ẐWᵀ) and the gate-gradient accumulators a_* with this layer's
    share added (a_g += ⟨G_Δ, W⟩, a_r −= ⟨G_Δ, m⟩)."""
    gwn = _tile(gw_ptr, O, I, BO, BI)
    gd = gwn
    if CLIP_ON:
        gd = f * gwn - coef * d                                  # −Δ̃⟨G_W', Δ̃⟩/(c‖Δ‖) where active (coef = 0 else)
    w = _tile(w_ptr, O, I, BO, BI)
    m = _tile(m_ptr, O, I, BO, BI)
    a_g += _fro(gd, w)
    if MOM:
        a_r -= _fro(gd, m)
    gmn = _tile(gm_ptr, O, I, BO, BI)
    gu, gz, gzw, gm_out, cu, cw, cm, gp, gq, eo, ko = _step_bwd(
        gd, gmn, u, z, zw, m, s, p, inv, rr, zm, c_u, c_w, c_m, q, e_out, k_out, r, mw, beta_n, BC, DGD, MOM, PREC)
    tl.debug_barrier()                                           # every warp has read G_W', G_m' before they are overwritten
    _put(gm_ptr, gm_out, O, I, BO, BI)
    _put(gw_ptr, gwn + g * gd, O, I, BO, BI)
    return (gu, gz, gzw, a_cu + cu, a_cw + cw, a_cm + cm, a_p + gp, a_q + gq, a_eout + eo, a_kout + ko, a_g, a_r)


@triton.jit
def _chunk_write_bwd(k, v, eta, la, n, bpow_ptr, src_w1, src_w2, src_m1, src_m2, gs_w1, gs_w2, gs_m1, gs_m2,
                     clip, D, R, BC: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, LOG2BC: tl.constexpr,
                     G: tl.constexpr, DEPTH: tl.constexpr, SELF: tl.constexpr, DGD: tl.constexpr, MOM: tl.constexpr,
                     CLIP_ON: tl.constexpr, PREC: tl.constexpr):
    """Backward of _chunk_write. gs_* hold ∂L/∂S_{j+1} on entry and the write's share of ∂L/∂S_j on exit (the reads'
    share is added by the caller). Returns (G_k, G_v, G_η, G_logα) of the chunk's tokens. Per memory, in phases that
    keep few state-sized tiles alive: (A) forward again up to Δ and the clip's scalars, (B, C) each layer's backward
    with its state-sized results stored at once, (D) the boundary terms' backward added to G_W₁, G_W₂."""
    c_u, c_w, c_m, p, q, e_out, k_out, g, r, mw, beta_n = _gates(eta, la, n, bpow_ptr, BC, DGD, MOM, PREC)
    nk, rk = _rownorm(k)
    khat = k / nk[:, None]
    s2 = _mm_nt(khat, khat, PREC)
    inv2 = s2
    if DGD:
        inv2 = _unit_lower_inverse(p * s2, BC, LOG2BC, PREC)
    g_k = k * 0.0
    g_v = k * 0.0
    a_cu = eta * 0.0
    a_cw = a_cu
    a_cm = a_cu
    a_eout = a_cu
    a_kout = a_cu
    a_p = s2 * 0.0
    a_q = a_p
    a_g = tl.sum(a_cu, axis=0)
    a_r = a_g
    for gm in range(G):
        if DEPTH == 2:
            o1 = gm * D * R
            o2 = gm * R * D
            # (A) the write again, up to Δ₁, Δ₂ and the clip's scalars
            w1 = _tile(src_w1 + o1, D, R, BD, BR)
            w2 = _tile(src_w2 + o2, R, D, BR, BD)
            u1, z1, zw1, u2, z2, zw2 = _boundary_fwd(k, v, w1, w2, SELF, PREC)
            s1 = _mm_nt(z1, z1, PREC)
            inv1 = s1
            if DGD:
                inv1 = _unit_lower_inverse(p * s1, BC, LOG2BC, PREC)
            d1, _m1n, r1, zm1 = _step_fwd(u1, z1, zw1, w1, _tile(src_m1 + o1, D, R, BD, BR), s1, inv1, c_u, c_w,
                                          c_m, q, e_out, k_out, g, r, mw, beta_n, DGD, MOM, PREC)
            d2, _m2n, r2, zm2 = _step_fwd(u2, z2, zw2, w2, _tile(src_m2 + o2, R, D, BR, BD), s2, inv2, c_u, c_w,
                                          c_m, q, e_out, k_out, g, r, mw, beta_n, DGD, MOM, PREC)
            f = a_g * 0.0 + 1.0
            coef = a_g * 0.0
            if CLIP_ON:
                # W' = W + fΔ; where the clip is active (‖Δ‖ > c), f = c/‖Δ‖ adds −Δ̃⟨G_W', Δ̃⟩/(c‖Δ‖), Δ̃ = fΔ
                nrm = tl.sqrt(tl.maximum(_fro(d1, d1) + _fro(d2, d2), 1e-30))
                f = tl.minimum(clip / nrm, 1.0)
                dot = f * (_fro(_tile(gs_w1 + o1, D, R, BD, BR), d1) + _fro(_tile(gs_w2 + o2, R, D, BR, BD), d2))
                coef = tl.where(nrm > clip, dot / (clip * nrm), 0.0) * f
            # (B) layer 1 (input ĥ), (C) layer 2 (input k̂, shared S₂ and inverse)
            gu1, gz1, gzw1, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g, a_r = _layer_bwd(
                src_w1 + o1, src_m1 + o1, gs_w1 + o1, gs_m1 + o1, d1, f, coef, u1, z1, zw1, s1, p, inv1, r1, zm1,
                c_u, c_w, c_m, q, e_out, k_out, g, r, mw, beta_n, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g,
                a_r, D, R, BD, BR, BC, DGD, MOM, CLIP_ON, PREC)
            gu2, gz2, gzw2, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g, a_r = _layer_bwd(
                src_w2 + o2, src_m2 + o2, gs_w2 + o2, gs_m2 + o2, d2, f, coef, u2, z2, zw2, s2, p, inv2, r2, zm2,
                c_u, c_w, c_m, q, e_out, k_out, g, r, mw, beta_n, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g,
                a_r, R, D, BR, BD, BC, DGD, MOM, CLIP_ON, PREC)
            # (D) the boundary terms: G_k, G_v and their share of G_W₁, G_W₂
            gk, gv, gw1, gw2 = _boundary_bwd(k, v, _tile(src_w1 + o1, D, R, BD, BR), _tile(src_w2 + o2, R, D, BR, BD),
                                             gu1, gz1, gzw1, gu2, gz2, gzw2, SELF, PREC)
            g_k += gk
            g_v += gv
            tl.debug_barrier()
            _put(gs_w1 + o1, _tile(gs_w1 + o1, D, R, BD, BR) + gw1, D, R, BD, BR)
            _put(gs_w2 + o2, _tile(gs_w2 + o2, R, D, BR, BD) + gw2, R, D, BR, BD)
        else:
            o1 = gm * D * D
            w = _tile(src_w1 + o1, D, D, BD, BD)
            u, z, zw = _boundary_fwd_linear(k, v, w, SELF, PREC)
            d, _mn, rr, zm = _step_fwd(u, z, zw, w, _tile(src_m1 + o1, D, D, BD, BD), s2, inv2, c_u, c_w, c_m, q,
                                       e_out, k_out, g, r, mw, beta_n, DGD, MOM, PREC)
            f = a_g * 0.0 + 1.0
            coef = a_g * 0.0
            if CLIP_ON:
                nrm = tl.sqrt(tl.maximum(_fro(d, d), 1e-30))
                f = tl.minimum(clip / nrm, 1.0)
                coef = tl.where(nrm > clip, f * _fro(_tile(gs_w1 + o1, D, D, BD, BD), d) / (clip * nrm), 0.0) * f
            gu, gz, gzw, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g, a_r = _layer_bwd(
                src_w1 + o1, src_m1 + o1, gs_w1 + o1, gs_m1 + o1, d, f, coef, u, z, zw, s2, p, inv2, rr, zm,
                c_u, c_w, c_m, q, e_out, k_out, g, r, mw, beta_n, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g,
                a_r, D, D, BD, BD, BC, DGD, MOM, CLIP_ON, PREC)
            gk, gv, gw = _boundary_bwd_linear(k, v, _tile(src_w1 + o1, D, D, BD, BD), gu, gz, gzw, SELF, PREC)
            g_k += gk
            g_v += gv
            tl.debug_barrier()
            _put(gs_w1 + o1, _tile(gs_w1 + o1, D, D, BD, BD) + gw, D, D, BD, BD)
    g_eta, g_la = _gates_bwd(eta, la, n, bpow_ptr, a_cu, a_cw, a_cm, a_p, a_q, a_eout, a_kout, a_g, a_r,
                             BC, DGD, MOM, PREC)
    return g_k, g_v, g_eta, g_la


# ------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _titans_fwd_kernel(
        X, Q, KIN, VIN, ETAIN, LAIN, KEEP, WETA, BETA_B, WALPHA, BALPHA, BPOW,
        W1, W2, M1, M2, CK1, CK2, CKM1, CKM2, Y, PK, PV, PETA, PLA, CLIPF,
        L, C, H, n_chunks, n_writes, NR, NCK, eta_max, clip, inv_keep,
        D: tl.constexpr, R: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr,
        LOG2BC: tl.constexpr, G: tl.constexpr, DEPTH: tl.constexpr, SELF: tl.constexpr, DGD: tl.constexpr,
        MOM: tl.constexpr, CLIP_ON: tl.constexpr, DROP: tl.constexpr, IDX_K: tl.constexpr, IDX_V: tl.constexpr,
        IDX_ETA: tl.constexpr, IDX_ALPHA: tl.constexpr, HAS_LAIN: tl.constexpr, SAVE_CK: tl.constexpr,
        STORE_PENDING: tl.constexpr, STORE_F: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr):
    """One program per (sequence, head): every chunk of the layer, in order (module docstring)."""
    pid, h, msz1, msz2, tok, keep_stride = _program(H, L, D, R, DEPTH)
    w1 = W1 + pid * G * msz1
    w2 = W2 + pid * G * msz2
    m1 = M1 + pid * G * msz1
    m2 = M2 + pid * G * msz2
    beta_b = tl.load(BETA_B + h).to(CDT) if IDX_ETA >= 0 else 0.0
    balpha_b = tl.load(BALPHA + h).to(CDT) if IDX_ALPHA >= 0 else 0.0
    for j in range(n_chunks):
        t0 = j * C
        n = tl.minimum(C, L - t0)
        if SAVE_CK:
            if j % NR == 0:
                ck = (pid * NCK + j // NR) * G
                _copy_state(w1, w2, m1, m2, CK1 + ck * msz1, CK2 + ck * msz2, CKM1 + ck * msz1, CKM2 + ck * msz2,
                            D, R, G, BD, BR, DEPTH)
        k, v, eta, la, y = _chunk_read(
            X + tok + t0 * D, Q + tok + t0 * D, KIN + tok + t0 * D, VIN + tok + t0 * D, ETAIN + pid * L + t0,
            LAIN + pid * L + t0, KEEP + tok + t0 * D, keep_stride, WETA + h * D, beta_b, WALPHA + h * D, balpha_b,
            w1, w2, n, eta_max, inv_keep, D, R, BC, BD, BR, G, DEPTH, IDX_K, IDX_V, IDX_ETA, IDX_ALPHA, HAS_LAIN,
            DROP, CDT, PREC)
        _put_rows(Y + tok + t0 * D, y, n, D, BC, BD)
        if STORE_PENDING:
            if j == n_chunks - 1:
                if n < C:                                        # the open chunk's tokens (hope_math §7.2)
                    _put_rows(PK + pid * C * D, k, n, D, BC, BD)
                    _put_rows(PV + pid * C * D, v, n, D, BC, BD)
                    _put_vec(PETA + pid * C, eta, n, BC)
                    _put_vec(PLA + pid * C, la, n, BC)
        if j < n_writes:
            _chunk_write(k, v, eta, la, n, BPOW, w1, w2, m1, m2, w1, w2, m1, m2,
                         CLIPF + j * G * tl.num_programs(0) + pid, tl.num_programs(0), clip, D, R, BC, BD, BR,
                         LOG2BC, G, DEPTH, SELF, DGD, MOM, CLIP_ON, STORE_F, PREC)
        tl.debug_barrier()


@triton.jit
def _titans_bwd_kernel(
        X, Q, KIN, VIN, ETAIN, LAIN, KEEP, WETA, BETA_B, WALPHA, BALPHA, BPOW,
        CK1, CK2, CKM1, CKM2, S1, S2, SM1, SM2, GS1, GS2, GSM1, GSM2,
        DY, GPK, GPV, GPETA, GPLA,
        DX, DQ, DKIN, DVIN, DETAIN, DLAIN, DWETA, DBETA, DWALPHA, DBALPHA,
        L, C, H, n_chunks, n_writes, NR, NCK, eta_max, clip, inv_keep,
        D: tl.constexpr, R: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr,
        LOG2BC: tl.constexpr, G: tl.constexpr, DEPTH: tl.constexpr, SELF: tl.constexpr, DGD: tl.constexpr,
        MOM: tl.constexpr, CLIP_ON: tl.constexpr, DROP: tl.constexpr, IDX_K: tl.constexpr, IDX_V: tl.constexpr,
        IDX_ETA: tl.constexpr, IDX_ALPHA: tl.constexpr, HAS_LAIN: tl.constexpr, HAS_GPEND: tl.constexpr,
        CDT: tl.constexpr, PREC: tl.constexpr):
    """Backward of _titans_fwd_kernel for one (sequence, head); GS* enter holding ∂L/∂S_final, leave holding ∂L/∂S₀."""
    pid, h, msz1, msz2, tok, keep_stride = _program(H, L, D, R, DEPTH)
    gs1 = GS1 + pid * G * msz1
    gs2 = GS2 + pid * G * msz2
    gsm1 = GSM1 + pid * G * msz1
    gsm2 = GSM2 + pid * G * msz2
    beta_b = tl.load(BETA_B + h).to(CDT) if IDX_ETA >= 0 else 0.0
    balpha_b = tl.load(BALPHA + h).to(CDT) if IDX_ALPHA >= 0 else 0.0
    c = tl.arange(0, BD)
    t = tl.arange(0, BC)
    acc_weta = tl.zeros([BD], dtype=CDT)
    acc_walpha = tl.zeros([BD], dtype=CDT)
    acc_beta = tl.sum(acc_weta, axis=0)
    acc_balpha = acc_beta
    n_seg = (n_chunks + NR - 1) // NR
    for sg in range(n_seg):
        seg = n_seg - 1 - sg
        j0 = seg * NR
        n_in = tl.minimum(NR, n_chunks - j0)
        ck = (pid * NCK + seg) * G
        sb = pid * NR * G
        _copy_state(CK1 + ck * msz1, CK2 + ck * msz2, CKM1 + ck * msz1, CKM2 + ck * msz2,
                    S1 + sb * msz1, S2 + sb * msz2, SM1 + sb * msz1, SM2 + sb * msz2, D, R, G, BD, BR, DEPTH)
        tl.debug_barrier()
        for jj in range(n_in - 1):                               # boundary states of the segment, recomputed
            j = j0 + jj
            t0 = j * C
            n = tl.minimum(C, L - t0)
            src = sb + jj * G
            dst = src + G
            k, v, eta, la, _y = _chunk_read(
                X + tok + t0 * D, Q + tok + t0 * D, KIN + tok + t0 * D, VIN + tok + t0 * D, ETAIN + pid * L + t0,
                LAIN + pid * L + t0, KEEP + tok + t0 * D, keep_stride, WETA + h * D, beta_b, WALPHA + h * D,
                balpha_b, S1 + src * msz1, S2 + src * msz2, n, eta_max, inv_keep, D, R, BC, BD, BR, G, DEPTH,
                IDX_K, IDX_V, IDX_ETA, IDX_ALPHA, HAS_LAIN, DROP, CDT, PREC)
            _chunk_write(k, v, eta, la, n, BPOW, S1 + src * msz1, S2 + src * msz2, SM1 + src * msz1,
                         SM2 + src * msz2, S1 + dst * msz1, S2 + dst * msz2, SM1 + dst * msz1, SM2 + dst * msz2,
                         BPOW, 0, clip, D, R, BC, BD, BR, LOG2BC, G, DEPTH, SELF, DGD, MOM, CLIP_ON, False, PREC)
            tl.debug_barrier()
        for jr in range(n_in):                                   # the segment's chunks, last first
            jj = n_in - 1 - jr
            j = j0 + jj
            t0 = j * C
            n = tl.minimum(C, L - t0)
            src = sb + jj * G
            sw1 = S1 + src * msz1
            sw2 = S2 + src * msz2
            k, v, eta, la, _y = _chunk_read(
                X + tok + t0 * D, Q + tok + t0 * D, KIN + tok + t0 * D, VIN + tok + t0 * D, ETAIN + pid * L + t0,
                LAIN + pid * L + t0, KEEP + tok + t0 * D, keep_stride, WETA + h * D, beta_b, WALPHA + h * D,
                balpha_b, sw1, sw2, n, eta_max, inv_keep, D, R, BC, BD, BR, G, DEPTH, IDX_K, IDX_V, IDX_ETA,
                IDX_ALPHA, HAS_LAIN, DROP, CDT, PREC)
            g_k = k * 0.0
            g_v = k * 0.0
            g_eta = eta * 0.0
            g_la = eta * 0.0
            if j < n_writes:
                g_k, g_v, g_eta, g_la = _chunk_write_bwd(
                    k, v, eta, la, n, BPOW, sw1, sw2, SM1 + src * msz1, SM2 + src * msz2, gs1, gs2, gsm1, gsm2,
                    clip, D, R, BC, BD, BR, LOG2BC, G, DEPTH, SELF, DGD, MOM, CLIP_ON, PREC)
                tl.debug_barrier()
            if HAS_GPEND:
                if j == n_chunks - 1:
                    if n < C:                                    # gradients into the returned pending tokens
                        g_k += _rows(GPK + pid * C * D, n, D, BC, BD, CDT)
                        g_v += _rows(GPV + pid * C * D, n, D, BC, BD, CDT)
                        g_eta += _vec(GPETA + pid * C, n, BC, CDT)
                        g_la += _vec(GPLA + pid * C, n, BC, CDT)
            # ---- the reads (hope_math §2.3, §2.6) at S_j: roles first, then each memory's MLP
            x = _rows(X + tok + t0 * D, n, D, BC, BD, CDT)
            q = _rows(Q + tok + t0 * D, n, D, BC, BD, CDT)
            g_x = x * 0.0
            g_q = x * 0.0
            for gi in tl.static_range(G):
                z = q if gi == G - 1 else x
                dropped = DROP and gi < G - 1
                keep = x * 0.0
                if dropped:
                    keep = _rows(KEEP + tok + t0 * D + gi * keep_stride, n, D, BC, BD, CDT)
                if DEPTH == 2:
                    wt1 = _tile(sw1 + gi * D * R, D, R, BD, BR)
                    wt2 = _tile(sw2 + gi * R * D, R, D, BR, BD)
                    o = _read(z, wt1, wt2, keep, inv_keep, dropped, PREC)
                else:
                    wt1 = _tile(sw1 + gi * D * D, D, D, BD, BD)
                    wt2 = wt1
                    o = _read_linear(z, wt1, keep, inv_keep, dropped, PREC)
                g_o = o * 0.0
                if gi == IDX_K:
                    nk, rk = _rownorm(o)
                    g_o = _l2norm_bwd(g_k, o, nk, rk)
                if gi == IDX_V:
                    g_o = g_v
                if gi == IDX_ETA:
                    w = tl.load(WETA + h * D + c, mask=c < D, other=0).to(CDT)
                    sg_ = tl.sigmoid(tl.sum(o * w[None, :], axis=1) + beta_b)
                    g_s = tl.where(t < n, g_eta * eta_max * sg_ * (1.0 - sg_), 0.0)   # η = η_max s(w·o + b)
                    g_o = g_s[:, None] * w[None, :]
                    acc_weta += tl.sum(g_s[:, None] * o, axis=0)
                    acc_beta += tl.sum(g_s, axis=0)
                if gi == IDX_ALPHA:
                    w = tl.load(WALPHA + h * D + c, mask=c < D, other=0).to(CDT)
                    g_s = tl.where(t < n, g_la * (1.0 - tl.sigmoid(tl.sum(o * w[None, :], axis=1) + balpha_b)),
                                   0.0)                                          # d logsigmoid(s)/ds = 1 − s(s)
                    g_o = g_s[:, None] * w[None, :]
                    acc_walpha += tl.sum(g_s[:, None] * o, axis=0)
                    acc_balpha += tl.sum(g_s, axis=0)
                if gi == G - 1:
                    g_o = _rows(DY + tok + t0 * D, n, D, BC, BD, CDT)
                if DEPTH == 2:
                    g_z, gw1, gw2 = _read_bwd(g_o, z, wt1, wt2, keep, inv_keep, dropped, PREC)
                    _put(gs1 + gi * D * R, _tile(gs1 + gi * D * R, D, R, BD, BR) + gw1, D, R, BD, BR)
                    _put(gs2 + gi * R * D, _tile(gs2 + gi * R * D, R, D, BR, BD) + gw2, R, D, BR, BD)
                else:
                    g_z, gw1 = _read_linear_bwd(g_o, z, wt1, keep, inv_keep, dropped, PREC)
                    _put(gs1 + gi * D * D, _tile(gs1 + gi * D * D, D, D, BD, BD) + gw1, D, D, BD, BD)
                if gi == G - 1:
                    g_q += g_z
                else:
                    g_x += g_z
            _put_rows(DQ + tok + t0 * D, g_q, n, D, BC, BD)
            if G > 1:
                _put_rows(DX + tok + t0 * D, g_x, n, D, BC, BD)
            if IDX_K < 0:
                _put_rows(DKIN + tok + t0 * D, g_k, n, D, BC, BD)
            if IDX_V < 0:
                _put_rows(DVIN + tok + t0 * D, g_v, n, D, BC, BD)
            if IDX_ETA < 0:
                _put_vec(DETAIN + pid * L + t0, g_eta, n, BC)
            if IDX_ALPHA < 0:
                if HAS_LAIN:
                    _put_vec(DLAIN + pid * L + t0, g_la, n, BC)
            tl.debug_barrier()
    if IDX_ETA >= 0:
        tl.store(DWETA + pid * D + c, acc_weta, mask=c < D)
        tl.store(DBETA + pid, acc_beta)
    if IDX_ALPHA >= 0:
        tl.store(DWALPHA + pid * D + c, acc_walpha, mask=c < D)
        tl.store(DBALPHA + pid, acc_balpha)
