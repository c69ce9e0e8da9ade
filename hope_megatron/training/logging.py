"""The progress line (design.md §5) and TensorBoard scalars (mirrored to W&B with --wandb-project, wandb_writer.py).
Everything here runs on rank 0 only."""

from __future__ import annotations

import math
import sys
import time
from typing import Optional


def print_rank0(*msg) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*msg, flush=True)
        sys.stdout.flush()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def progress_line(*, iteration, train_iters, consumed, ms_per_iter, tokens_per_s, tflops_per_gpu, mfu, lr, loss,
                  grad_norm, skipped) -> str:
    """`iteration N/M | consumed samples: S | ... | lm loss: X.XXXXXXXE+00 | ... | ETA: h:mm:ss`. mfu None (CPU, or
    an unknown device without --peak-flops): the MFU field is left out rather than measured against a GPU's peak."""
    gn = "nan" if grad_norm is None else f"{grad_norm:.6E}"
    eta = format_eta((train_iters - iteration) * ms_per_iter / 1000.0)
    mfu_field = "" if mfu is None else f"MFU: {100 * mfu:.4f}% | "
    return (f" iteration {iteration:8d}/{train_iters:8d} | consumed samples: {consumed:12d} | "
            f"elapsed time per iteration (ms): {ms_per_iter:.1f} | tokens/s: {tokens_per_s:.1f} | "
            f"TFLOP/s/GPU: {tflops_per_gpu:.4f} | {mfu_field}learning rate: {lr:.6E} | "
            f"lm loss: {loss:.9E} | grad norm: {gn} | skipped iterations: {skipped:3d} | ETA: {eta}")


class TensorBoard:
    """SummaryWriter on rank 0 (a no-op elsewhere or without --tensorboard-dir); `mirror` (a wandb_writer.WandB)
    receives every scalar logged at an iteration step as well."""

    def __init__(self, log_dir, mirror=None):
        import torch.distributed as dist

        self.writer, self.mirror = None, mirror
        if log_dir and (not dist.is_initialized() or dist.get_rank() == 0):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir, max_queue=10)

    def scalar(self, tag: str, value, step: int, mirror: bool = True) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)
        if mirror and self.mirror is not None:
            self.mirror.add(tag, value, step)

    def text(self, tag: str, value: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, value, 0)

    def train(self, step, *, loss, lr, grad_norm, tokens_per_s, mfu, ms_per_iter, skipped, consumed):
        self.scalar("lm loss", loss, step)
        self.scalar("lm loss vs samples", loss, consumed, mirror=False)  # W&B: "lm loss" against "consumed samples"
        if self.mirror is not None:
            self.mirror.add("consumed samples", consumed, step)
        self.scalar("perplexity", math.exp(min(loss, 50.0)), step)
        self.scalar("learning-rate", lr, step)
        self.scalar("grad-norm", grad_norm, step)
        self.scalar("throughput/tokens-per-second", tokens_per_s, step)
        self.scalar("throughput/mfu", mfu, step)
        self.scalar("iteration-time-ms", ms_per_iter, step)
        self.scalar("skipped-iterations", skipped, step)

    def validation(self, step, loss):
        self.scalar("validation/lm loss", loss, step)
        self.scalar("validation/perplexity", math.exp(min(loss, 50.0)), step)

    def cms(self, step, firing, update_norms, firings):
        for lvl, total in enumerate(firings):
            self.scalar(f"cms/level{lvl}/fired", 1.0 if lvl in firing else 0.0, step)
            self.scalar(f"cms/level{lvl}/firings", total, step)
            if lvl in firing and lvl < len(update_norms):
                self.scalar(f"cms/level{lvl}/update-norm", update_norms[lvl], step)

    def memory_norms(self, step, norms):
        for name, value in norms.items():
            self.scalar(f"memory-state-norm/{name}", value, step)

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.mirror is not None:
            self.mirror.close()


class Throughput:
    """Wall time between log lines -> ms/iter, tokens/s, TFLOP/s per device, MFU (None without a peak)."""

    def __init__(self, tokens_per_iter: int, flops_per_iter: float, world_size: int, peak_flops: Optional[float]):
        self.tokens_per_iter, self.flops_per_iter = tokens_per_iter, flops_per_iter
        self.world, self.peak = world_size, peak_flops
        self.t0, self.iters = time.perf_counter(), 0

    def tick(self):
        self.iters += 1

    def read(self):
        dt = max(time.perf_counter() - self.t0, 1e-9)
        n = max(self.iters, 1)
        sec = dt / n
        tflops = self.flops_per_iter / sec / self.world / 1e12
        out = dict(ms_per_iter=1000 * sec, tokens_per_s=self.tokens_per_iter / sec, tflops_per_gpu=tflops,
                   mfu=tflops * 1e12 / self.peak if self.peak else None)
        self.t0, self.iters = time.perf_counter(), 0
        return out
