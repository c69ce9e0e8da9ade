"""Long evaluations report as they go and keep what they finished.

- `Progress`: a flushed line at most every `interval` seconds (and at the end) with done/total, rate, elapsed and ETA,
  e.g. `niah: 3,145,728/10,485,760 tokens (30.0%) | 5,012 tokens/s | elapsed 0:10:27 | ETA 0:24:23`.
- `PartialJSON`: the result file rewritten atomically (tmp + rename) after every finished item, with
  `"complete": false` until the end, so a killed run leaves every finished result readable and a crash mid-write never
  leaves a torn file.
- `terminated_raises()`: SIGTERM (a scheduler's pre-emption, `timeout`, `kill`) raises `Terminated` in the main thread,
  so the CLI writes what it has, says so, and exits 143 instead of dying silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Optional


def clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: float, unit: str, label: str, interval: float = 10.0, stream=None):
        self.total, self.unit, self.label, self.interval = float(total), unit, label, interval
        self.stream = stream or sys.stdout
        self.done = 0.0
        self.start = self.last = time.monotonic()

    def advance(self, n: float = 1, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.interval or (self.total and self.done >= self.total):
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: Optional[float] = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,.0f}/{self.total:,.0f} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.done / self.total:.1f}%)"
        text += f" | {rate:,.1f} {self.unit}/s | elapsed {clock(elapsed)}"
        if self.total and rate > 0:
            text += f" | ETA {clock((self.total - self.done) / rate)}"
        return text


class PartialJSON:
    """`write(obj)` replaces path atomically; `obj["complete"]` says whether the run finished."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, obj: dict, complete: bool) -> str:
        obj = dict(obj, complete=complete)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
        return self.path


class Terminated(Exception):
    """SIGTERM arrived (see terminated_raises)."""


@contextlib.contextmanager
def terminated_raises():
    """Inside, SIGTERM raises Terminated (main thread only; elsewhere nothing changes)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
