"""The tracker file is replaced atomically and names the last complete iteration."""

import os

import pytest

from hope_megatron.training import checkpointing as ck


def test_tracker_roundtrip_and_layout(tmp_path):
    root = str(tmp_path)
    assert ck.read_tracker(root) is None
    ck.write_tracker(root, 100)
    assert ck.read_tracker(root) == 100
    assert ck.iteration_dir(root, 100) == os.path.join(root, "iter_0000100")
    ck.write_tracker(root, 200)
    assert ck.read_tracker(root) == 200
    assert sorted(os.listdir(root)) == ["latest_checkpointed_iteration.txt"]  # no temporary left behind


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    root = str(tmp_path)
    ck.write_tracker(root, 3)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError):
        ck.write_tracker(root, 6)
    monkeypatch.undo()
    assert ck.read_tracker(root) == 3


def test_garbage_tracker_is_named(tmp_path):
    (tmp_path / ck.TRACKER).write_text("release\n")
    with pytest.raises(ValueError, match="not an iteration number"):
        ck.read_tracker(str(tmp_path))
