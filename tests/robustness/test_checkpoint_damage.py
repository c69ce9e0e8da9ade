"""Case 1: damaged checkpoints on --load and in the converter name the file; a damaged latest checkpoint falls back to
the previous complete one with a warning (and the resumed run equals the uninterrupted one), or refuses naming both."""

from __future__ import annotations

import os

import pytest

from tests.robustness.conftest import REPO, assert_no_traceback, copy_tree, losses, run, train_cli


def _damage(root, how):
    it = os.path.join(root, "iter_0000006")
    if how == "truncated shard":
        with open(os.path.join(it, "__0_0.distcp"), "r+b") as f:
            f.truncate(1000)
        return f"{it}/__0_0.distcp is truncated (1,000 of "
    if how == "deleted shard":
        os.remove(os.path.join(it, "__0_1.distcp"))
        return f"{it}/__0_1.distcp is missing"
    if how == "missing .metadata":
        os.remove(os.path.join(it, ".metadata"))
        return f"{it}/.metadata is missing (the save did not finish)"
    if how == "truncated common.pt":
        with open(os.path.join(it, "common.pt"), "r+b") as f:
            f.truncate(100)
        return f"{it}/common.pt is damaged (RuntimeError: PytorchStreamReader failed reading zip archive"
    if how == "tracker names a missing iteration":
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("8\n")
        return f"{root}/iter_0000008 does not exist"
    raise AssertionError(how)


DAMAGES = ("truncated shard", "deleted shard", "missing .metadata", "truncated common.pt",
           "tracker names a missing iteration")


@pytest.mark.parametrize("how", DAMAGES)
def test_damage_is_named_and_the_previous_complete_iteration_chosen(trained, tmp_path, how):
    from hope_megatron.training.checkpoint_health import CheckpointError, choose

    root = copy_tree(trained["save"], tmp_path / "ckpt")
    said = _damage(root, how)
    choice = choose(root)
    expect = 6 if how == "tracker names a missing iteration" else 4
    assert (choice.iteration, choice.path) == (expect, os.path.join(root, f"iter_{expect:07d}"))
    assert choice.warning.startswith(f"warning: {root}/latest_checkpointed_iteration.txt names iteration ")
    assert said in choice.warning and f"; loading iteration {expect} (" in choice.warning
    # an explicit step on the damaged iteration is refused with the file and the complete ones
    if how != "tracker names a missing iteration":
        with pytest.raises(CheckpointError) as e:
            choose(root, 6)
        assert said in str(e.value) and str(e.value).endswith("pick a complete iteration with --ckpt-step (complete: 2, 4).")


def test_no_complete_iteration_refuses_naming_both(trained, tmp_path):
    from hope_megatron.training.checkpoint_health import CheckpointError, choose

    root = copy_tree(trained["save"], tmp_path / "ckpt")
    for it in (2, 4, 6):
        os.remove(os.path.join(root, f"iter_{it:07d}", ".metadata"))
    with pytest.raises(CheckpointError) as e:
        choose(root)
    assert str(e.value) == (f"{root}/iter_0000006/.metadata is missing (the save did not finish), and no complete "
                            f"checkpoint precedes iteration 6 under {root}; restore the file, or start without --load.")
    os.remove(os.path.join(root, "latest_checkpointed_iteration.txt"))
    assert choose(root) is None  # only unfinished saves and no tracker: a first save that died, start afresh
    whole = copy_tree(trained["save"], tmp_path / "ckpt2")
    os.remove(os.path.join(whole, "latest_checkpointed_iteration.txt"))  # complete ones: never trained over
    with pytest.raises(CheckpointError) as e:
        choose(whole)
    assert str(e.value) == (f"--load {whole} holds complete checkpoints (2, 4, 6) but no latest_checkpointed_iteration.txt; "
                            f"pass --ckpt-step N to load one, or write N into {whole}/latest_checkpointed_iteration.txt.")


def test_load_of_a_damaged_latest_resumes_from_the_previous_one_exactly(trained, tmp_path):
    """The CLI warns, loads iteration 4 and trains 5 and 6 with exactly the uninterrupted run's losses."""
    root = copy_tree(trained["save"], tmp_path / "ckpt")
    said = _damage(root, "truncated shard")
    proc = train_cli(trained["args"] + ["--load", root])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert said in proc.stdout and f"loaded {root} at iteration 4 (consumed samples 16)" in proc.stdout
    got = losses(proc.stdout)
    assert sorted(got) == [5, 6] and all(got[i] == trained["losses"][i] for i in (5, 6))


def _corrupt_an_item(root):
    """Same size, broken bytes: only reading the tensor can tell (no size check can)."""
    from torch.distributed.checkpoint import FileSystemReader

    it = os.path.join(root, "iter_0000006")
    meta = FileSystemReader(it).read_metadata()
    info = next(v for v in meta.storage_data.values() if v.relative_path == "__0_0.distcp")
    with open(os.path.join(it, "__0_0.distcp"), "r+b") as f:
        f.seek(info.offset)
        f.write(b"\0" * 64)
    return it


def test_converter_falls_back_and_refuses_with_sentences(trained, tmp_path):
    root = copy_tree(trained["save"], tmp_path / "ckpt")
    said = _damage(root, "deleted shard")
    conv = os.path.join(REPO, "checkpoints_convert", "convert_to_torch.py")
    ok = run([conv, "--load", root, "--output", str(tmp_path / "out")])
    assert ok.returncode == 0 and said in ok.stderr and "iteration 4" in ok.stdout, ok.stderr[-2000:]
    whole = copy_tree(trained["save"], tmp_path / "ckpt2")
    it = _corrupt_an_item(whole)  # passes every size check, fails inside torch's reader (a BaseException)
    corrupt = run([conv, "--load", whole, "--output", str(tmp_path / "out7")])
    last = corrupt.stderr.strip().splitlines()[-1]
    assert corrupt.returncode == 1 and last.startswith(f"convert_to_torch: {it} could not be loaded (") and \
        last.endswith("the checkpoint is damaged or was saved by different code; pass --iteration N for an earlier one.")
    assert_no_traceback(corrupt)
