"""build_model: megatron's GPTModel whose decoder layers are HOPE layer specs (design.md §3, hope_math.md §5).

Embeddings, output layer, loss, pipeline pre/post-process and sharded state dicts are GPTModel's own. Position
embedding: RoPE when any layer is attention (A/W), otherwise none (the recurrence carries order, hope_math §5.1);
memory layers ignore the rotary tensor GPTModel passes to every layer.
"""

from __future__ import annotations

from typing import Optional

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from hope_megatron.layers.specs import get_block_spec


def build_model(config, vocab_size: int, max_sequence_length: int, pre_process: bool = True,
                post_process: bool = True, vp_stage: Optional[int] = None, transformer_impl: str = "local",
                share_embeddings_and_output_weights: bool = False, rotary_base: int = 10000) -> GPTModel:
    """GPTModel for `config` (a HopeConfig) on this rank's pipeline stage (and virtual stage `vp_stage`).

    `share_embeddings_and_output_weights` defaults to False (untied, as Transformer++ / the paper baselines);
    with True and PP > 1 the training loop must all-reduce the embedding group's grads (finalize_model_grads)."""
    if vocab_size < 1 or max_sequence_length < 1:
        raise ValueError(f"vocab_size={vocab_size} and max_sequence_length={max_sequence_length} must be positive.")
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    spec = get_block_spec(config, transformer_impl=transformer_impl, vp_stage=vp_stage, pp_rank=pp_rank)
    return GPTModel(
        config=config, transformer_layer_spec=spec, vocab_size=vocab_size,
        max_sequence_length=max_sequence_length, pre_process=pre_process, post_process=post_process,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        position_embedding_type="rope" if config.has_attention() else "none", rotary_base=rotary_base,
        vp_stage=vp_stage)
