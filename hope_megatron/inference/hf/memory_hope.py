"""The self-modifying Titans memory (hope_math.md §2–3) for the Hugging Face remote code, in plain torch: the compact
chunked form (closed-form advance of §3.4/§3.5, one triangular solve per chunk), the streaming state, the document
pieces of a packed row and the causal conv. Written by checkpoints_convert/export_hf.py next to modeling_hope.py, which
builds the layers on it; like it, this file imports neither megatron nor hope_megatron (it travels with the
checkpoint). tests/unit/eval/test_hf_export.py holds it to hope_megatron.inference through modeling_hope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F


EPS = 1e-6  # ẑ = z / max(‖z‖, ε), and the per-head RMSNorm eps (hope_math §1, §2.6)
CONV_WIDTH = 4  # hope_math §2.1


# ------------------------------------------------------------------------------------------------ memory op (§2–3)
def l2norm(z):
    return z / z.norm(dim=-1, keepdim=True).clamp_min(EPS)


def memory_names(op: dict) -> Tuple[str, ...]:
    """Projection memories (C_proj grid) then M_mem (hope_math §2.3, §5.4)."""
    if not op["self_mod"]:
        return ("mem",)
    on = {"k": op["inner_k"], "v": op["inner_v"], "eta": True, "alpha": op["decay"], "q": op["inner_q"]}
    return tuple(m for m in ("k", "v", "eta", "alpha", "q") if on[m]) + ("mem",)


def weight_names(op: dict, m: str) -> Tuple[str, ...]:
    return (f"{m}_w1", f"{m}_w2") if op["memory_depth"] == 2 else (f"{m}_w",)


def memory_apply(ws, z):
    """M(z) = z + W₁ σ(W₂ z) (NL-arXiv Eq 89), or W z for a linear memory; ws [B, H, o, i], z [B, H, n, i]."""
    if len(ws) == 2:
        return z + F.silu(z @ ws[1].mT) @ ws[0].mT
    return z @ ws[0].mT


def grad_factors(ws, k, v_hat):
    """Rank-1 factors (u_t, ẑ_t) with u_t ẑ_tᵀ = ∂‖M(k_t) − v̂_t‖²/∂W at the boundary weights, v̂ constant (§2.4)."""
    nk = k.norm(dim=-1, keepdim=True).clamp_min(EPS)
    if len(ws) == 1:
        return [(nk * 2 * (k @ ws[0].mT - v_hat), k / nk)]
    w1, w2 = ws
    a = k @ w2.mT
    h = F.silu(a)
    e = 2 * (k + h @ w1.mT - v_hat)                                   # e_t = 2(M(k_t) − v̂_t)
    s = torch.sigmoid(a)
    delta = (e @ w1) * s * (1 + a * (1 - s))                          # δ_t = (W₁ᵀ e_t) ⊙ σ′(a_t)
    nh = h.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return [(nh * e, h / nh), (nk * delta, k / nk)]                   # (u₁, ĥ), (u₂, k̂)


def advance(ws, ms, factors, eta, log_alpha, op):
    """One chunk of m_t = β m_{t−1} + u_t ẑ_tᵀ, W_t = W_{t−1}(α_t I − λ_t ẑ_t ẑ_tᵀ) − η_t m_t for every weight matrix,
    in closed form (hope_math §3.4/§3.5: Λ = cumsum log α, κ, ρ, one unit-lower-triangular solve), then the chunk
    clip on the memory's joint ‖(ΔW₁, ΔW₂)‖_F (§2.5). eta, log_alpha [B, H, n]."""
    beta, n, dt = float(op["momentum"]), eta.shape[-1], eta.dtype
    idx = torch.arange(n, device=eta.device)
    strict, incl = idx[:, None] > idx[None, :], idx[:, None] >= idx[None, :]
    lam = eta if op["dgd"] else torch.zeros_like(eta)                 # λ_t = η_t with DGD (§2.5)
    cum = log_alpha.cumsum(-1)                                        # Λ_t
    prev = cum - log_alpha                                            # Λ_{t−1}
    decay = lambda d, mask: torch.exp(d.masked_fill(~mask, float("-inf")))  # noqa: E731  e^{Λ_a − Λ_b} on a mask
    e_mat = decay(cum[..., :, None] - cum[..., None, :], incl) * eta[..., None, :]   # [j ≤ t] η_j e^{Λ_t − Λ_j}
    powers = (idx[:, None] - idx[None, :]).clamp_min(0).to(dt)
    f_mat = torch.where(strict, beta ** powers, torch.zeros((), dtype=dt, device=eta.device))  # [s < j] β^{j−s}
    kappa = e_mat @ f_mat                                             # κ_{t,s}
    rho = e_mat @ (beta ** (idx + 1).to(dt))                          # ρ_t
    rho_prev = torch.cat([torch.zeros_like(rho[..., :1]), rho[..., :-1]], -1)
    kappa_prev = torch.cat([torch.zeros_like(kappa[..., :1, :]), kappa[..., :-1, :]], -2)
    p_mat = lam[..., :, None] * decay(prev[..., :, None] - cum[..., None, :], strict)  # Φ = P ⊙ ẐẐᵀ
    q_mat = lam[..., :, None] * kappa_prev                            # Ψ = Q ⊙ ẐẐᵀ
    to_end = torch.exp(cum[..., -1:] - cum)                           # e^{Λ_n − Λ_t}
    gain = torch.expm1(cum[..., -1])[..., None, None]                 # Γ − 1
    rho_n = rho[..., -1][..., None, None]
    eye = torch.eye(n, dtype=dt, device=eta.device)
    deltas, new_ms = [], []
    for w, m, (u, z) in zip(ws, ms, factors):
        gram = z @ z.mT
        rhs = -eta[..., None] * u - (lam * torch.exp(prev))[..., None] * (z @ w.mT) \
            + (lam * rho_prev)[..., None] * (z @ m.mT) + (q_mat * gram) @ u
        rows = torch.linalg.solve_triangular(eye + p_mat * gram, rhs, upper=False, unitriangular=True) \
            if op["dgd"] else rhs                                     # R: the value written at each token
        written = to_end[..., None] * rows - kappa[..., -1, :, None] * u
        deltas.append(written.mT @ z + gain * w - rho_n * m)          # W_end − W_start
        new_ms.append(beta ** n * m + (u * (beta ** (n - 1 - idx).to(dt))[:, None]).mT @ z)
    clip = float(op["inner_clip"])
    if math.isinf(clip):
        return [w + d for w, d in zip(ws, deltas)], new_ms
    norm = torch.sqrt(sum(d.pow(2).sum((-2, -1)) for d in deltas).clamp_min(1e-30))
    f = (clip / norm).clamp(max=1.0)[..., None, None]
    return [w + f * d for w, d in zip(ws, deltas)], new_ms


@dataclass
class MemoryState:
    """One memory layer's stream (hope_math §7.2): weights/momentum at each grid's last closed boundary, tokens seen,
    the open chunks' k, v, η, log α (the boundary is fixed until a chunk closes), and the conv tail."""
    weights: Dict[str, List[torch.Tensor]]
    momentum: Dict[str, List[torch.Tensor]]
    position: int
    pending: Dict[str, torch.Tensor]
    conv_tail: Optional[torch.Tensor] = None


def _pieces(position: int, length: int, size: int):
    """(start, n, closes) of each chunk piece of tokens position..position+length−1 on a grid of `size`."""
    out, start, phase = [], 0, position % size
    while start < length:
        stop = min(start + size - phase, length)
        out.append((start, stop - start, phase + stop - start == size))
        start, phase = stop, 0
    return out


def _cat(a: dict, b: dict) -> dict:
    return {c: torch.cat([a[c], b[c]], dim=2) for c in b} if a else b


def _tail(d: dict, n: int) -> dict:
    return {c: t[:, :, t.shape[2] - n:] for c, t in d.items()} if n > 0 else {}


def _sl(d: dict, start: int, n: int) -> dict:
    return {c: t[:, :, start:start + n] for c, t in d.items()}


def _write(ws, ms, kvea, op, self_target):
    """A closed chunk's write: v̂ = M(v) (self-generated, Eqs 84–86) or v (plain Titans), factors, advance, clip."""
    v_hat = memory_apply(ws, kvea["v"]) if self_target else kvea["v"]
    return advance(ws, ms, grad_factors(ws, kvea["k"], v_hat), kvea["eta"], kvea["log_alpha"], op)


def titans_memory(x, q, static: dict, p: dict, op: dict, state: Optional[MemoryState]):
    """y = M_mem(q) read at the chunk-boundary state, [B, H, L, d] (hope_math §2.6, §2.7, §3.6), and the new state.
    Pass 1 (C_proj grid): M_k, M_v, M_η, M_α (M_q) read x̃ at their boundary, giving k, v, η, α, and write with them at
    each chunk end. Pass 2 (C_mem grid): M_mem reads q at its boundary, then writes. State math in fp32 (fp64 inputs
    stay fp64)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = {k: t.to(cdt) for k, t in p.items()}
    xs, qs, st = x.to(cdt), q.to(cdt), {c: t.to(cdt) for c, t in static.items()}
    bsz, length = x.shape[0], x.shape[2]
    names = memory_names(op)[:-1]
    if state is None:
        ws0 = {m: [p[w].unsqueeze(0).expand(bsz, *p[w].shape) for w in weight_names(op, m)] for m in memory_names(op)}
        state = MemoryState(ws0, {m: [torch.zeros_like(w) for w in v] for m, v in ws0.items()}, 0, {})
    pos, c_proj, c_mem = state.position, op["proj_chunk_size"] or op["chunk_size"], op["chunk_size"]
    ws, ms = dict(state.weights), dict(state.momentum)

    if names:  # pass 1: the projection memories (self-referential: they write with what they produced)
        prefix, pieces, reads = _tail(state.pending, pos % c_proj), [], []
        for start, n, closes in _pieces(pos, length, c_proj):
            xc, qc = xs[:, :, start:start + n], qs[:, :, start:start + n]
            o = {m: memory_apply(ws[m], qc if m == "q" else xc) for m in names}
            readout = lambda m: (o[m] @ p[f"{m}_readout"][:, :, None]).squeeze(-1) + p[f"{m}_bias"][:, None]  # noqa: E731
            new = {"k": l2norm(o["k"] if "k" in o else st["k"][:, :, start:start + n]),
                   "v": o["v"] if "v" in o else st["v"][:, :, start:start + n],
                   "eta": op["eta_max"] * torch.sigmoid(readout("eta"))}
            new["log_alpha"] = F.logsigmoid(readout("alpha")) if "alpha" in o else torch.zeros_like(new["eta"])
            pieces.append(new)
            reads.append(l2norm(o["q"]) if "q" in o else qc)
            prefix = _cat(prefix, new)
            if closes:
                for m in names:
                    ws[m], ms[m] = _write(ws[m], ms[m], prefix, op, self_target=True)
                prefix = {}
        kvea = {c: torch.cat([piece[c] for piece in pieces], dim=2) for c in pieces[0]}
        q_read = torch.cat(reads, dim=2)
    else:  # self_mod off: static channels (§2.1, §5.4)
        eta = op["eta_max"] * torch.sigmoid(st["eta"] + p["eta_bias"][:, None])
        la = F.logsigmoid(st["alpha"] + p["alpha_bias"][:, None]) if op["decay"] else torch.zeros_like(eta)
        kvea, q_read = {"k": l2norm(st["k"]), "v": st["v"], "eta": eta, "log_alpha": la}, qs

    prefix, ys = _tail(state.pending, pos % c_mem), []  # pass 2: M_mem
    for start, n, closes in _pieces(pos, length, c_mem):
        qc = q_read[:, :, start:start + n]
        if not op["read_after_update"]:
            ys.append(memory_apply(ws["mem"], qc))                   # read the boundary state τ_m(t)
        prefix = _cat(prefix, _sl(kvea, start, n))
        if closes:
            ws["mem"], ms["mem"] = _write(ws["mem"], ms["mem"], prefix, op, self_target=op["self_mod"])
            prefix = {}
        if op["read_after_update"]:                                   # deltanet preset reads S_t (§10 #15)
            ys.append(memory_apply(ws["mem"], qc))
    end = pos + length
    keep = max(end % c_mem, end % c_proj if names else 0)
    new_state = MemoryState(ws, ms, end, _tail(_cat(state.pending, kvea), keep))
    return torch.cat(ys, dim=2).to(x.dtype), new_state


def causal_conv(x, weight, tail):
    """conv(a)_t = Σ_{j<K} w_j a_{t−j} per channel with a_{≤0} = 0 or the carried tail (§2.1); x [B, L, C], w [C, K]."""
    k = weight.shape[1]
    if tail is None:
        tail = x.new_zeros(x.shape[0], k - 1, x.shape[2])
    padded = torch.cat([tail.to(x.dtype), x], dim=1)
    y = F.conv1d(padded.transpose(1, 2), weight.flip(-1).unsqueeze(1).to(x.dtype), groups=x.shape[2])
    return y.transpose(1, 2), padded[:, padded.shape[1] - (k - 1):]
