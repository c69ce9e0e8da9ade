"""HopeConfig for Hugging Face transformers: the converted checkpoint's config.json as attributes.

Written by checkpoints_convert/export_hf.py next to modeling_hope.py; it imports neither megatron nor hope_megatron.
config.json holds every field hope_megatron.inference reads (layer letters, widths, per-letter memory op settings,
in_proj component layout) plus the transformers keys (model_type, auto_map, token ids, dtype).
"""

from transformers import PretrainedConfig


class HopeConfig(PretrainedConfig):
    model_type = "hope"
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(self, **kwargs):
        # the output layer is tied by reading the embedding directly (modeling_hope.py), never by transformers' tying
        kwargs["tie_word_embeddings"] = False
        kwargs.setdefault("use_cache", True)
        super().__init__(**kwargs)
