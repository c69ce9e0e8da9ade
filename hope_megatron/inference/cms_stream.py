"""Test-time CMS: the streaming regime of the Continuum Memory System (hope_math.md §4.4, NL Eq 31 with periods in tokens).

A stream is processed in segments of S_seg tokens; everything except the CMS levels is frozen. Per segment:
  1. forward with the current weights and the carried mixer state; record ℓ_t = -log p(x_{t+1} | x_{<=t}) before any
     update that has seen x_{t+1} (predict, then learn); the segment's last logits are carried to predict the next
     segment's first token (its term is recorded, not differentiated: the state entering a segment is a constant);
  2. backward of Σ_t ℓ_t into the CMS parameters only (the carried state is detached: truncation);
  3. per level: A_l += grad, n_l += S_seg; when n_l = P_l: g = clip(A_l / P_l, c_l), m_l <- μ_l m_l + g (if μ_l > 0),
     θ_l <- θ_l - η_l (m_l or g); A_l, n_l <- 0.
η_l = 0 freezes a level; all-zero η reproduces the static model exactly. Models without a CMS (one MLP per layer)
get one level made of every layer's MLP, a "test-time MLP fine-tuning" baseline.

Segments lie on the stream's own grid (multiples of S_seg), whatever the cuts between feed() calls: a call that ends
inside a segment runs its tokens (their NLL is final, since the weights change only when a segment closes) and keeps
the segment's graph open, carried state and last logits included, so that when the segment closes its loss (every
pair inside it, also those crossing a feed() cut) is differentiated exactly as if it had come in one call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

DEFAULT_TEST_PERIODS = (512, 2048, 16384, 65536)  # hope_math §4.4
_LEVEL = re.compile(r"\.mlp\.levels\.(\d+)\.")


def cms_level_params(model) -> Dict[int, List[torch.nn.Parameter]]:
    """{level: parameters}; CMS levels by name (`...mlp.levels.{l}....`), else level 0 = every layer's MLP."""
    levels: Dict[int, List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        m = _LEVEL.search(name)
        if m:
            levels.setdefault(int(m.group(1)), []).append(p)
    if not levels:
        levels[0] = [p for n, p in model.named_parameters() if ".mlp." in n or ".pre_mlp_layernorm." in n]
    return dict(sorted(levels.items()))


@dataclass
class TestTimeCMSConfig:
    periods: List[int] = field(default_factory=lambda: list(DEFAULT_TEST_PERIODS))
    lr: List[float] = field(default_factory=lambda: [1e-3, 3e-4, 1e-4, 3e-5])
    clip: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    momentum: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    segment: Optional[int] = None  # S_seg; default P_1

    def for_levels(self, k: int) -> "TestTimeCMSConfig":
        """The first k entries of every list (a model with fewer levels), checked."""
        for name in ("periods", "lr", "clip", "momentum"):
            if len(getattr(self, name)) < k:
                raise ValueError(f"test-time CMS {name} has {len(getattr(self, name))} entries but the model has {k} "
                                 f"levels; give one value per level.")
        cfg = TestTimeCMSConfig(self.periods[:k], self.lr[:k], self.clip[:k], self.momentum[:k], self.segment)
        seg = cfg.segment or cfg.periods[0]
        bad = [p for p in cfg.periods if p % seg]
        if bad:
            raise ValueError(f"segment={seg} must divide every test-time period (not {bad}); pick periods that are "
                             f"multiples of the segment (hope_math §4.4).")
        cfg.segment = seg
        return cfg


class TestTimeCMS:
    """Streams tokens through `model` with test-time CMS updates; `feed(tokens)` returns the per-token NLL."""

    def __init__(self, model, cfg: TestTimeCMSConfig):
        self.model = model
        self.levels = cms_level_params(model)
        self.cfg = cfg.for_levels(len(self.levels))
        cms_ids = {id(p) for ps in self.levels.values() for p in ps}
        for p in model.parameters():
            p.requires_grad_(id(p) in cms_ids)
        self.acc = {l: [torch.zeros_like(p) for p in ps] for l, ps in self.levels.items()}
        self.mom = {l: [torch.zeros_like(p) for p in ps] for l, ps in self.levels.items()}
        self.count = {l: 0 for l in self.levels}
        self.updates = {l: 0 for l in self.levels}
        self.state = None
        self.carry: Optional[torch.Tensor] = None  # last logits fed [B, V]; attached to the graph inside a segment
        self.loss: Optional[torch.Tensor] = None  # Σ ℓ_t of the open segment so far (differentiable)
        self.tokens_seen = 0

    def _piece(self, piece: torch.Tensor, closes: bool) -> torch.Tensor:
        """Tokens of one segment (all of it, or the part this feed() call holds); closes: the segment ends here."""
        learn = any(lr != 0 for lr in self.cfg.lr)
        logits, state = self.model(piece, self.state, return_state=True)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, piece[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, n-1]
        first = None
        if self.carry is not None:
            first = -torch.log_softmax(self.carry, dim=-1).gather(-1, piece[:, :1])  # [B, 1]
        if learn:  # the pair entering the segment is recorded only (truncation); a pair inside it is learned from
            inside = first is not None and self.tokens_seen % self.cfg.segment != 0
            part = nll.sum() + (first.sum() if inside else 0.0)
            self.loss = part if self.loss is None else self.loss + part
        out = nll.detach() if first is None else torch.cat([first.detach(), nll.detach()], dim=1)
        keep_graph = learn and not closes
        self.state = state if keep_graph else _detach(state)
        self.carry = logits[:, -1].float() if keep_graph else logits[:, -1].detach().float()
        if closes:
            self._learn()
            self._clock(self.cfg.segment)
        return out

    def _learn(self) -> None:
        """Backward of the closed segment's loss into the CMS parameters (hope_math §4.4 step 2)."""
        loss, self.loss = self.loss, None
        if loss is None or not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            return
        params = [p for ps in self.levels.values() for p in ps]
        grads = iter(torch.autograd.grad(loss, params, allow_unused=True))
        for l, ps in self.levels.items():
            for a, g in zip(self.acc[l], [next(grads) for _ in ps]):
                if g is not None:
                    a.add_(g)

    @torch.no_grad()
    def _clock(self, n: int) -> None:
        for i, (l, ps) in enumerate(self.levels.items()):
            self.count[l] += n
            period = self.cfg.periods[i]
            if self.count[l] < period:
                continue
            g = [a / period for a in self.acc[l]]
            norm = torch.sqrt(sum((x.float() ** 2).sum() for x in g))
            scale = min(1.0, self.cfg.clip[i] / max(float(norm), 1e-12))
            for p, gi, m in zip(ps, g, self.mom[l]):
                step = gi * scale
                if self.cfg.momentum[i] > 0:
                    m.mul_(self.cfg.momentum[i]).add_(step)
                    step = m
                p.sub_(self.cfg.lr[i] * step)
            for a in self.acc[l]:
                a.zero_()
            self.count[l] = 0
            self.updates[l] += 1

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stream tokens [B, L] (L any length; segments lie on the stream's own grid, so the result does not depend
        on how the stream is cut into calls). Returns NLL [B, L] of every token predicted inside this call (the
        stream's very first token has no prediction)."""
        seg = self.cfg.segment
        out = []
        start = 0
        while start < tokens.shape[1]:
            n = min(seg - self.tokens_seen % seg, tokens.shape[1] - start)
            closes = (self.tokens_seen + n) % seg == 0
            out.append(self._piece(tokens[:, start:start + n], closes))
            self.tokens_seen += n
            start += n
        return torch.cat(out, dim=1) if out else tokens.new_zeros(tokens.shape[0], 0, dtype=torch.float32)


def _detach(state):
    from hope_megatron.inference.model import StreamState

    layers = []
    for st in state.layers:
        if isinstance(st, tuple) and len(st) == 2 and hasattr(st[0], "detach"):  # (TitansState, conv tail)
            layers.append((st[0].detach(), st[1].detach()))
        elif isinstance(st, tuple) and len(st) == 3:  # attention (k, v, position)
            layers.append((st[0].detach(), st[1].detach(), st[2]))
        else:
            layers.append(st)
    return StreamState(layers, state.position, state.last_eod)


def static_nll(model, tokens: torch.Tensor, segment: int) -> torch.Tensor:
    """The static model's streamed NLL of tokens[:, 1:] (reference for all-zero learning rates)."""
    with torch.no_grad():
        return model.token_nll(tokens, segment=segment)


__all__ = ["TestTimeCMS", "TestTimeCMSConfig", "cms_level_params", "static_nll"]
