"""Causal depthwise convolution with a carried tail for streaming (hope_math §2.1, §7.2)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, tail: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv(a)_{t,c} = Σ_{j=0..K−1} w_{c,j} a_{t−j,c}, with a_{≤0} = 0 at a sequence start (hope_math §2.1).

    x: [B, L, C]; weight: [C, K] (w[:, 0] multiplies the current token); tail: [B, K−1, C], the last K−1
    pre-conv inputs of the previous segment (None = sequence start). Returns (y [B, L, C], new tail [B, K−1, C]),
    so that convolving a sequence in pieces with the carried tail equals convolving it whole. No activation
    is applied here (the layer applies SiLU). `bias` [C] is an optional extension of the contract.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"causal_conv1d: expected x [B, L, C] and weight [C, K] with matching C, got "
                         f"x {tuple(x.shape)} and weight {tuple(weight.shape)}.")
    bsz, _, ch = x.shape
    k = weight.shape[1]
    if tail is None:
        tail = x.new_zeros(bsz, k - 1, ch)
    elif tail.shape != (bsz, k - 1, ch):
        raise ValueError(f"causal_conv1d: tail must be [B, K-1, C] = {(bsz, k - 1, ch)}, got {tuple(tail.shape)}; "
                         f"pass the tail returned by the previous call on the same stream.")
    padded = torch.cat([tail.to(x.dtype), x], dim=1)                  # [B, K−1+L, C]
    # F.conv1d correlates: out_t = Σ_i w'_i in_{t+i}; lag j = K−1−i, so w' is w flipped along K.
    y = F.conv1d(padded.transpose(1, 2), weight.flip(-1).unsqueeze(1).to(x.dtype),
                 bias=None if bias is None else bias.to(x.dtype), groups=ch).transpose(1, 2)
    return y, padded[:, padded.shape[1] - (k - 1):, :]
