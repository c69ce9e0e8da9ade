"""What a run that stops on a NaN/inf streak leaves behind, and what it tells the user.

A skipped iteration changes nothing (no step, no accumulation, no scheduler step), so the weights during a streak are
those saved after iteration f-1, where f is the streak's first iteration: the weights whose forward gave the first
non-finite loss. Resuming from them with a lower learning rate diverges again. So:

- no checkpoint is written during a streak (the loop defers a due save to the next finite iteration), and the stop
  itself saves nothing;
- the checkpoint to resume from is the newest one saved at an iteration s with s + 1 < f (its next iteration was
  finite); if `--save`'s tracker names a later one (the one saved at f-1), the tracker is moved back to it and the later
  directory is left on disk, named in the message;
- the message gives the relaunch command, with --override-opt-param-scheduler: without it megatron's scheduler keeps
  the checkpoint's learning rate and a new --lr has no effect (checkpoint_fit.schedule_note says which applies).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from hope_megatron.training import checkpointing


def resume_point(saves: List[Tuple[str, int]], first_bad: int) -> Tuple[Optional[Tuple[str, int]], List[Tuple[str, int]]]:
    """(newest checkpoint whose next iteration was finite, the later ones) among saves = [(root, iteration)]."""
    good = [(r, s) for r, s in saves if s + 1 < first_bad]
    later = [(r, s) for r, s in saves if s + 1 >= first_bad]
    return (good[-1] if good else None), later


def settle(args, consecutive: int, grad_norm, first_bad: int, saves: List[Tuple[str, int]], rank0: bool) -> str:
    """Move --save's tracker back to the resume point when it names a later checkpoint; return the stop message."""
    head = (f"stopping: {consecutive} consecutive iterations (from {first_bad}) had a non-finite loss or gradient norm "
            f"(last grad norm {grad_norm}); nothing is saved")
    good, later = resume_point(saves, first_bad)
    lower = f"{args.lr / 10:.3g}"
    if good is None:
        kept = (f" {checkpointing.iteration_dir(*later[-1])} holds the weights whose next iteration was non-finite; "
                f"resuming from it will likely diverge again." if later else "")
        return (f"{head}, and no checkpoint precedes the divergence.{kept} Restart without --load with a lower --lr "
                f"(e.g. {lower}) or a longer --lr-warmup-iters, or check the data.")
    root, it = good
    moved = ""
    if args.save and later and any(r == args.save for r, _ in later) and root == args.save:
        if rank0 and checkpointing.read_tracker(args.save) != it:
            checkpointing.write_tracker(args.save, it)
        moved = (f" {args.save}/{checkpointing.TRACKER} now names it; "
                 f"{', '.join(checkpointing.iteration_dir(*x) for x in later)} (weights whose next iteration was "
                 f"non-finite) stays on disk.")
    step = "" if checkpointing.read_tracker(root) == it or moved else f" --ckpt-step {it}"
    return (f"{head}; resume from {checkpointing.iteration_dir(root, it)}, the last checkpoint whose next iteration "
            f"was finite.{moved} Relaunch with --load {root}{step} --lr {lower} --override-opt-param-scheduler (without "
            f"that flag the checkpoint's learning-rate schedule applies and a new --lr has no effect), or raise "
            f"--lr-warmup-iters, or check the data.")
