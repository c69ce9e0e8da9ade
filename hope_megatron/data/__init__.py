"""Data: tokenizers, atomic indexed-dataset writers, GPT dataset builders over megatron.core.datasets."""

from hope_megatron.data.gpt_datasets import build_gpt_datasets, parse_blend
from hope_megatron.data.tokenizers import TOKENIZER_TYPES, build_tokenizer

__all__ = ["build_gpt_datasets", "build_tokenizer", "parse_blend", "TOKENIZER_TYPES"]
