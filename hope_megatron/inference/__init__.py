"""Plain PyTorch HOPE inference (no megatron import): load a converted checkpoint, forward/loss, streaming, generation."""

from hope_megatron.inference.model import HopeLM, StreamState, load_model, read_config, tokenizer_path

__all__ = ["HopeLM", "StreamState", "load_model", "read_config", "tokenizer_path"]
