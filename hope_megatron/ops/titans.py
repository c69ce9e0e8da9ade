"""titans_memory: the self-modifying Titans memory op (hope_math §2, §3.6), naive or chunked, with streaming.

Both forms share this driver and every boundary evaluation (memory_mlp.py); they differ only in the state
advance over a chunk: naive.advance_token_loop (the token loop of §3.1) or chunked.advance_chunk (§3.4/§3.5).
Per call, two passes over two chunk grids (§2.7, §3.6):
  (1) projection pass on the C_proj grid: M_k, M_v, M_η, M_α (and M_q) read x̃ (and q) at their boundary state,
      giving k, v, η, α for every token; at each chunk end they write with their own k, v, η, α (self-referential);
  (2) memory pass on the C_mem grid: M_mem reads y = M_mem(q) at its boundary state, then writes with v̂ = M_mem(v).
When C_proj = C_mem and M_mem reads the raw q (no M_q), the two passes share every chunk and run as one loop with
M_mem as the fifth memory of the group (same numbers; tests compare both drivers).
The chunked form's backward keeps, per chunk, the boundary state (W, m) and O(n·d_h) activations (§2.8: memory grows
with the number of chunks, never with tokens × state); with cfg.recompute_chunks it keeps only the chunk inputs and
re-runs each chunk step in the backward (activation checkpointing).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .chunked import advance_chunk
from .config import TitansOpConfig, weight_names
from .memory_mlp import apply_clipped_delta, boundary_terms, l2norm, memory_eval, record_clip_scales
from .naive import advance_token_loop
from . import triton as _triton

def _token_loop_clipped(ws, ms, factors, eta, log_alpha, cfg, zw=None):
    """The naive advance (§3.1) followed by the chunk clip (§2.5) on ΔW = W_end − W_start."""
    new_ws, new_ms = advance_token_loop(ws, ms, factors, eta, log_alpha, cfg)
    return apply_clipped_delta(ws, [e - s for s, e in zip(ws, new_ws)], cfg.inner_clip), new_ms


def _chunk_clipped(ws, ms, factors, eta, log_alpha, cfg, zw=None):
    """The closed-form advance (§3.4/§3.5) with the chunk clip (§2.5) fused into its state-sized step."""
    return advance_chunk(ws, ms, factors, eta, log_alpha, cfg, c_clip=cfg.inner_clip, zw=zw)


_ADVANCE = {"naive": _token_loop_clipped, "chunked": _chunk_clipped}
_DROPOUT_HEADS: Optional[Tuple[int, int]] = None   # (first, total): see dropout_heads()


@contextmanager
def dropout_heads(first: int, total: int):
    """Within the block, update-dropout masks (hope_math §2.3) are drawn for all `total` heads and the call's heads
    first..first+H−1 kept, so a tensor-parallel rank's masks are the slice of the single-process ones (the megatron
    mixer forks one RNG stream per layer, the same on every TP rank, around this)."""
    global _DROPOUT_HEADS
    outer, _DROPOUT_HEADS = _DROPOUT_HEADS, (int(first), int(total))
    try:
        yield
    finally:
        _DROPOUT_HEADS = outer


def keep_masks(count: int, shape, keep: float, device) -> List[torch.Tensor]:
    """`count` bool keep-masks of shape [B, H, L, d] (one per projection memory, in group order), drawn from the
    current RNG stream; under dropout_heads(first, total) each is drawn over the total heads and sliced."""
    b, h, length, d = shape
    first, total = _DROPOUT_HEADS if _DROPOUT_HEADS is not None else (0, h)
    if first + h > total:
        raise ValueError(f"dropout_heads(first={first}, total={total}) does not hold this call's {h} heads.")
    return [torch.rand((b, total, length, d), device=device)[:, first:first + h] < keep for _ in range(count)]
_FUSE_GRIDS = True  # one chunk loop for all memories when C_proj = C_mem (tests switch it off to compare)
_CHANNELS = ("k", "v", "eta", "log_alpha")


@dataclass
class TitansState:
    """Streaming state of one layer (hope_math §7.2), local heads, fp32 (fp64 for fp64 inputs).

    weights / momentum: memory name -> per-layer tensors [B, H, d_out, d_in] at the last closed chunk boundary
    of that memory's grid. position: tokens consumed since the sequence start. pending: the last tokens'
    k, v [B, H, P, d_h] and eta, log_alpha [B, H, P], P = tokens in the open chunk of the larger phase: the
    boundary state is fixed until a chunk closes, so these suffice to advance it. Conv tails are the caller's.
    """
    weights: Dict[str, Tuple[torch.Tensor, ...]]
    momentum: Dict[str, Tuple[torch.Tensor, ...]]
    position: int = 0
    pending: Dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> "TitansState":
        """A copy cut from the autograd graph (truncated backprop between stream segments)."""
        return TitansState({m: tuple(w.detach() for w in ws) for m, ws in self.weights.items()},
                           {m: tuple(w.detach() for w in ws) for m, ws in self.momentum.items()},
                           self.position, {c: t.detach() for c, t in self.pending.items()})

    def state_dict(self) -> Dict[str, object]:
        out: Dict[str, object] = {"position": self.position}
        for kind, store in (("weights", self.weights), ("momentum", self.momentum)):
            for m, ws in store.items():
                for i, w in enumerate(ws):
                    out[f"{kind}.{m}.{i}"] = w
        out.update({f"pending.{c}": t for c, t in self.pending.items()})
        return out

    @classmethod
    def from_state_dict(cls, sd: Dict[str, object]) -> "TitansState":
        weights: Dict[str, list] = {}
        momentum: Dict[str, list] = {}
        pending = {}
        for key in sorted(k for k in sd if k != "position"):
            kind, rest = key.split(".", 1)
            if kind == "pending":
                pending[rest] = sd[key]
                continue
            m, i = rest.rsplit(".", 1)
            store = weights if kind == "weights" else momentum
            store.setdefault(m, []).append((int(i), sd[key]))
        tup = lambda d: {m: tuple(t for _, t in sorted(v)) for m, v in d.items()}  # noqa: E731
        return cls(tup(weights), tup(momentum), int(sd["position"]), pending)


def initial_state(params: Dict[str, torch.Tensor], cfg: TitansOpConfig, batch: int,
                  dtype=torch.float32) -> TitansState:
    """S₀: every memory at its meta-learned initial weights (differentiable), zero momentum (§2.2, §2.5)."""
    weights, momentum = {}, {}
    for m in cfg.memory_names():
        ws = tuple(params[n].to(dtype).unsqueeze(0).expand(batch, *params[n].shape) for n in weight_names(cfg, m))
        weights[m] = ws
        momentum[m] = tuple(torch.zeros(w.shape, dtype=dtype, device=w.device) for w in ws)
    return TitansState(weights, momentum, 0, {})


def _readout(o: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w_□ᵀ M_□(x̃_t) + b_□ per (sequence, head, token) (§2.3); o [B, H, n, d], w [H, d], b [H]."""
    return (o @ w[:, :, None]).squeeze(-1) + b[:, None]


def _static_channels(st: Dict[str, torch.Tensor], p, cfg: TitansOpConfig) -> Dict[str, torch.Tensor]:
    """self_mod off: k = ℓ2norm(k̃), v = ṽ, η = η_max s(η̃ + b_η), α = s(α̃ + b_α) (hope_math §2.1, §5.4)."""
    eta = cfg.eta_max * torch.sigmoid(st["eta"] + p["eta_bias"][:, None])
    la = F.logsigmoid(st["alpha"] + p["alpha_bias"][:, None]) if cfg.decay else torch.zeros_like(eta)
    return {"k": l2norm(st["k"]), "v": st["v"], "eta": eta, "log_alpha": la}


def _cat(prefix: Dict[str, torch.Tensor], new: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if not prefix:
        return new
    return {c: torch.cat([prefix[c], new[c]], dim=2) for c in _CHANNELS}


def _write(ws, ms, kvea, cfg, advance, self_target, read=None):
    """Steps (a)–(c) of §3.1 for one closed chunk: the read at the boundary (optional) and the inner-gradient
    factors there (§2.4), then advance + clip (§2.5, §3.4–3.5). Returns (y or None, ws, ms)."""
    y, factors, zw = boundary_terms(ws, kvea["k"], kvea["v"], self_target, read)
    return (y, *advance(ws, ms, factors, kvea["eta"], kvea["log_alpha"], cfg, zw))


def _proj_chunk(ws, ms, x_c, q_c, st_c, mask_c, prefix, p, *, names, cfg, advance, write, with_mem=False):
    """One C_proj chunk: read k, v, η, α (and q) at the boundary for its new tokens, then write if it closes.

    with_mem (C_proj = C_mem, no M_q): M_mem is the last memory of the group, so its read y = M_mem(q_t) at τ_m(t)
    and its write (same chunk, same k, v, η, α, self-generated target) are batched with the projection memories';
    the chunk then returns y where it would return the queries."""
    z = torch.stack([q_c if m == "q" else x_c for m in names] + ([q_c] if with_mem else []))  # M_q, M_mem read q
    o_all = memory_eval(ws, z, mask_c).unbind(0)                       # M_□(x̃_t) at τ_p(t), §2.3
    o = dict(zip(names, o_all))
    new = {
        "k": l2norm(o["k"] if "k" in o else st_c["k"]),                # k_t = ℓ2norm(M_k(x̃_t))
        "v": o["v"] if "v" in o else st_c["v"],                        # v_t = M_v(x̃_t)
        "eta": cfg.eta_max * torch.sigmoid(_readout(o["eta"], p["eta_readout"], p["eta_bias"])),
    }
    new["log_alpha"] = (F.logsigmoid(_readout(o["alpha"], p["alpha_readout"], p["alpha_bias"]))  # log α_t in fp32+
                        if "alpha" in o else torch.zeros_like(new["eta"]))                         # decay off: α ≡ 1
    out = o_all[-1] if with_mem else (l2norm(o["q"]) if "q" in o else q_c)  # y (§2.6), or the queries for pass 2
    if write:   # v̂_□ = M_□(v_t), self-generated (Eq 84–86)
        _, ws, ms = _write(ws, ms, _cat(prefix, new), cfg, advance, self_target=True)
    return new, out, ws, ms


def _mem_chunk(ws, ms, q_c, kvea_c, prefix, *, cfg, advance, write):
    """One C_mem chunk: read y = M_mem(q_t) at τ_m(t) (§2.6), then write if the chunk closes; plain Titans
    writes toward v̂ = v (§2.4). The read shares the boundary matmuls with the write when both happen."""
    if not write:
        return (None if cfg.read_after_update else memory_eval(ws, q_c)[0]), ws, ms
    read = None if cfg.read_after_update else q_c
    y, ws, ms = _write(ws, ms, _cat(prefix, kvea_c), cfg, advance, self_target=cfg.self_mod, read=read)
    if cfg.read_after_update:
        return memory_eval(ws, q_c)[0], ws, ms                         # deltanet preset reads S_t (§10 #15)
    return y[0], ws, ms


def _chunks(position: int, length: int, size: int):
    """[(n_tokens, closes)] of each chunk piece of tokens position..position+length−1 on a grid of `size`."""
    out, start, phase = [], 0, position % size
    while start < length:
        stop = min(start + size - phase, length)
        out.append((stop - start, phase + stop - start == size))
        start, phase = stop, 0
    return out


def _split(t: Optional[torch.Tensor], sizes: List[int], dim: int = 2):
    """Chunk pieces by one split (its backward is one cat, not a full-size zero fill per slice)."""
    return [None] * len(sizes) if t is None else list(torch.split(t, sizes, dim=dim))


def _split_dict(d: Dict[str, torch.Tensor], sizes: List[int]) -> List[Dict[str, torch.Tensor]]:
    parts = {c: _split(t, sizes) for c, t in d.items()}
    return [{c: parts[c][i] for c in d} for i in range(len(sizes))]


def _run(fn, recompute, *args):
    return checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)


def _stack(state: TitansState, names, which: str) -> List[torch.Tensor]:
    store = getattr(state, which)
    return [torch.stack([store[m][i] for m in names]) for i in range(len(store[names[0]]))]


def _tail(pending: Dict[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    return {c: t[:, :, t.shape[2] - n:] for c, t in pending.items()} if n > 0 else {}


def _check(x, q, params, cfg, static, state, impl):
    if impl not in _ADVANCE and impl not in ("auto", "triton"):
        raise ValueError(f"titans_memory: impl={impl!r} is unknown; use 'auto', 'triton', 'chunked' (training) or "
                         f"'naive' (reference).")
    if x.dim() != 4 or q.shape != x.shape:
        raise ValueError(f"titans_memory: x and q must both be [B, H, L, d_h]; got {tuple(x.shape)} and {tuple(q.shape)}.")
    want = set(cfg.static_channels())
    got = set(static or {})
    if got != want:
        raise ValueError(f"titans_memory: static must hold exactly {sorted(want)} for this config; got {sorted(got)}.")
    b, h, length, _ = x.shape
    for c in want:
        shape = (b, h, length) + (() if c in ("eta", "alpha") else (x.shape[-1],))
        if tuple(static[c].shape) != shape:
            raise ValueError(f"titans_memory: static[{c!r}] must be {shape}; got {tuple(static[c].shape)}.")
    w = params[weight_names(cfg, "mem")[0]]
    if w.shape[0] != h or w.shape[1] != x.shape[-1]:
        raise ValueError(f"titans_memory: params hold {w.shape[0]} heads of width {w.shape[1]} but x is "
                         f"{tuple(x.shape)}; pass the local heads' slice of every parameter.")
    if state is not None and state.weights["mem"][0].shape[0] != b:
        raise ValueError(f"titans_memory: state was built for batch {state.weights['mem'][0].shape[0]}, x has {b}.")


def titans_memory(x: torch.Tensor, q: torch.Tensor, params: Dict[str, torch.Tensor], cfg: TitansOpConfig,
                  static: Optional[Dict[str, torch.Tensor]] = None, state: Optional[TitansState] = None,
                  return_state: bool = False, impl: Optional[str] = None, training: bool = False,
                  stats: Optional[Dict[str, torch.Tensor]] = None):
    """y = M_mem(q) read at the chunk-boundary state (hope_math §2), [B, H, L, d_h]; see the Ops contract.

    x: x̃ after conv+SiLU; q after conv+SiLU+ℓ2norm; static: cfg.static_channels() ("k"/"v" [B, H, L, d_h],
    "eta"/"alpha" [B, H, L] logits). state=None starts from the meta-init. Returns y, or (y, new_state).
    impl: None = cfg.impl; "auto" = "triton" for CUDA inputs when Triton imports, else "chunked"; "triton" runs the
    fused kernels (ops/triton) where they cover the settings and otherwise the chunked form, saying why once.
    stats: a dict that receives the chunk clip's statistics (memory_mlp.record_clip_scales).
    """
    impl = impl or cfg.impl
    _check(x, q, params, cfg, static, state, impl)
    if impl == "auto":
        impl = "triton" if x.is_cuda and _triton.available() else "chunked"
    if impl == "triton":
        reason = _triton.unsupported(x, cfg, state, training)
        if reason is None:
            return _triton.titans_memory_triton(x, q, params, cfg, static, state, return_state, training, stats)
        _triton.log_fallback(reason)
        impl = "chunked"
    with record_clip_scales(stats):
        return _titans_memory_torch(x, q, params, cfg, static, state, return_state, impl, training)


def _titans_memory_torch(x, q, params, cfg, static, state, return_state, impl, training):
    """The naive and chunked forms: one driver, two advances (module docstring)."""
    bsz, heads, length, _ = x.shape
    if length == 0:
        return (x.new_zeros(x.shape), state) if return_state else x.new_zeros(x.shape)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32   # state and gate math dtype (§3.7)
    advance = _ADVANCE[impl]
    recompute = impl == "chunked" and cfg.recompute_chunks and torch.is_grad_enabled()
    p = {n: t.to(cdt) for n, t in params.items()}
    xs, qs = x.to(cdt), q.to(cdt)
    st = {c: t.to(cdt) for c, t in (static or {}).items()}
    if state is None:
        state = initial_state(p, cfg, bsz, cdt)
    pos = state.position
    end = pos + length
    names = cfg.projection_memories()

    # One pass when both grids coincide (and M_mem reads the raw q): M_mem joins the projection memories' group,
    # every chunk step then covers all five memories at once (§3.6 steps 2 and 3 share their chunks).
    fused = bool(names) and _FUSE_GRIDS and "q" not in names and cfg.proj_chunk == cfg.mem_chunk \
        and not cfg.read_after_update
    group = names + (("mem",) if fused else ())

    # (1) projection pass on the C_proj grid (§3.6 step 2)
    new_w, new_m, q_read, ys = {}, {}, qs, []
    if not names:
        kvea = _static_channels(st, p, cfg)
    else:
        masks = None
        if training and cfg.update_dropout > 0:  # update dropout on M_k, M_v, M_η, M_α's residual branch (§2.3)
            keep = 1.0 - cfg.update_dropout
            drawn = iter(keep_masks(sum(m not in ("q", "mem") for m in group), xs.shape, keep, xs.device))
            masks = torch.stack([next(drawn).to(cdt) / keep if m not in ("q", "mem") else torch.ones_like(xs)
                                 for m in group])
        ws, ms = _stack(state, group, "weights"), _stack(state, group, "momentum")
        prefix = _tail(state.pending, pos % cfg.proj_chunk)
        pieces, outs = [], []
        grid = _chunks(pos, length, cfg.proj_chunk)
        sizes = [n for n, _ in grid]
        inputs = zip(_split(xs, sizes), _split(qs, sizes), _split_dict(st, sizes), _split(masks, sizes, dim=3))
        for i, ((_, closes), (x_c, q_c, st_c, mask_c)) in enumerate(zip(grid, inputs)):
            write = closes and (return_state or i < len(grid) - 1)  # the last write matters only to a returned state
            fn = partial(_proj_chunk, names=names, cfg=cfg, advance=advance, write=write, with_mem=fused)
            new, out, ws, ms = _run(fn, recompute, ws, ms, x_c, q_c, st_c, mask_c, prefix, p)
            pieces.append(new)
            outs.append(out)
            prefix = {}
        kvea = {c: torch.cat([piece[c] for piece in pieces], dim=2) for c in _CHANNELS}
        new_w = {m: tuple(w[g] for w in ws) for g, m in enumerate(group)}
        new_m = {m: tuple(w[g] for w in ms) for g, m in enumerate(group)}
        if fused:
            ys = outs
        else:
            q_read = torch.cat(outs, dim=2)

    # (2) memory pass on the C_mem grid (§3.6 step 3)
    if not fused:
        ws, ms = _stack(state, ("mem",), "weights"), _stack(state, ("mem",), "momentum")
        prefix = _tail(state.pending, pos % cfg.mem_chunk)
        grid = _chunks(pos, length, cfg.mem_chunk)
        sizes = [n for n, _ in grid]
        for i, ((_, closes), q_c, kvea_c) in enumerate(zip(grid, _split(q_read, sizes), _split_dict(kvea, sizes))):
            write = closes and (return_state or i < len(grid) - 1 or cfg.read_after_update)
            fn = partial(_mem_chunk, cfg=cfg, advance=advance, write=write)
            y, ws, ms = _run(fn, recompute, ws, ms, q_c, kvea_c, prefix)
            ys.append(y)
            prefix = {}
        new_w["mem"], new_m["mem"] = tuple(w[0] for w in ws), tuple(w[0] for w in ms)
    y = torch.cat(ys, dim=2).to(x.dtype) if ys else x.new_zeros(x.shape)
    if not return_state:
        return y

    # the open chunks' tokens (§7.2): the last max(end mod C_proj, end mod C_mem) tokens' k, v, η, log α
    keep = max(end % cfg.mem_chunk, end % cfg.proj_chunk if names else 0)
    pending = _tail(_cat(state.pending, kvea), keep)
    return y, TitansState(dict(state.weights, **new_w), dict(state.momentum, **new_m), end, pending)
