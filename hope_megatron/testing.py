"""Run a function on N gloo ranks, the way torchrun would, for tests and benchmarks.

`run_distributed(fn, world_size, *args)` spawns `world_size` processes (spawn context, so each rank imports
afresh), gives them a free port and the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), runs `fn(*args, **kwargs)` (a module-level function that calls `platform.initialize` itself),
tears the process group down, and returns every rank's return value in rank order. A failing rank's traceback
is raised in the caller; ranks still running after `timeout` seconds, or after another rank failed, are killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
from typing import Any, Callable, List


class DistributedTestError(RuntimeError):
    pass


def _worker(rank: int, world_size: int, port: int, fn: Callable, args, kwargs, results) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    try:
        out = fn(*args, **kwargs)
        results.put((rank, True, out))
    except BaseException:  # noqa: BLE001 - every failure goes back to the caller with its traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        try:
            from hope_megatron import platform

            platform.teardown()
        except Exception:
            pass


def run_distributed(fn: Callable, world_size: int, *args, timeout: float = 240.0, **kwargs) -> List[Any]:
    from hope_megatron.platform import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    # not daemonic: dist_checkpointing starts a multiprocessing Manager inside the rank; stragglers are killed below
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, kwargs, results), daemon=False)
             for r in range(world_size)]
    for p in procs:
        p.start()
    outs: dict = {}
    deadline = time.monotonic() + timeout
    failure = None
    try:
        while len(outs) < world_size and failure is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = f"timed out after {timeout:.0f} s; ranks {sorted(set(range(world_size)) - set(outs))} unfinished"
                break
            try:
                rank, ok, out = results.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and p.exitcode not in (0, None)
                        and r not in outs]
                if dead:
                    time.sleep(0.5)  # a crashing rank may still be flushing its traceback
                    while not results.empty():
                        rank, ok, out = results.get()
                        if not ok:
                            failure = f"rank {rank} failed:\n{out}"
                        outs[rank] = out
                    if failure is None:
                        failure = f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} and no traceback"
                continue
            if not ok:
                failure = f"rank {rank} failed:\n{out}"
            outs[rank] = out
    finally:
        for p in procs:
            p.join(timeout=5 if failure is None else 0.5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    if failure is not None:
        raise DistributedTestError(failure)
    return [outs[r] for r in range(world_size)]


def fill_deterministic(model_chunks, seed: int = 0, std: float = 0.05) -> int:
    """Give every parameter the values of a deterministic FULL tensor chosen by its checkpoint key, sliced to this
    rank's shard, so any TP/PP/VPP layout holds exactly the weights of the single-process model (creation-order
    seeding cannot do that under PP: stage 1 builds its layers first). Uses the model's own sharded_state_dict, hence
    the same global names, shapes and offsets that dist_checkpointing uses. Returns the number of shards filled."""
    import zlib

    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    def shards(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from shards(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from shards(v)
        elif isinstance(obj, ShardedTensorFactory):
            yield from shards(obj.build())
        elif isinstance(obj, ShardedTensor):
            yield obj

    chunks = model_chunks if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    n = 0
    with torch.no_grad():
        for chunk in chunks:
            for sh in shards(chunk.sharded_state_dict()):
                if not sh.data.is_floating_point() or sh.key.endswith("_extra_state"):
                    continue
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(sh.key.encode()))
                full = torch.randn(tuple(sh.global_shape), generator=g, dtype=torch.float64)
                full = 1.0 + 0.1 * full if len(sh.global_shape) - sh.prepend_axis_num == 1 and "norm" in sh.key \
                    else std * full
                local_shape = (1,) * sh.prepend_axis_num + tuple(sh.data.shape)
                piece = full[tuple(slice(o, o + s) for o, s in zip(sh.global_offset, local_shape))]
                sh.data.copy_(piece.reshape(sh.data.shape).to(sh.data.dtype))
                n += 1
    return n
