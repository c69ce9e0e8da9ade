"""Causal depthwise convolution with a carried tail for streaming (hope_math §2.1, §7.2), optionally document-aware
(`--hope-reset-at-eod`, hope_math §2.7: the conv does not look back across a document start)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, tail: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None,
                  starts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv(a)_{t,c} = Σ_{j=0..K−1} w_{c,j} a_{t−j,c}, with a_{≤0} = 0 at a sequence start (hope_math §2.1).

    x: [B, L, C] (L may be 0); weight: [C, K] (w[:, 0] multiplies the current token); tail: [B, K−1, C], the last
    K−1 pre-conv inputs of the previous segment (None = sequence start). Returns (y [B, L, C], new tail [B, K−1, C]),
    so that convolving a sequence in pieces with the carried tail equals convolving it whole. No activation
    is applied here (the layer applies SiLU). `bias` [C] is an optional extension of the contract.
    starts: optional bool [B, L], True where a document begins: a_{s} for s before the latest start ≤ t counts as 0
    (hope_math §2.7), and the returned tail holds zeros before the segment's last start, so the next segment does not
    look back across it either.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"causal_conv1d: expected x [B, L, C] and weight [C, K] with matching C, got "
                         f"x {tuple(x.shape)} and weight {tuple(weight.shape)}.")
    bsz, length, ch = x.shape
    k = weight.shape[1]
    if tail is None:
        tail = x.new_zeros(bsz, k - 1, ch)
    elif tail.shape != (bsz, k - 1, ch):
        raise ValueError(f"causal_conv1d: tail must be [B, K-1, C] = {(bsz, k - 1, ch)}, got {tuple(tail.shape)}; "
                         f"pass the tail returned by the previous call on the same stream.")
    if starts is not None and tuple(starts.shape) != (bsz, length):
        raise ValueError(f"causal_conv1d: starts must be [B, L] = {(bsz, length)}, got {tuple(starts.shape)}.")
    padded = torch.cat([tail.to(x.dtype), x], dim=1)                  # [B, K−1+L, C]
    new_tail = padded[:, padded.shape[1] - (k - 1):, :]
    if length == 0:  # nothing to convolve (F.conv1d refuses an input shorter than its kernel); the tail carries on
        return x.new_zeros(bsz, 0, ch), new_tail
    if starts is not None and bool(starts.any()):
        return _document_conv(padded, weight.to(x.dtype), bias, starts, k, length)
    # F.conv1d correlates: out_t = Σ_i w'_i in_{t+i}; lag j = K−1−i, so w' is w flipped along K.
    y = F.conv1d(padded.transpose(1, 2), weight.flip(-1).unsqueeze(1).to(x.dtype),
                 bias=None if bias is None else bias.to(x.dtype), groups=ch).transpose(1, 2)
    return y, new_tail


def tokens_since_start(starts: torch.Tensor) -> torch.Tensor:
    """[B, L] long: t minus the latest document start ≤ t, or a large number where no start precedes t."""
    pos = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    last = torch.where(starts, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    return torch.where(last >= 0, pos - last, torch.full_like(pos, torch.iinfo(torch.int32).max))


def _document_conv(padded, weight, bias, starts, k, length):
    """The conv as K shifted products, lag j counting only where the token t−j is in t's document."""
    since = tokens_since_start(starts).unsqueeze(-1)                 # [B, L, 1]
    y = None
    for j in range(k):  # lag j reads padded position (K−1) + t − j
        term = padded[:, k - 1 - j:k - 1 - j + length] * weight[:, j] * (since >= j).to(padded.dtype)
        y = term if y is None else y + term
    if bias is not None:
        y = y + bias.to(y.dtype)
    # the carried tail: zero every entry before the last start (positions L−K+1 .. L−1 of this segment)
    last = since[:, -1, 0]                                           # tokens since the last start at t = L−1
    tail_t = torch.arange(length - (k - 1), length, device=padded.device)     # segment position of each tail entry
    keep = (tail_t[None, :] >= (length - 1 - last)[:, None]) | (last[:, None] >= length)
    return y, padded[:, padded.shape[1] - (k - 1):, :] * keep.unsqueeze(-1).to(padded.dtype)
