"""The compatibility layer's patch points are version specific: these tests fail loudly when megatron-core moves one,
and check the platform's own validation and the package's import hygiene (no Transformer Engine, no apex)."""

import importlib
import inspect
import pkgutil
import sys

import pytest

import hope_megatron
from hope_megatron import platform


def test_megatron_core_version_is_the_one_the_layer_was_written_for():
    from importlib.metadata import version

    assert version("megatron-core") == "0.16.1", "platform.py patches megatron-core 0.16.1's CUDA sites; re-audit them"


@pytest.mark.parametrize("module, needle", [
    ("megatron.core.pipeline_parallel.schedules", 'device="cuda"'),          # redirect C
    ("megatron.core.optimizer.clip_grads", "torch.cuda.FloatTensor"),        # redirect D
    ("megatron.core.tensor_parallel.random", "torch.cuda.get_rng_state()"),  # redirect B
    ("megatron.core.distributed.param_and_grad_buffer", "torch.cuda.current_device()"),  # redirect A
    ("megatron.core.distributed.torch_fully_sharded_data_parallel", 'DeviceMesh.from_group(self.process_group, "cuda")'),  # G
    # redirect F: the fully_reshardable load skips `step`, the setter copies every live key, and the load hands one
    # step tensor to every parameter
    ("megatron.core.optimizer.distrib_optimizer", 'if k == "step":\n                            # Handle torch Adam'),
    ("megatron.core.optimizer.distrib_optimizer", 'dst_tensors[key].copy_(tensors[key])'),
    ("megatron.core.optimizer.distrib_optimizer", 's["step"] = step\n'),
])
def test_cuda_sites_are_where_the_layer_expects_them(module, needle):
    src = inspect.getsource(importlib.import_module(module))
    assert needle in src, f"{module} no longer contains {needle!r}: re-audit hope_megatron/platform.py"


def test_rng_tracker_internals_still_exist():
    from megatron.core.tensor_parallel import random as mrandom

    for name in ("_CUDA_RNG_STATE_TRACKER", "_CUDA_RNG_STATE_TRACKER_INITIALIZED", "_get_cuda_rng_state",
                 "_set_cuda_rng_state", "CudaRNGStatesTracker", "_MODEL_PARALLEL_RNG_TRACKER_NAME"):
        assert hasattr(mrandom, name), f"megatron.core.tensor_parallel.random.{name} is gone: re-audit platform.py"


@pytest.mark.parametrize("world, tp, pp, vpp, message", [
    (4, 3, 1, None, "not divisible by tensor-parallel size 3"),
    (2, 0, 1, None, "must be >= 1"),
    (2, 1, 1, 2, "needs a pipeline-parallel size of at least 2"),
])
def test_impossible_layouts_are_refused_with_a_sentence(world, tp, pp, vpp, message):
    with pytest.raises(ValueError, match=message):
        platform._check_sizes(world, tp, pp, vpp)


def test_every_module_imports_without_transformer_engine_or_apex():
    assert importlib.util.find_spec("transformer_engine") is None, "this test is meant for a machine without TE"
    names = [m.name for m in pkgutil.walk_packages(hope_megatron.__path__, "hope_megatron.")]
    assert "hope_megatron.platform" in names and len(names) >= 2
    for name in names:
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
    assert "transformer_engine" not in sys.modules
    assert "apex" not in sys.modules


def test_torch_adamw_redirect_f_is_installed_without_apex_or_te():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    assert platform.torch_adamw_fallback()  # this machine has neither apex nor TE
    platform.install_torch_adamw_compat()
    assert DistributedOptimizer._set_main_param_and_optimizer_states.__name__ == "set_states_present_in_checkpoint"
    assert DistributedOptimizer.load_state_dict.__name__ == "load_with_own_steps"
