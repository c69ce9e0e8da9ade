"""The local (torch) norm of the layer specs, usable under sequence parallelism.

megatron-core 0.16.1's WrappedTorchNorm refuses `sequence_parallel` (transformer/torch_norm.py:32), so without
Transformer Engine or apex the TP + sequence-parallel layout could not start (megatron_core_notes.md §2.4). A norm
needs nothing from TP to run on a sequence shard: it normalises each token over the hidden size, which every rank
holds whole. Only its weight (and bias) gradient is partial — each rank sees its own tokens — so, as TE's norms do, the
parameters are marked `sequence_parallel` and megatron's finalize_model_grads sums their gradients over the TP group
(`_allreduce_non_tensor_model_parallel_grads`) before the optimizer step.
"""

from __future__ import annotations

import torch
from megatron.core.models.backends import LocalSpecProvider


class LocalNorm:
    """torch.nn.RMSNorm or torch.nn.LayerNorm per config.normalization, parameters tagged for sequence parallel."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **unused):
        dtype = config.params_dtype  # as every other weight (FSDP shards a layer's parameters as one dtype)
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=dtype)
        elif config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=dtype)
        else:
            raise ValueError(f"normalization={config.normalization!r} is not supported by the local backend; use "
                             f"RMSNorm or LayerNorm.")
        if getattr(config, "layernorm_zero_centered_gamma", False):
            raise ValueError("layernorm_zero_centered_gamma needs --transformer-impl transformer_engine; the local "
                             "torch norms have no zero-centred weight.")
        for p in norm.parameters():
            setattr(p, "sequence_parallel", bool(config.sequence_parallel))
        return norm


class LocalBackend(LocalSpecProvider):
    """megatron's local backend (torch linears and attention) with LocalNorm for every norm slot."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return LocalNorm
