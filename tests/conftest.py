"""Shared pytest set-up: markers for hardware-only tests, and the suite's wall time in the summary.

TRITON_INTERPRET=1 (unless set): the fused Triton kernels run under Triton's interpreter on CPU tensors. It must be set
before anything imports triton (megatron-core does), because @triton.jit decides at import whether to interpret. On
a GPU machine, `TRITON_INTERPRET=0 make test` runs them compiled instead.
"""

import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

_START = time.monotonic()


def _has_te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "te: needs Transformer Engine (skipped without it)")


def pytest_collection_modifyitems(config, items):
    import torch

    has_cuda = torch.cuda.is_available()
    has_te = _has_te() if any("te" in item.keywords for item in items) else False
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)"))
        if "te" in item.keywords and not has_te:
            item.add_marker(pytest.mark.skip(reason="needs Transformer Engine (pip install -e '.[gpu]' on a CUDA machine)"))


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"suite wall time: {time.monotonic() - _START:.1f} s")
