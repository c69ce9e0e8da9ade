"""The Titans mixer: HOPE's self-modifying memory as a head-parallel megatron module (hope_math.md §2, §6.1).

Data path, per TP rank, all on the rank's H_local heads (nothing communicates between in_proj and out_proj):
  in_proj (ColumnParallel, no bias)  [L, B, D] -> component-major local channels [x̃⁰ | q⁰ | g | k̃ | ṽ | η̃ | α̃]
                                     (x̃⁰ only with self-modification: nothing else reads it, §10 #18)
  causal depthwise conv (window 4) + SiLU on x̃, q (and static k̃, ṽ); q ← ℓ2norm(q) per head       (§2.1)
  ops.titans_memory on local heads: y = M_mem(q) with every memory's write                     (§2.2-2.7)
  per-head RMSNorm (weight ω [H_local, d_h], eps 1e-6) ⊙ SiLU(g)                                (§2.6)
  out_proj (RowParallel, input_is_parallel)  -> (out [L, B, D], bias), like SelfAttention.

Letters (hope_math §5.2): H self-modifying Titans, T Titans LMM (self_mod off), D DeltaNet; `config.to_op_config(letter)`.
Parameters (hope_math §2.9): in_proj D·(3·H·d_h + static), conv 4 per convolved channel, meta-inits n_M·2·H·r·d_h²,
readouts H·(d_h + 1) each, norm H·d_h, out_proj H·d_h·D. Meta-inits, readouts, norm and conv are [H_local, ...] /
[channels_local, 4] parameters with tensor_model_parallel=True, partition_dim=0. Every mixer
tensor is built full from the global seed and sliced, so a TP=2 shard equals the TP=1 weight's slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.ssm.gated_delta_net import _split_tensor_factory  # splits a fused ShardedTensor per component
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)

from hope_megatron import platform
from hope_megatron.ops import causal_conv1d, init_meta_params, titans_memory
from hope_megatron.ops.titans import dropout_heads
from hope_megatron.ops.documents import titans_memory_documents

CONV_WIDTH = 4  # hope_math §2.1
EPS = 1e-6


@dataclass
class TitansMixerSubmodules:
    in_proj: Union[ModuleSpec, type] = IdentityOp  # ColumnParallelLinear or TELayerNormColumnParallelLinear
    out_proj: Union[ModuleSpec, type] = IdentityOp  # RowParallelLinear or TERowParallelLinear


def in_proj_components(config, op_cfg) -> List[Tuple[str, int, bool]]:
    """(name, width per head, convolved) of the fused in_proj, in component order (hope_math §2.1, §6.1).

    x̃ exists only when a projection memory reads it (self_mod on, hope_math §10 #18): with self_mod off (T, D
    layers) nothing reads x̃, so the code departs from §2.1/§6.1's literal list and builds no x̃ rows or conv
    channels (they would be parameters with gradient exactly 0; docs/model.md)."""
    d = config.memory_head_dim
    comps = ([("x", d, True)] if op_cfg.projection_memories() else []) + [("q", d, True), ("g", d, False)]
    widths = {"k": (d, True), "v": (d, True), "eta": (1, False), "alpha": (1, False)}
    comps += [(c, *widths[c]) for c in op_cfg.static_channels()]
    return comps


def shard_components(full: torch.Tensor, comps, num_heads: int, tp_size: int, tp_rank: int, dim: int = 0):
    """This rank's slice of a component-major fused tensor: each component split by heads, then concatenated."""
    out, start = [], 0
    for _, width, *_ in comps:
        size = width * num_heads
        piece = full.narrow(dim, start, size)
        out.append(piece.chunk(tp_size, dim=dim)[tp_rank])
        start += size
    return torch.cat(out, dim=dim)


class TitansMixer(MegatronModule):
    """Head-parallel Titans memory mixer; fills TransformerLayer's `self_attention` slot."""

    def __init__(self, config, submodules: TitansMixerSubmodules, layer_number: int = 1, letter: str = "H",
                 pg_collection: ProcessGroupCollection = None, **kwargs):
        super().__init__(config=config)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_size, self.tp_rank = pg_collection.tp.size(), pg_collection.tp.rank()
        self.layer_number, self.letter = layer_number, letter
        self.op_cfg = config.to_op_config(letter)
        self.num_heads, self.head_dim = config.memory_heads, config.memory_head_dim
        if self.num_heads % self.tp_size:
            raise ValueError(f"memory_heads={self.num_heads} is not divisible by the tensor-parallel size "
                             f"{self.tp_size}; pick a multiple of it.")
        self.heads_local = self.num_heads // self.tp_size
        self.components = in_proj_components(config, self.op_cfg)
        self.in_proj_dim = sum(w for _, w, _ in self.components) * self.num_heads
        self.conv_components = [c for c in self.components if c[2]]
        self.conv_dim = sum(w for _, w, _ in self.conv_components) * self.num_heads
        dtype, device = config.params_dtype, torch.cuda.current_device()

        self.in_proj = build_module(
            submodules.in_proj, config.hidden_size, self.in_proj_dim, config=config,
            init_method=config.init_method, gather_output=False, bias=False, skip_bias_add=False,
            is_expert=False, tp_comm_buffer_name="fc1", tp_group=pg_collection.tp)

        def tp_param(shape):
            p = torch.nn.Parameter(torch.empty(*shape, dtype=dtype, device=device))
            set_tensor_model_parallel_attributes(p, True, 0, 1)
            return p

        self.conv_weight = tp_param((self.conv_dim // self.tp_size, CONV_WIDTH))
        meta_shapes = init_meta_params(1, self.head_dim, self.op_cfg)  # names and per-head shapes only
        self.meta = torch.nn.ParameterDict(
            {n: tp_param((self.heads_local,) + tuple(t.shape[1:])) for n, t in meta_shapes.items()})
        self.out_norm_weight = tp_param((self.heads_local, self.head_dim))
        # training diagnostics the loop reads and resets (--log-memory-state-norms): the chunk clip's [writes, hits,
        # Σ scale] summed over training forwards since the last read, on device (no host sync here)
        self.clip_totals = None

        self.out_proj = build_module(
            submodules.out_proj, self.num_heads * self.head_dim, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=config.add_bias_linear, input_is_parallel=True,
            skip_bias_add=True, is_expert=False, tp_comm_buffer_name="fc2", tp_group=pg_collection.tp)
        self.reset_parameters()

    # ---------------------------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def reset_parameters(self):
        if not self.config.perform_initialization:
            return
        # Full tensors from the global torch seed (identical on every rank), then this rank's slice: a TP=2 shard
        # equals the TP=1 weight's slice on CPU and GPU alike (these tensors are small next to the CMS MLPs).
        # Training re-draws every parameter from a per-name seed (models/seeded_init.py, via full_parameter).
        w = torch.empty(self.in_proj_dim, self.config.hidden_size, dtype=torch.float32)
        self.config.init_method(w)
        self.in_proj.weight.copy_(shard_components(w, self.components, self.num_heads, self.tp_size, self.tp_rank))
        self.conv_weight.copy_(self.shard_own("conv_weight", self.full_parameter("conv_weight")))
        meta = init_meta_params(self.num_heads, self.head_dim, self.op_cfg)  # one draw for all memories
        for n, p in self.meta.items():
            p.copy_(self.shard_own(f"meta.{n}", meta[n]))
        self.out_norm_weight.fill_(1.0)

    def full_parameter(self, name: str, generator=None) -> torch.Tensor:
        """The TP=1 value of the mixer's own parameter `name` (conv_weight, meta.<n>, out_norm_weight), drawn from
        `generator` (default: torch's global generator)."""
        if name == "conv_weight":  # nn.Conv1d's default bound 1/sqrt(fan_in)
            return (torch.rand(self.conv_dim, CONV_WIDTH, generator=generator) * 2 - 1) / math.sqrt(CONV_WIDTH)
        if name.startswith("meta."):
            return init_meta_params(self.num_heads, self.head_dim, self.op_cfg, generator=generator)[name[5:]]
        if name == "out_norm_weight":
            return torch.ones(self.num_heads, self.head_dim)
        raise KeyError(f"TitansMixer has no own parameter {name!r}.")

    def shard_own(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a full own parameter (conv channels component-major, the rest by heads)."""
        if name == "conv_weight":
            return shard_components(full, self.conv_components, self.num_heads, self.tp_size, self.tp_rank)
        return full.chunk(self.tp_size, dim=0)[self.tp_rank]

    # --------------------------------------------------------------------------------------------------- forward
    def forward(self, hidden_states, attention_mask=None, inference_context=None, packed_seq_params=None, **kwargs):
        """hidden_states [L, B, D] (pre-normed by the layer, hope_math §5.1) -> (out [L, B, D], bias or None).
        With config.hope_reset_at_eod, attention_mask is the document starts bool [B, L] (hope_math §2.7)."""
        if packed_seq_params is not None or inference_context is not None:
            raise NotImplementedError("TitansMixer does not support packed sequences or megatron inference "
                                      "contexts; use hope_megatron.inference for streaming.")
        proj, _ = self.in_proj(hidden_states)  # [L, B, N_local] (under SP in_proj gathers the sequence)
        proj = proj.transpose(0, 1)  # [B, L, N_local]
        starts = self._document_starts(attention_mask, proj.shape[:2])
        parts = dict(zip([c[0] for c in self.components],
                         proj.split([w * self.heads_local for _, w, _ in self.components], dim=-1)))
        conv_names = [c[0] for c in self.conv_components]
        conv_out, _ = causal_conv1d(torch.cat([parts[n] for n in conv_names], dim=-1), self.conv_weight,
                                    starts=starts)
        conv_out = F.silu(conv_out)
        convd = dict(zip(conv_names, conv_out.split(self.heads_local * self.head_dim, dim=-1)))

        def heads(t):  # [B, L, H_loc*d] -> [B, H_loc, L, d]
            b, l = t.shape[:2]
            return t.reshape(b, l, self.heads_local, -1).permute(0, 2, 1, 3)

        q = heads(convd["q"])
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(EPS)  # ℓ2norm(q̃) per head (§2.1)
        x = heads(convd["x"]) if "x" in convd else q  # no projection memory: the op never reads x (§10 #18)
        static = {}
        for n in self.op_cfg.static_channels():
            static[n] = heads(convd[n]) if n in ("k", "v") else heads(parts[n]).squeeze(-1)
        params: Dict[str, torch.Tensor] = dict(self.meta.items())
        run = titans_memory if starts is None else partial(titans_memory_documents, starts=starts)
        stats = {} if self.training else None  # the chunk clip's hit count and scales (hope_math §10 #17)
        if self.training and self.op_cfg.update_dropout > 0:
            # update dropout (hope_math §2.3) from this layer's own stream, the same on every TP rank, its masks drawn
            # for all heads and sliced: the same masks at every TP and PP layout (platform.update_dropout_stream)
            with get_cuda_rng_tracker().fork(platform.update_dropout_stream(self.layer_number)), \
                    dropout_heads(self.tp_rank * self.heads_local, self.num_heads):
                y, state = run(x, q, params, self.op_cfg, static=static or None, training=True, return_state=True,
                               stats=stats)
        else:
            y, state = run(x, q, params, self.op_cfg, static=static or None, training=self.training,
                           return_state=True, stats=stats)
        if stats:  # empty with an infinite clip
            t = torch.stack([stats["clip_writes"], stats["clip_hits"], stats["clip_scale_sum"]]).detach().float()
            self.clip_totals = t if self.clip_totals is None else self.clip_totals + t
        # For TensorBoard (training loop, --log-memory-state-norms): ‖W_mem‖_F at the last boundary of this rank's
        # local heads (of each row's last document under reset-at-eod), averaged over the micro-batch. Detached;
        # the state is computed anyway.
        with torch.no_grad():
            mems = [state.weights["mem"]] if starts is None else [s.weights["mem"] for s in state]
            sq = torch.cat([sum(w.float().pow(2).sum(dim=(-2, -1)) for w in ws) for ws in mems])  # [B, H_loc]
            self.memory_state_norm = sq.sqrt().mean()
        # per-head RMSNorm and SiLU gate (§2.6), in fp32 for the statistics
        yf = y.float()
        yf = yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + EPS)
        o = (yf * self.out_norm_weight.float()[None, :, None, :]).to(y.dtype) * F.silu(heads(parts["g"]))
        o = o.permute(2, 0, 1, 3).reshape(o.shape[2], o.shape[0], -1)  # [L, B, H_loc*d]
        return self.out_proj(o)

    def _document_starts(self, attention_mask, shape):
        """The document starts [B, L] under hope_reset_at_eod (None without it, or with one document per row)."""
        if not getattr(self.config, "hope_reset_at_eod", False) or attention_mask is None:
            return None
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(f"TitansMixer (hope_reset_at_eod): attention_mask must be the document starts, bool "
                             f"{tuple(shape)} [B, L] (ops.documents.document_starts), got {attention_mask.dtype} "
                             f"{tuple(attention_mask.shape)}.")
        return attention_mask

    # ------------------------------------------------------------------------------------------------ checkpoints
    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None, tp_group=None):
        """Own parameters head-sharded on dim 0; in_proj and conv split per component (global head index), so a
        checkpoint reshards across TP sizes (the GatedDeltaNet pattern, hope_math §6.1, §7.1)."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        tp_group = tp_group if tp_group is not None else self.pg_collection.tp
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        for n, p in self.meta.items():
            own[f"meta.{n}"] = p
        sd = make_sharded_tensors_for_checkpoint(
            own, prefix, {k: 0 for k in own}, sharded_offsets, tp_group=tp_group, dp_cp_group=metadata["dp_cp_group"])
        for name, module in self.named_children():
            if name == "meta":
                continue
            sd.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                 tp_group=tp_group))
        for key, comps in ((f"{prefix}in_proj.weight", self.components),
                           (f"{prefix}conv_weight", self.conv_components)):
            sd[key] = _split_tensor_factory(sd[key], [w * self.heads_local for _, w, *_ in comps],
                                            [c[0] for c in comps], 0)
        return sd
