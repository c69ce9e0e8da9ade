"""Map between a rank's parameters and the single-process (TP=1, PP=1) model's full tensors.

`global_name(model, local_name)` renames this stage's `decoder.layers.{i}.` to the global layer index;
`shard_full_tensor(model, local_name, full)` cuts this rank's piece out of a full tensor, honouring megatron's
partition_dim / partition_stride attributes and the Titans mixer's component-major fused in_proj and conv
(hope_math.md §6.1). `load_full_state_dict` copies a TP=1/PP=1 state dict into any TP/PP layout: parity tests build
every layout from the same full weights with it, and the converter's inverse is the same map read backwards.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping

import torch
from megatron.core import parallel_state

from hope_megatron.layers.titans_mixer import TitansMixer, shard_components

_LAYER_RE = re.compile(r"^(.*?decoder\.layers\.)(\d+)\.(.*)$")


def global_name(model, local_name: str) -> str:
    """The parameter's name in the TP=1/PP=1 model (global layer index)."""
    m = _LAYER_RE.match(local_name)
    if not m:
        return local_name
    layer = model.decoder.layers[int(m.group(2))]
    return f"{m.group(1)}{layer.layer_number - 1}.{m.group(3)}"


def fused_mixer_params(model) -> Dict[str, tuple]:
    """local param name -> (mixer, components) for each mixer's fused in_proj.weight and conv_weight."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, TitansMixer):
            out[f"{mod_name}.in_proj.weight"] = (mod, mod.components)
            out[f"{mod_name}.conv_weight"] = (mod, mod.conv_components)
    return out


def shard_full_tensor(model, local_name: str, full: torch.Tensor, _fused=None, _param=None) -> torch.Tensor:
    """This rank's piece of `full` for parameter `local_name` (`_param`: that parameter, when the caller has it)."""
    p = _param if _param is not None else dict(model.named_parameters())[local_name]
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    fused = _fused if _fused is not None else fused_mixer_params(model)
    if local_name in fused:
        mixer, comps = fused[local_name]
        return shard_components(full, comps, mixer.num_heads, tp_size, tp_rank)
    if not getattr(p, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = p.partition_dim, getattr(p, "partition_stride", 1)
    pieces = full.chunk(stride, dim=dim)  # strided layout (e.g. SwiGLU fc1 = [gate; up]): each part split by rank
    return torch.cat([piece.chunk(tp_size, dim=dim)[tp_rank] for piece in pieces], dim=dim)


@torch.no_grad()
def load_full_state_dict(model, full_sd: Mapping[str, torch.Tensor]) -> None:
    """Copy the TP=1/PP=1 tensors `full_sd` into this rank's parameters; every parameter must be present."""
    fused = fused_mixer_params(model)
    for name, p in model.named_parameters():
        key = global_name(model, name)
        if key not in full_sd:
            raise KeyError(f"load_full_state_dict: {key!r} (local {name!r}) is missing from the full state dict; "
                           f"was it saved from a model of the same config?")
        piece = shard_full_tensor(model, name, full_sd[key], fused, p)
        if piece.shape != p.shape:
            raise ValueError(f"load_full_state_dict: {key!r} gives a {tuple(piece.shape)} shard but the parameter is "
                             f"{tuple(p.shape)}; the configs differ.")
        p.copy_(piece)
