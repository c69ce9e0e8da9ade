"""No checkpoint-writer process outlives its rank.

megatron-core 0.16.1's torch_dist save (`dist_checkpointing/strategies/filesystem_async.py`) forks one writer process
per shard file and, on the first save, starts a spawn-context multiprocessing Manager whose queue collects the writers'
results; the Manager lives as long as the rank. Neither watches its parent: when a rank is killed (SIGKILL, OOM killer)
during a save, a forked writer blocked on its result queue and the Manager stay behind, each holding what it holds
(a forked writer shares the rank's ~1 GB of pages), and the writer ignores SIGTERM because it inherited the training
loop's "save at the end of the iteration" handler.

`install()` (called by every save, idempotent) makes both die with their parent on Linux through
prctl(PR_SET_PDEATHSIG, SIGKILL): writers forked from the main thread get it from an at-fork hook, and the Manager is
created here with an initializer that sets it. The Manager also ignores SIGTERM/SIGINT, so a scheduler's SIGTERM to the
whole process group cannot kill it while the rank is finishing the save that SIGTERM asked for; a writer keeps the
inherited handler for the same reason. Elsewhere (macOS) install() is a no-op.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
_INSTALLED = False
_FORK_STATE = {"from_main": False, "parent": 0}


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits; exit now if the parent is already gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    return True


def _manager_initializer(parent_pid: int) -> None:
    """Runs inside megatron's result-queue Manager (a spawned process) before it serves."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def _before_fork() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: only forks from the main thread are tied to the process
    _FORK_STATE["from_main"] = threading.current_thread() is threading.main_thread()
    _FORK_STATE["parent"] = os.getpid()


def _after_fork_in_child() -> None:
    if _FORK_STATE["from_main"]:
        die_with_parent(_FORK_STATE["parent"])


def _install_result_queue() -> None:
    """Create megatron's writer-result queue ourselves, on a Manager that dies with this process."""
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=_manager_initializer, initargs=(os.getpid(),))
    filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager (and its finalizer) alive


def install() -> None:
    global _INSTALLED
    if _INSTALLED or not sys.platform.startswith("linux"):
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _install_result_queue()
    _INSTALLED = True
