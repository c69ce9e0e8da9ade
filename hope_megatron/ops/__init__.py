"""HOPE's inner-loop math, pure PyTorch (never imports megatron): the self-modifying Titans memory (hope_math §2–3).

Public API (the "Ops" contract of the team brief): TitansOpConfig, init_meta_params, titans_memory, TitansState,
causal_conv1d. Design note: docs/ops.md.
"""

from .config import TitansOpConfig, init_meta_params
from .conv import causal_conv1d
from .titans import TitansState, initial_state, titans_memory

__all__ = ["TitansOpConfig", "init_meta_params", "titans_memory", "causal_conv1d", "TitansState", "initial_state"]
