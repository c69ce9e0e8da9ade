"""The launchers' memory preflight, the way users meet it: `examples/pretrain_hope_*.sh --dry-run` at the default
layout prints an estimated peak memory per GPU under GPU_MEMORY_GB=80, and an impossible layout is refused with one
sentence before anything launches (hope_megatron/training/memory_estimate.py, docs/training.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CLEAR = ("GPUS_PER_NODE", "NNODES", "NODE_RANK", "TP", "PP", "FP8", "BF16", "MICRO_BATCH", "GLOBAL_BATCH", "SEQ_LEN",
          "TRAIN_ITERS", "CONFIG", "RECOMPUTE", "SEQUENCE_PARALLEL", "DISTRIBUTED_OPTIMIZER", "VPP_LAYERS",
          "GPU_MEMORY_GB", "TRANSFORMER_IMPL")


def dry_run(name, env=None, args=()):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _CLEAR}
    full.update({"PYTHON": sys.executable, "TRANSFORMER_IMPL": "local"}, **(env or {}))
    return subprocess.run(["bash", os.path.join(REPO, "examples", f"pretrain_hope_{name}.sh"), "--dry-run", *args],
                          capture_output=True, text=True, env=full, timeout=120)


def estimate_gib(stdout: str) -> float:
    m = re.search(r"^memory per GPU\s+~([\d.]+) GiB of GPU_MEMORY_GB=80 GiB", stdout, flags=re.M)
    assert m, stdout
    return float(m.group(1))


@pytest.mark.parametrize("name", ["tiny", "160m", "760m", "1p3b"])
def test_default_layout_fits(name):
    proc = dry_run(name)
    assert proc.returncode == 0, proc.stderr
    gib = estimate_gib(proc.stdout)
    assert 1.0 < gib < 80.0
    if name != "tiny":  # the memory op's share is printed with its form; the fused kernels keep little (issue 14)
        m = re.search(r"^  memory op\s+([\d.]+) GiB \(fused Triton kernels, ([\d.]+) MiB per layer and sequence; "
                      r"the chunked form would keep (\d+) MiB\)", proc.stdout, flags=re.M)
        assert m, proc.stdout
        assert float(m.group(2)) < 0.1 * float(m.group(3))


def test_impossible_layout_is_refused_in_one_sentence():
    # the chunked form keeps ~1.1 GiB per layer and sequence at the pilot shape: x 12 layers x 8 sequences > 80 GiB
    proc = dry_run("160m", args=["--titans-impl", "chunked"])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert estimate_gib(proc.stdout) > 80.0
    assert "above GPU_MEMORY_GB=80" in errors[0] and "RECOMPUTE=full" in errors[0], errors[0]
    assert errors[0].count(". ") == 0 and errors[0].endswith(".")  # one sentence
    assert "dry run: nothing launched" not in proc.stdout


def test_gpu_memory_gb_is_checked():
    proc = dry_run("160m", {"GPU_MEMORY_GB": "eighty"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "GPU_MEMORY_GB='eighty'" in errors[0], proc.stderr
