"""Weights & Biases mirror of the TensorBoard scalars (Megatron-LM's --wandb-project / --wandb-exp-name /
--wandb-save-dir). Rank 0 only, like TensorBoard (logging.py); the optional extra `pip install -e '.[wandb]'`.

Every scalar logging.TensorBoard writes at an iteration goes into one W&B history row at that step (plus "consumed
samples"); the run's config is the resolved arguments. Mode: WANDB_MODE when the user set it; otherwise "online" only
with an API key (WANDB_API_KEY, or `wandb login`'s netrc entry) and the W&B host answering on port 443 within 3 s,
else "offline" with a line saying why and how to upload later (`wandb sync DIR`). Offline runs never touch the network.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Dict, Optional, Tuple
from urllib.parse import urlparse

DEFAULT_HOST = "https://api.wandb.ai"  # when wandb is not importable to say its own default (wandb.sdk.lib.urls)


def _default_host() -> str:
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL

        return DEFAULT_BASE_URL
    except ImportError:
        return DEFAULT_HOST


def _netrc_has(host: str) -> bool:
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(path, encoding="utf-8") as f:
            return host in f.read()
    except OSError:
        return False


def choose_mode(env=None) -> Tuple[str, str]:
    """(mode, reason): the user's WANDB_MODE, else online only with credentials and a reachable host."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"], "WANDB_MODE is set"
    host = urlparse(env.get("WANDB_BASE_URL") or _default_host()).hostname or "api.wandb.ai"
    if not (env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has(host)):
        return "offline", "no W&B API key (WANDB_API_KEY or `wandb login`)"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return "offline", f"{host} is not reachable ({type(e).__name__})"
    return "online", f"API key found and {host} reachable"


class WandB:
    """One W&B run; `add(tag, value, step)` collects a history row per step, written when the step moves on."""

    def __init__(self, project: str, name: Optional[str], save_dir: str, config: dict):
        import wandb

        os.makedirs(save_dir, exist_ok=True)
        self.mode, why = choose_mode()
        if self.mode == "offline":
            # through the environment, not only init(mode=): wandb's process-wide settings (its telemetry exporter
            # among them) read it, and would otherwise probe the W&B server even for an offline run
            os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        self.run = wandb.init(project=project, name=name, dir=save_dir, config=config, mode=self.mode)
        self.dir = getattr(self.run, "dir", save_dir)
        if self.mode == "offline":
            print(f"W&B: logging offline ({why}) under {os.path.join(save_dir, 'wandb')}; upload later with "
                  f"`wandb sync {os.path.join(save_dir, 'wandb', 'offline-run-*')}`", flush=True)
        self._row: Dict[str, float] = {}
        self._step: Optional[int] = None

    @classmethod
    def from_args(cls, args, config: dict) -> Optional["WandB"]:
        """The run --wandb-project asks for, on rank 0; None otherwise."""
        import torch.distributed as dist

        if not getattr(args, "wandb_project", None) or (dist.is_initialized() and dist.get_rank() != 0):
            return None
        save_dir = args.wandb_save_dir or (os.path.join(args.save, "wandb") if args.save else "wandb")
        return cls(args.wandb_project, args.wandb_exp_name, save_dir, config)

    def add(self, tag: str, value, step: int) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        if self._step is not None and step != self._step:
            self.flush()
        self._step = step
        self._row[tag] = float(value)

    def flush(self) -> None:
        if self._row:
            self.run.log(self._row, step=self._step)
        self._row = {}

    def close(self) -> None:
        import wandb

        self.flush()
        self.run.finish()
        # finish() can return before wandb's service has written the run's .wandb file (an offline run then holds only
        # its header until the process exits, measured ~1 run in 4); teardown waits for the service, so the run
        # directory is complete when training returns (for `wandb sync` or a reader in the same process)
        wandb.teardown()
