"""A 1-process model-parallel group (TP=1, PP=1) for building megatron modules in unit tests."""

import pytest


@pytest.fixture(scope="module")
def mp_group():
    from hope_megatron import platform

    info = platform.initialize(1, 1, seed=1234)
    yield info
    platform.teardown()
