"""Is a checkpoint directory readable, and which iteration should `--load` (or the converter) use?

A torch_dist iteration directory holds `.metadata` (the tensor index: which bytes of which `__R_S.distcp` file hold
each tensor), the `.distcp` shards, `common.pt` (iteration, arguments, scheduler, CMS clocks) and `metadata.json`
(megatron's format record). `damage(path)` checks all of them without reading tensor data: the index unpickles, every
shard it names exists and is at least as long as the last byte it is said to hold, `metadata.json` and `common.pt`
open. That catches a truncated or deleted shard, a missing index and a truncated `common.pt` before a model is built,
and names the file.

`choose(root, step)` picks the iteration: `step` if given, else the tracker's; a tracker naming a missing or damaged
iteration falls back to the newest complete iteration before it, with a warning naming both (or refuses, naming both,
when there is none). torch's CheckpointException derives from BaseException, so `reading(path)` turns every failure of
a load (except Ctrl-C and exits) into CheckpointError: a ValueError whose text is one sentence for the user.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import List, Optional

from hope_megatron.training.checkpointing import TRACKER, iteration_dir, read_tracker

_ITER_RE = re.compile(r"^iter_(\d{7})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with one sentence naming the file and the fix (entry points print it)."""


@dataclass
class Choice:
    iteration: int
    path: str
    common: dict
    warning: Optional[str] = None  # set when a damaged tracked iteration was passed over


def saved_iterations(root: str) -> List[int]:
    """Every iter_XXXXXXX directory under root, ascending (complete or not)."""
    if not os.path.isdir(root):
        return []
    out = [int(m.group(1)) for m in map(_ITER_RE.match, os.listdir(root)) if m]
    return sorted(i for i in out if os.path.isdir(iteration_dir(root, i)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    first = text[0].split(". ")[0].rstrip(".")  # torch appends paragraphs of advice after the first sentence
    return f"{type(err).__name__}: {first[:200]}"


def _index_problem(path: str) -> Optional[str]:
    """The shard index and the shard files it names (sizes only, no tensor data)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta_path = os.path.join(path, ".metadata")
    if not os.path.isfile(meta_path):
        return f"{meta_path} is missing (the save did not finish)"
    try:
        meta = FileSystemReader(path).read_metadata()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - any unpickling failure means a damaged index
        return f"{meta_path} is unreadable ({_first_line(e)})"
    ends = {}
    for info in (meta.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for name in sorted(ends):
        shard = os.path.join(path, name)
        if not os.path.isfile(shard):
            return f"{shard} is missing"
        size = os.path.getsize(shard)
        if size < ends[name]:
            return f"{shard} is truncated ({size:,} of {ends[name]:,} bytes)"
    return None


def inspect(path: str):
    """(problem sentence or None, common state dict or None) of one iteration directory."""
    from megatron.core import dist_checkpointing

    if not os.path.isdir(path):
        return f"{path} does not exist", None
    for need in ("metadata.json", "common.pt"):
        if not os.path.isfile(os.path.join(path, need)):
            return f"{os.path.join(path, need)} is missing (the save did not finish)", None
    problem = _index_problem(path)
    if problem:
        return problem, None
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001
        return f"{os.path.join(path, 'common.pt')} is damaged ({_first_line(e)})", None
    if not isinstance(common, dict):
        return f"{os.path.join(path, 'common.pt')} holds no state dict", None
    return None, common


def damage(path: str) -> Optional[str]:
    return inspect(path)[0]


def choose(root: str, step: Optional[int] = None, step_flag: str = "--ckpt-step", what: str = "--load") \
        -> Optional[Choice]:
    """The iteration to load under root, or None when root holds no checkpoint at all."""
    if step is not None:
        path = iteration_dir(root, step)
        problem, common = inspect(path)
        if problem:
            raise CheckpointError(f"{problem}; pick a complete iteration with {step_flag} "
                                  f"({_complete_list(root, before=None)}).")
        return Choice(step, path, common)
    tracked = read_tracker(root)
    if tracked is None:
        # no tracker: a first save that never finished (start afresh, nothing complete is lost), or a tracker deleted
        # beside complete iterations (refuse: training from scratch would save over them)
        complete = _complete_list(root, None)
        if complete.startswith("complete: "):
            raise CheckpointError(f"{what} {root} holds complete checkpoints ({complete[10:]}) but no {TRACKER}; "
                                  f"pass {step_flag} N to load one, or write N into {os.path.join(root, TRACKER)}.")
        return None
    path = iteration_dir(root, tracked)
    problem, common = inspect(path)
    if problem is None:
        return Choice(tracked, path, common)
    for it in reversed([i for i in saved_iterations(root) if i < tracked]):
        older = iteration_dir(root, it)
        bad, common = inspect(older)
        if bad is None:
            kept = (f" The damaged directory is left as it is (a save at iteration {tracked} replaces it)."
                    if os.path.isdir(path) else "")
            return Choice(it, older, common, warning=(
                f"warning: {root}/{TRACKER} names iteration {tracked}, but {problem}; loading iteration {it} "
                f"({older}), the newest complete checkpoint before it.{kept}"))
    raise CheckpointError(f"{problem}, and no complete checkpoint precedes iteration {tracked} under {root}; restore "
                          f"the file, or start without {what}.")


def _complete_list(root: str, before: Optional[int]) -> str:
    """The newest (at most 5) complete iterations, for a refusal's sentence (checked newest first, only as needed)."""
    good = []
    for i in reversed([i for i in saved_iterations(root) if before is None or i < before]):
        if damage(iteration_dir(root, i)) is None:
            good.insert(0, i)
            if len(good) == 5:
                break
    return "complete: " + ", ".join(str(i) for i in good) if good else f"none is complete under {root}"


@contextlib.contextmanager
def reading(path: str, advice: str):
    """Any failure inside (torch's CheckpointException is a BaseException) becomes one CheckpointError sentence."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, CheckpointError):
        raise
    except BaseException as e:  # noqa: BLE001 - re-raised as one sentence naming the directory
        raise CheckpointError(f"{path} could not be loaded ({_first_line(_root_cause(e))}); {advice}") from e


def _root_cause(err: BaseException) -> BaseException:
    """torch's CheckpointException wraps the rank's real error; name that one."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        if isinstance(inner, BaseException):
            return inner
        exc = getattr(inner, "exc", None)  # torch wraps rank failures in _WrappedException
        if isinstance(exc, BaseException):
            return exc
    return err.__cause__ if isinstance(err.__cause__, BaseException) and not str(err).strip() else err
