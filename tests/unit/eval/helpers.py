"""Tiny plain HOPE models and a byte tokenizer for the eval tests (no checkpoint, no megatron)."""

from __future__ import annotations

import dataclasses

import torch

from hope_megatron.inference import HopeLM
from hope_megatron.ops import TitansOpConfig

LETTER = {"hope": "H", "titans": "T", "transformer": "A", "swa": "W", "deltanet": "D", "hope_attention": "A"}


def tiny_config(variant="hope", layers=1, hidden=16, heads=2, vocab=260, chunk=4, cms_widths=(24, 24), **op):
    letter = LETTER[variant]
    uses_cms = variant in ("hope", "hope_attention")
    op_cfg = TitansOpConfig(chunk_size=chunk, self_mod=letter == "H", dgd=letter == "H", **op)
    return {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads, "num_query_groups": heads,
            "kv_channels": hidden // heads, "ffn_hidden_size": 24, "normalization": "RMSNorm",
            "layernorm_epsilon": 1e-5, "gated_linear_unit": True, "add_bias_linear": False, "activation": "silu",
            "memory_heads": heads, "memory_head_dim": hidden // heads, "hope_variant": variant,
            "layer_letters": letter * layers, "uses_cms": uses_cms, "cms_widths": list(cms_widths) if uses_cms else [24],
            "cms_variant": "sequential", "cms_levels": len(cms_widths) if uses_cms else 1, "swa_window": 8,
            "rotary_base": 10000, "vocab_size": vocab, "seq_length": 64, "share_embeddings_and_output_weights": False,
            "op_configs": {letter: dataclasses.asdict(op_cfg)} if letter in "HTD" else {},
            "format_version": 2}  # convert_to_torch.py's current layout (no dead x̃ rows, issue 16)


def tiny_model(variant="hope", seed=0, **kw) -> HopeLM:
    torch.manual_seed(seed)
    model = HopeLM(tiny_config(variant, **kw))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("conv_weight"):
                p.normal_(0, 0.3)
    return model.eval()


class ByteTokenizer:
    """UTF-8 bytes as ids; EOD = 256."""
    eod = 256
    vocab_size = 257

    def tokenize(self, text):
        return list(text.encode("utf-8"))

    def detokenize(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
