"""W&B and MFU logging: offline without credentials (never touching the network), one history row per iteration that
mirrors the TensorBoard scalars, no MFU on CPU or an unknown device, the known GPUs' peaks. `wandb_history` reads an
offline run's .wandb file (W&B's record log) for these tests and tests/distributed/test_train_loop.py."""

from __future__ import annotations

import glob
import json
import os
import socket
import struct

import pytest


def wandb_history(path):
    """The history rows of a .wandb file: a ":W&B" header, then 32 KiB blocks of records (crc32 u4, length u2,
    type u1: 1 full, 2 first, 3 middle, 4 last), each record a serialized wandb_internal Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_mode_without_credentials_is_offline_without_network(monkeypatch, tmp_path):
    from hope_megatron.training.wandb_writer import choose_mode

    def no_network(*a, **k):
        raise AssertionError("choose_mode tried the network without credentials")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert choose_mode({}) == ("offline", "no W&B API key (WANDB_API_KEY or `wandb login`)")
    assert choose_mode({"WANDB_MODE": "disabled"})[0] == "disabled"
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    mode, why = choose_mode({"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "https://wandb.example.org"})
    assert mode == "offline" and why.startswith("wandb.example.org is not reachable")


def test_mirror_writes_one_row_per_iteration(monkeypatch, tmp_path):
    """TensorBoard(mirror=WandB) on a fresh offline run: the history equals what was logged, per step."""
    pytest.importorskip("wandb")
    from hope_megatron.training.logging import TensorBoard
    from hope_megatron.training.wandb_writer import WandB

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # unset for choose_mode; restored after the WandB run sets it to offline
    for k in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{k}_DIR", str(tmp_path / k.lower()))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    tb = TensorBoard(str(tmp_path / "tb"), mirror=WandB("p", "n", str(tmp_path / "wb"), {"lr": 0.1}))
    assert tb.mirror.mode == "offline"
    for it in (1, 2, 3):
        tb.cms(it, [0] if it % 2 else [], [0.5], [it])
        tb.train(it, loss=2.0 / it, lr=1e-3 * it, grad_norm=0.25, tokens_per_s=100.0 * it, mfu=None, ms_per_iter=5.0,
                 skipped=0, consumed=4 * it)
    tb.scalar("validation/lm loss", float("nan"), 3)  # non-finite values are dropped on both sides
    tb.close()
    (path,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = {r["_step"]: r for r in wandb_history(path)}
    assert sorted(rows) == [1, 2, 3]
    assert [rows[i]["lm loss"] for i in (1, 2, 3)] == [2.0, 1.0, 2.0 / 3]
    assert [rows[i]["consumed samples"] for i in (1, 2, 3)] == [4, 8, 12]
    assert [rows[i]["cms/level0/fired"] for i in (1, 2, 3)] == [1.0, 0.0, 1.0]
    assert rows[3]["cms/level0/update-norm"] == 0.5 and "cms/level0/update-norm" not in rows[2]
    assert all("throughput/mfu" not in r and "lm loss vs samples" not in r and "validation/lm loss" not in r
               for r in rows.values())


def test_progress_line_and_peaks():
    from hope_megatron.training.flops import peak_flops
    from hope_megatron.training.logging import progress_line

    kw = dict(iteration=2, train_iters=4, consumed=8, ms_per_iter=10.0, tokens_per_s=1234.5, tflops_per_gpu=0.0012,
              lr=1e-3, loss=2.5, grad_norm=0.5, skipped=0)
    cpu = progress_line(mfu=None, **kw)
    assert "tokens/s: 1234.5 | TFLOP/s/GPU: 0.0012 | learning rate" in cpu and "MFU" not in cpu
    assert "| MFU: 35.0000% | learning rate" in progress_line(mfu=0.35, **kw)
    assert peak_flops(None, None) is None and peak_flops(None, "Some NPU") is None
    assert peak_flops(None, "NVIDIA H100 80GB HBM3") == 989e12 and peak_flops(None, "NVIDIA H100 PCIe") == 756e12
    assert peak_flops(None, "NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops(2e12, None) == 2e12
    assert peak_flops(1e15, "NVIDIA H200") == 1e15
