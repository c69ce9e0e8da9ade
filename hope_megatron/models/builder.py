"""build_model: megatron's GPTModel whose decoder layers are HOPE layer specs (design.md §3, hope_math.md §5).

Embeddings, output layer, loss, pipeline pre/post-process and sharded state dicts are GPTModel's own. Position
embedding: RoPE when any layer is attention (A/W), otherwise none (the recurrence carries order, hope_math §5.1);
memory layers ignore the rotary tensor GPTModel passes to every layer.

Vocabulary padding. Megatron pads the embedding table and the output layer to a multiple of
make_vocab_size_divisible_by x TP so that every TP shard is equal, so the padded size grows with TP (8000 tokens ->
8064 rows at TP1, 8192 at TP2). HopeGPTModel gives the padding rows' logits -inf before the vocab-parallel cross
entropy and in the logits it returns, so they take no probability mass, get no gradient, and the loss and the
predictions do not depend on the layout. Their weights are 0 (models/seeded_init.py); a checkpoint stores the padded
table with megatron's allow_shape_mismatch, so it loads at any TP (rows past the saved table load as 0, extra saved
rows are not read), and the converter keeps only the real rows.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from hope_megatron.layers.specs import get_block_spec


class HopeGPTModel(GPTModel):
    """GPTModel whose padded vocabulary rows never reach a loss or a returned logit."""

    def __init__(self, *args, real_vocab_size: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.real_vocab_size = int(real_vocab_size or self.vocab_size)
        if not 1 <= self.real_vocab_size <= self.vocab_size:
            raise ValueError(f"real_vocab_size={self.real_vocab_size} must be in [1, padded vocab {self.vocab_size}].")

    def mask_padded_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """-inf at the padding columns of `logits` [..., V] (whole vocabulary) or [..., V/TP] (this rank's part)."""
        n = logits.shape[-1]
        if self.real_vocab_size == self.vocab_size:
            return logits
        start = 0 if n == self.vocab_size else parallel_state.get_tensor_model_parallel_rank() * n
        if start + n <= self.real_vocab_size:
            return logits
        # the padding columns are the last ones: filled in place, no copy of the largest activation (the output
        # layer's backward keeps its input and weight, not its output)
        logits[..., max(self.real_vocab_size - start, 0):].fill_(float("-inf"))
        return logits

    def compute_language_model_loss(self, labels, logits):
        return super().compute_language_model_loss(labels, self.mask_padded_logits(logits))

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        labels = kwargs.get("labels", args[4] if len(args) > 4 else None)
        if labels is None and self.post_process:  # logits [b, s, V/TP]
            out = self.mask_padded_logits(out)
        return out


def build_model(config, vocab_size: int, max_sequence_length: int, pre_process: bool = True,
                post_process: bool = True, vp_stage: Optional[int] = None, transformer_impl: str = "local",
                share_embeddings_and_output_weights: bool = False, rotary_base: int = 10000,
                padded_vocab_size: Optional[int] = None, seed: Optional[int] = None) -> HopeGPTModel:
    """HopeGPTModel for `config` (a HopeConfig) on this rank's pipeline stage (and virtual stage `vp_stage`).

    `vocab_size` is the tokenizer's; the tables hold `padded_vocab_size` rows (default: no padding). With `seed`,
    every parameter is drawn full from (seed, its global name) and sliced (models/seeded_init.py), so any layout
    starts from the single-process weights; without it, megatron's creation-order initialisation is kept.
    `share_embeddings_and_output_weights` defaults to False (untied, as Transformer++ / the paper baselines);
    with True and PP > 1 the training loop must all-reduce the embedding group's grads (finalize_model_grads)."""
    padded = padded_vocab_size or vocab_size
    if vocab_size < 1 or max_sequence_length < 1 or padded < vocab_size:
        raise ValueError(f"vocab_size={vocab_size}, padded_vocab_size={padded} and max_sequence_length="
                         f"{max_sequence_length} must be positive, with padded_vocab_size >= vocab_size.")
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    spec = get_block_spec(config, transformer_impl=transformer_impl, vp_stage=vp_stage, pp_rank=pp_rank)
    # megatron's own initialisation still runs (it also sets the tensor-parallel attributes of the weights, which
    # DDP, the optimizer and the checkpoint rely on); with a seed every value is then redrawn layout-independently
    model = HopeGPTModel(
        config=config, transformer_layer_spec=spec, vocab_size=padded, real_vocab_size=vocab_size,
        max_sequence_length=max_sequence_length, pre_process=pre_process, post_process=post_process,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        position_embedding_type="rope" if config.has_attention() else "none", rotary_base=rotary_base,
        vp_stage=vp_stage)
    if seed is not None:
        from hope_megatron.models.seeded_init import init_weights

        init_weights(model, config, seed, vocab_size)
    return model
