"""Packed documents for the Titans memory (`--hope-reset-at-eod`, hope_math §2.7): every document start acts as a
sequence start — the state returns to the meta-init, the chunk grid restarts, the conv does not look back.

titans_memory itself knows only whole sequences, so this module repacks instead of touching the op: each row's
documents become rows of their own, the op runs on them (any impl: naive, chunked, triton), and the outputs are
scattered back. Fresh documents whose final state nobody needs are grouped by length (powers of two) and padded at
their end, which is causal: padding follows a document's last token, so it changes nothing before it and at most
doubles the memory op's work. A piece whose state carries over from the previous call (streaming) or whose final state
is returned runs unpadded (pieces of equal length and start position share one call), so streamed states are exact.
The conv side is ops.conv.causal_conv1d(..., starts=...).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch

from .config import TitansOpConfig
from .titans import TitansState, titans_memory


def document_starts(tokens: torch.Tensor, eod: int, first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool [B, L]: True at t where a document begins, i.e. the token before t is the EOD token (megatron's GPT
    datasets append EOD to every document). first [B] bool: whether position 0 begins one (the previous segment of a
    stream ended with EOD); default False (a sequence start is a reset anyway)."""
    out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    out[:, 1:] = tokens[:, :-1] == eod
    if first is not None:
        out[:, 0] = first.to(device=tokens.device, dtype=torch.bool)
    return out


class DocumentStates(list):
    """Per-row streaming states (B entries, each a batch-1 TitansState, or None = the meta-init): rows of a batch sit
    at different positions of their documents, so they cannot share one TitansState."""

    def detach(self) -> "DocumentStates":
        return DocumentStates(None if s is None else s.detach() for s in self)


def stack_states(states: List[TitansState]) -> TitansState:
    """Batch-1 states at the same position -> one batch-n state."""
    cat = lambda parts: tuple(torch.cat(ws, dim=0) for ws in zip(*parts))  # noqa: E731
    return TitansState({m: cat([s.weights[m] for s in states]) for m in states[0].weights},
                       {m: cat([s.momentum[m] for s in states]) for m in states[0].momentum},
                       states[0].position,
                       {c: torch.cat([s.pending[c] for s in states], dim=0) for c in states[0].pending})


def unstack_state(state: TitansState) -> List[TitansState]:
    n = state.weights["mem"][0].shape[0]
    pick = lambda store, j: {m: tuple(w[j:j + 1] for w in ws) for m, ws in store.items()}  # noqa: E731
    return [TitansState(pick(state.weights, j), pick(state.momentum, j), state.position,
                        {c: t[j:j + 1] for c, t in state.pending.items()}) for j in range(n)]


class _Piece:
    __slots__ = ("row", "start", "stop", "state", "last")

    def __init__(self, row, start, stop, state, last):
        self.row, self.start, self.stop, self.state, self.last = row, start, stop, state, last

    @property
    def length(self) -> int:
        return self.stop - self.start


def _pieces(starts: torch.Tensor, states, length: int) -> List[_Piece]:
    cuts, reset = defaultdict(list), set()
    for b, t in starts.nonzero().tolist():  # the one host sync
        if t > 0:
            cuts[b].append(t)
        else:
            reset.add(b)
    out = []
    for b in range(starts.shape[0]):
        bounds = [0] + cuts[b] + [length]
        for j in range(len(bounds) - 1):
            carried = states[b] if (j == 0 and states is not None and b not in reset) else None
            out.append(_Piece(b, bounds[j], bounds[j + 1], carried, j == len(bounds) - 2))
    return out


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t [B, H, L, *rest] -> [n, H, Lg, *rest] at flat time indices index [n, Lg] (index B·L is a zero pad row)."""
    b, h, length = t.shape[:3]
    flat = t.movedim(2, 1).reshape(b * length, h, *t.shape[3:])
    flat = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])
    n, lg = index.shape
    return flat[index.reshape(-1)].reshape(n, lg, h, *t.shape[3:]).movedim(1, 2)


def titans_memory_documents(x: torch.Tensor, q: torch.Tensor, params: Dict[str, torch.Tensor], cfg: TitansOpConfig,
                            starts: torch.Tensor, static: Optional[Dict[str, torch.Tensor]] = None,
                            state: Optional[List[Optional[TitansState]]] = None, return_state: bool = False,
                            impl: Optional[str] = None, training: bool = False,
                            stats: Optional[Dict[str, torch.Tensor]] = None):
    """titans_memory over packed documents (module docstring); same inputs, plus starts bool [B, L] (True where a
    document begins; at t = 0 it discards the carried state). state: None or B per-row states (DocumentStates, None
    entries = the meta-init). Returns y [B, H, L, d_h], or (y, DocumentStates of the rows' final states)."""
    bsz, heads, length, dim = x.shape
    if tuple(starts.shape) != (bsz, length):
        raise ValueError(f"titans_memory_documents: starts must be [B, L] = {(bsz, length)}, got "
                         f"{tuple(starts.shape)}.")
    if state is not None and len(state) != bsz:
        raise ValueError(f"titans_memory_documents: state holds {len(state)} rows, x has {bsz}.")
    if length == 0:
        y = x.new_zeros(x.shape)
        return (y, DocumentStates(state if state is not None else [None] * bsz)) if return_state else y
    static = static or {}
    run = lambda xs, qs, st, s0, ret: titans_memory(  # noqa: E731
        xs, qs, params, cfg, static=st or None, state=s0, return_state=ret, impl=impl, training=training, stats=stats)
    pieces = _pieces(starts, state, length)
    groups: Dict[Tuple, List[_Piece]] = defaultdict(list)
    for p in pieces:
        exact = p.state is not None or (return_state and p.last)
        if exact:  # unpadded; equal length and start position share a call
            groups[("exact", p.length, None if p.state is None else p.state.position)].append(p)
        else:      # fresh, state not needed: padded to the longest of its power-of-two length bucket
            groups[("bucket", (p.length - 1).bit_length())].append(p)
    finals: List[Optional[TitansState]] = [None] * bsz
    idx_parts, y_parts = [], []
    for key, members in groups.items():
        lg = max(p.length for p in members)
        pos = torch.arange(lg)
        index = torch.stack([torch.where(pos < p.length, p.row * length + p.start + pos,
                                         torch.full_like(pos, bsz * length)) for p in members]).to(x.device)
        xs, qs = _gather(x, index), _gather(q, index)
        st = {c: _gather(t, index) for c, t in static.items()}
        if key[0] == "exact":
            s0 = None if members[0].state is None else stack_states([p.state for p in members])
            y_g, s1 = run(xs, qs, st, s0, True)
            for p, s in zip(members, unstack_state(s1)):
                if p.last:
                    finals[p.row] = s
        else:
            y_g = run(xs, qs, st, None, False)
        valid = index < bsz * length
        idx_parts.append(index[valid])
        y_parts.append(y_g.movedim(2, 1)[valid])                     # [tokens, H, d]
    flat = x.new_zeros(bsz * length, heads, dim).index_copy(0, torch.cat(idx_parts), torch.cat(y_parts).to(x.dtype))
    y = flat.reshape(bsz, length, heads, dim).movedim(1, 2)
    return (y, DocumentStates(finals)) if return_state else y
