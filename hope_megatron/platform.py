"""One initialisation for every entry point: process group, model parallel groups, seeding, CPU compatibility.

design.md §4: a GPU changes the backend, not the code path. With CUDA, `initialize` uses nccl (gloo for host tensors) and touches nothing in
megatron-core. Without CUDA it uses gloo and installs a compatibility layer (megatron_core_notes.md §2.2-2.3) so that
megatron-core 0.16.1's own schedules, DDP, optimizer and dist_checkpointing run on CPU:

  A  torch.cuda.current_device() -> torch.device("cpu")            (buffers allocated on "the current device")
  B  a CPU RNG tracker in place of CudaRNGStatesTracker             (TP-region dropout, attention's tracker fork)
  C  a process-global TorchFunctionMode mapping device="cuda" / .cuda() / .to("cuda") to CPU   (schedules, clip_grads)
  D  in the same mode, a bare Tensor.type() reports "torch.cuda.<X>Tensor"   (optimizer dtype asserts)
  E  torch.cuda.synchronize() is a no-op                             (p2p, checkpoint save)
  G  megatron's torch-FSDP2 wrapper gets a CPU device mesh            (--use-torch-fsdp2)

and, wherever megatron's optimizers fall back to torch's AdamW (no apex / TE, so every CPU machine), one more:

  F  DistributedOptimizer checkpoint loading skips the optimizer-state keys a checkpoint does not carry (`step`) and
     gives every parameter its own step tensor

The patch points are version specific: `tests/unit/test_platform.py` fails loudly if a future megatron-core moves one.
Nothing else in the project mentions CUDA-vs-CPU. Project code must never use Tensor.type() to test a device (D).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
from typing import Optional

import torch
import torch.distributed as dist

DISABLE_COMPAT_ENV = "HOPE_MEGATRON_DISABLE_CPU_COMPAT"  # "1": skip the layer (only to prove the tests need it)

_COMPAT_INSTALLED = False
_MODE = None


@dataclasses.dataclass(frozen=True)
class PlatformInfo:
    backend: str
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    virtual_pipeline_model_parallel_size: Optional[int]
    data_parallel_size: int
    cpu_compat: bool


def cuda_available() -> bool:
    return torch.cuda.is_available()


def accelerator_name() -> Optional[str]:
    """The CUDA device's name (e.g. "NVIDIA H100 80GB HBM3"), or None on CPU: what the MFU peak is looked up by."""
    return torch.cuda.get_device_name(torch.cuda.current_device()) if cuda_available() else None


def device() -> torch.device:
    """The device models and batches live on: this rank's GPU, or the CPU."""
    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_port() -> int:
    """A free TCP port on localhost (never a fixed 29500: concurrent jobs collide)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- CPU compatibility layer
class _CudaToCpuMode(torch.overrides.TorchFunctionMode):
    """Redirects C and D: every CUDA device request becomes CPU; bare Tensor.type() claims CUDA."""

    @staticmethod
    def _is_cuda(dev) -> bool:
        if isinstance(dev, torch.device):
            return dev.type == "cuda"
        if isinstance(dev, str):
            return dev.split(":")[0] == "cuda"
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and self._is_cuda(kwargs["device"]):
            kwargs["device"] = torch.device("cpu")
        if func is torch.Tensor.to and len(args) > 1 and self._is_cuda(args[1]):
            args = (args[0], torch.device("cpu")) + tuple(args[2:])
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(out, str):
            if out.startswith("torch.") and not out.startswith("torch.cuda."):
                out = "torch.cuda." + out[len("torch."):]
        return out


def _make_cpu_rng_tracker():
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRngTracker(mrandom.CudaRNGStatesTracker):
        """Redirect B: named RNG streams kept as CPU generator states (upstream keeps CUDA generator states)."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:  # upstream's duplicate checks, kept
                raise Exception("seed {} already exists".format(seed))
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception("cuda rng state {} already exists".format(name))
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception("cuda rng state {} is not added".format(name))
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRngTracker


def install_cpu_compat() -> None:
    """Install redirects A-E once per process (CUDA absent only). Idempotent; never uninstalled."""
    global _COMPAT_INSTALLED, _MODE
    if _COMPAT_INSTALLED or cuda_available():
        return
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = lambda: torch.device("cpu")  # A
    torch.cuda.synchronize = lambda *a, **k: None  # E
    mrandom._CUDA_RNG_STATE_TRACKER = _make_cpu_rng_tracker()()  # B
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # B (recompute): CheckpointFunction saves/restores "the CUDA generator"; on CPU that is the CPU generator.
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()  # C + D: process-global
    _install_cpu_device_mesh()  # G
    _COMPAT_INSTALLED = True


def _install_cpu_device_mesh() -> None:
    """Redirect G: megatron's torch-FSDP2 wrapper builds `DeviceMesh.from_group(dp_group, "cuda")`; FSDP2 then places
    every shard on "the current CUDA device". On CPU its mesh is a CPU mesh (FSDP2 runs on gloo)."""
    from megatron.core.distributed import torch_fully_sharded_data_parallel as tfsdp
    from torch.distributed.device_mesh import DeviceMesh

    class _CpuDeviceMesh:
        @staticmethod
        def from_group(group, device_type, *args, **kwargs):
            return DeviceMesh.from_group(group, "cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    tfsdp.DeviceMesh = _CpuDeviceMesh


def cpu_compat_active() -> bool:
    return _COMPAT_INSTALLED


# ------------------------------------------------------------------------------------ torch AdamW fallback (no apex/TE)
def torch_adamw_fallback() -> bool:
    """True when megatron's optimizers run torch's AdamW (neither apex nor Transformer Engine is installed: every CPU
    machine). torch's AdamW keeps a per-parameter `step` that megatron's checkpoint code only half expects."""
    from megatron.core.optimizer import distrib_optimizer

    return not distrib_optimizer.HAVE_APEX_OR_TE


_ADAMW_COMPAT_INSTALLED = False


def install_torch_adamw_compat() -> None:
    """Redirect F (torch AdamW fallback only): DistributedOptimizer checkpoints in the model-space format load.

    megatron-core 0.16.1's load_parameter_state_from_fully_reshardable sets each main parameter's state from the
    checkpoint without `step` ("handled separately": it was set from the param groups just before), but
    _set_main_param_and_optimizer_states then copies every key of the live state, `step` included -> KeyError 'step'
    (megatron_core_notes.md §2.4). Here keys absent from the loaded tensors are left as they are. With apex or TE
    (FusedAdam keeps no per-parameter step) nothing is patched. The other half — a fresh torch AdamW has no state, so
    DistributedOptimizer.state_dict()'s `assert len(steps) == 1` fails before a load — is met by
    training/checkpointing.prefill_optimizer_state."""
    global _ADAMW_COMPAT_INSTALLED
    if _ADAMW_COMPAT_INSTALLED or not torch_adamw_fallback():
        return
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states_present_in_checkpoint(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        live = {"param": main_param, **self.optimizer.state[main_param]}
        for key, value in tensors.items():
            live[key].copy_(value)

    original_load = DistributedOptimizer.load_state_dict

    def load_with_own_steps(self, state_dict):
        original_load(self, state_dict)
        # it also hands every parameter the SAME step tensor, which torch's AdamW then increments once per parameter
        for st in self.optimizer.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].detach().clone()

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states_present_in_checkpoint
    DistributedOptimizer.load_state_dict = load_with_own_steps
    _ADAMW_COMPAT_INSTALLED = True


# ------------------------------------------------------------------------------------------------------- init / teardown
def _check_sizes(world_size: int, tp: int, pp: int, vpp: Optional[int]) -> None:
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor ({tp}) and pipeline ({pp}) model-parallel sizes must be >= 1.")
    if world_size % (tp * pp) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor-parallel size {tp} x pipeline-parallel size {pp}; "
            f"launch a multiple of {tp * pp} processes or change --tensor-model-parallel-size/--pipeline-model-parallel-size."
        )
    if vpp is not None and (vpp < 1 or (vpp > 1 and pp < 2)):
        raise ValueError(f"virtual pipeline size {vpp} needs a pipeline-parallel size of at least 2 (got {pp}).")


def initialize(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: Optional[int] = None,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> PlatformInfo:
    """Process group (nccl | gloo; env:// under torchrun, a 1-process group otherwise), megatron's model-parallel
    groups, the CPU compatibility layer when CUDA is absent, and seeding of torch and megatron's RNG tracker."""
    from megatron.core import parallel_state, tensor_parallel

    use_cuda = cuda_available()
    # With CUDA, nccl for device tensors and gloo for host tensors (the loop's loss, stop flag and parameter count,
    # the clip norms' scalars): nccl alone refuses a CPU tensor, and megatron's groups inherit this mapping.
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _check_sizes(world_size, tensor_model_parallel_size, pipeline_model_parallel_size,
                 virtual_pipeline_model_parallel_size)
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "MASTER_ADDR" in os.environ and "RANK" in os.environ:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                                    timeout=timeout)
    world_size, rank = dist.get_world_size(), dist.get_rank()
    _check_sizes(world_size, tensor_model_parallel_size, pipeline_model_parallel_size,
                 virtual_pipeline_model_parallel_size)
    vpp = virtual_pipeline_model_parallel_size if (virtual_pipeline_model_parallel_size or 1) > 1 else None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        distributed_timeout_minutes=timeout_minutes,
    )
    compat = False
    if not use_cuda and os.environ.get(DISABLE_COMPAT_ENV) != "1":
        install_cpu_compat()
        compat = True
    install_torch_adamw_compat()
    seed_all(seed)
    return PlatformInfo(
        backend=backend, device=device(), rank=rank, world_size=world_size, local_rank=local_rank,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        data_parallel_size=world_size // (tensor_model_parallel_size * pipeline_model_parallel_size),
        cpu_compat=compat,
    )


_SEED: Optional[int] = None  # the run's --seed (seed_all), for the per-layer update-dropout streams
UPDATE_DROPOUT_SEED_OFFSET = 7_000_000  # far from upstream's seed + 2718 + tp_rank


def seed_all(seed: int) -> None:
    """torch's default generator (same on every rank: full weights built identically, then sliced) and megatron's
    tracker (data-parallel stream = seed, tensor-parallel stream = seed + 2718 + tp_rank, as upstream)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    global _SEED
    _SEED = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def update_dropout_stream(layer_number: int) -> str:
    """The name of megatron's RNG-tracker stream for update dropout in (global, 1-based) layer `layer_number`
    (hope_math §2.3), added on first use: seeded from --seed and the layer number alone, hence the same on every
    tensor-parallel rank and whatever the pipeline split, and saved, restored and replayed under recompute with the
    tracker's other streams. With ops.titans.dropout_heads the masks are then the single-process ones, sliced."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    name = f"hope-update-dropout-{int(layer_number)}"
    if name not in tracker.get_states():
        base = _SEED if _SEED is not None else 1234
        tracker.add(name, base + UPDATE_DROPOUT_SEED_OFFSET + int(layer_number))
    return name


def configure(config) -> None:
    """Set, in place, the fields a ModelParallelConfig/TransformerConfig needs on this platform.

    Without CUDA: weights are built on CPU from the global seed and then sliced (so every TP size starts from the same
    full weights), no apex gradient-accumulation fusion, and interleaved pipelines use unbatched p2p, because batched
    p2p over gloo silently gives wrong losses when the previous and next stage are the same peer (notes §2.4)."""
    if not cuda_available():
        config.use_cpu_initialization = True
        config.gradient_accumulation_fusion = False
        if getattr(config, "virtual_pipeline_model_parallel_size", None) or _vpp_active():
            config.batch_p2p_comm = False
            config.overlap_p2p_comm = False
    if hasattr(config, "pipeline_dtype") and config.pipeline_dtype is None:
        config.pipeline_dtype = config.params_dtype


def _vpp_active() -> bool:
    from megatron.core import parallel_state

    try:
        return (parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1) > 1
    except Exception:
        return False


def teardown() -> None:
    """Leave no process group behind: megatron's groups, then the default group."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
