"""Model builders: megatron's GPTModel with HOPE layer specs for every variant and layer pattern (design.md §3)."""

from hope_megatron.models.builder import build_model

__all__ = ["build_model"]
