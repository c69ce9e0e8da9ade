"""Layout-independent initialisation: every parameter is drawn FULL (its TP=1/PP=1 tensor) from a seed derived from
the run's seed and the parameter's global name, and this rank keeps its slice.

Creation-order seeding (megatron's use_cpu_initialization) gives the same weights only while every rank builds the
same modules in the same order: under PP the second stage builds its layers first, and the vocabulary table, whose
padding grows with TP, shifts every draw after it. Here no parameter's value depends on what else this rank builds,
so TP, PP, VPP, DP, the distributed optimizer, sequence parallel and FSDP all start from the single-process weights
(tests/distributed/test_layout_parity.py; tools/layout_parity.py prints the table).

Rules (megatron's own, applied to the full tensor):
  column-parallel linear weights (qkv, fc1, the mixers' in_proj, the output layer)   config.init_method
  row-parallel linear weights (proj, fc2, the mixers' out_proj)                    config.output_layer_init_method
  word embeddings                                                                   config.embedding_init_method
  norm weights 1, biases 0; the Titans mixer's own tensors from TitansMixer.full_parameter
  vocabulary rows past the tokenizer's (padding, model_vocab.py) are 0.
A parameter no rule covers is an error naming it, never a silently random tensor.
"""

from __future__ import annotations

import zlib

import torch

from hope_megatron.layers.titans_mixer import TitansMixer
from hope_megatron.models.full_weights import fused_mixer_params, global_name, shard_full_tensor

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run seed and a global parameter name (stable across Python processes)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


def _kind(module) -> str:
    """column | row | norm | embedding | mixer | other, from the module that owns the parameter."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    if isinstance(module, TitansMixer):
        return "mixer"
    if isinstance(module, VocabParallelEmbedding):
        return "embedding"
    if isinstance(module, ColumnParallelLinear):
        return "column"
    if isinstance(module, RowParallelLinear):
        return "row"
    mode = getattr(module, "parallel_mode", "unset")  # Transformer Engine linears: "column" | "row" | None
    if mode in ("column", "row"):
        return mode
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or "Norm" in type(module).__name__:
        return "norm"
    return "other"


def _full_shape(param, local_name: str, fused) -> tuple:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False) or local_name in fused:
        from megatron.core import parallel_state

        shape[getattr(param, "partition_dim", 0)] *= parallel_state.get_tensor_model_parallel_world_size()
    return tuple(shape)


def _vocab_rows(full: torch.Tensor, init, vocab_size: int) -> torch.Tensor:
    """The real rows drawn as a [vocab_size, D] tensor (so the draw does not depend on the padding); padding 0."""
    real = torch.empty(vocab_size, *full.shape[1:], dtype=full.dtype, device=full.device)
    init(real)
    full.zero_()
    full[:vocab_size].copy_(real)
    return full


def full_value(module, pname: str, gname: str, shape, config, vocab_size: int, device) -> torch.Tensor:
    """The full TP=1 tensor of parameter `gname` (owned by `module` as `pname`), from torch's generator(s) as
    seeded by the caller."""
    kind = _kind(module)
    full = torch.empty(shape, dtype=torch.float32, device=device)
    if kind == "mixer":  # conv, meta-inits, per-head norm: the mixer knows their full values (§2.9)
        return module.full_parameter(pname).to(device)
    if pname.endswith("bias"):
        return full.zero_()
    if kind == "norm" or pname.startswith("layer_norm_") or "layernorm" in pname:
        return full.zero_() if getattr(config, "layernorm_zero_centered_gamma", False) else full.fill_(1.0)
    if gname in (EMBEDDING, OUTPUT):
        init = config.embedding_init_method if gname == EMBEDDING else config.init_method
        return _vocab_rows(full, init, vocab_size)
    if kind == "column":
        config.init_method(full)
        return full
    if kind == "row":
        config.output_layer_init_method(full)
        return full
    raise ValueError(f"no layout-independent initialiser for parameter {gname} ({type(module).__name__}.{pname}); "
                     f"add a rule to hope_megatron/models/seeded_init.py.")


@torch.no_grad()
def init_weights(model, config, seed: int, vocab_size: int) -> int:
    """Overwrite every parameter of `model` (one GPTModel chunk on this rank) with its slice of the full tensor drawn
    from parameter_seed(seed, global name). `vocab_size` is the tokenizer's (unpadded). Returns the count."""
    fused = fused_mixer_params(model)
    tied = bool(getattr(model, "share_embeddings_and_output_weights", False))
    modules = dict(model.named_modules())
    n = 0
    for local, param in model.named_parameters():
        module, pname = _owner(modules, local)
        gname = global_name(model, local)
        if tied and gname == OUTPUT:  # the last stage's copy of the tied embedding (PP > 1) equals it
            gname = EMBEDDING
        device = param.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(parameter_seed(seed, gname))
            full = full_value(module, pname, gname, _full_shape(param, local, fused), config, vocab_size, device)
        param.copy_(shard_full_tensor(model, local, full.to(param.dtype), fused, param))
        n += 1
    return n


def _owner(modules, local: str):
    """(module, name inside it) of a parameter; a Titans mixer owns its `meta` ParameterDict's entries."""
    mod_name, _, pname = local.rpartition(".")
    module = modules[mod_name]
    parent_name, _, child = mod_name.rpartition(".")
    if isinstance(module, torch.nn.ParameterDict) and isinstance(modules.get(parent_name), TitansMixer):
        return modules[parent_name], f"{child}.{pname}"
    return module, pname
