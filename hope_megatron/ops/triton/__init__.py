"""Fused Triton kernels for the Titans memory op (hope_math §2-3): the whole chunk loop of one layer in a few launches.

Entry points used by ops.titans.titans_memory: available() (Triton imports), unsupported(...) (None, or the one
sentence saying why these settings run on the chunked form instead), log_fallback(reason) (says it once per
process), titans_memory_triton(...) (same contract as titans_memory).
"""

from __future__ import annotations

import functools
import logging
import os

_LOG = logging.getLogger("hope_megatron.ops")
_SAID: set = set()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton imports (a GPU build, or any build under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no Triton here
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(x, cfg, state, training):
    """None when the fused kernels cover this call, else one sentence naming the setting (then: chunked form)."""
    if not available():
        return "Triton does not import here (pip install triton, or use --titans-impl chunked)"
    return "the fused Triton kernels are not part of this build yet"


def log_fallback(reason: str) -> None:
    if reason not in _SAID:
        _SAID.add(reason)
        _LOG.warning("titans_memory: impl='triton' runs the chunked form instead: %s.", reason)


def titans_memory_triton(x, q, params, cfg, static, state, return_state, training, stats):
    raise NotImplementedError("titans_memory_triton: the kernels are not in this build")
