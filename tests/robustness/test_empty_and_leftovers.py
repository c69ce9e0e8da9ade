"""Cases 7 and 8: empty inputs are refused naming the file (preprocess and training); megatron's checkpoint-writer
processes die with their rank; temporary files of killed preprocess runs are removed once their process is gone, never
while it lives, and a killed run never touches the pair it would replace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.robustness.conftest import REPO, load_tool, run


def test_empty_jsonl_is_refused(tmp_path, capsys):
    pre = load_tool("preprocess_data")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = ["--output-prefix", str(tmp_path / "out" / "e"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "10"]
    assert pre.main(["--input", str(empty)] + base) == 2
    assert capsys.readouterr().err.strip() == f"error: --input {empty} is empty (0 bytes); remove it from --input or fill it."
    blank = tmp_path / "blank.jsonl"
    blank.write_text('\n{"text": "   "}\n{"text": ""}\n')
    assert pre.main(["--input", str(blank)] + base) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {blank} gave no document for --json-keys text (3 records read); give a non-empty input. No output "
        f"was written.")
    assert not os.listdir(tmp_path / "out")


def test_training_on_an_empty_pair_names_the_file(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from hope_megatron.data.gpt_datasets import check_pair

    prefix = str(tmp_path / "e_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin")
    builder.finalize(prefix + ".idx")  # what an older preprocess (or Megatron-LM's) writes for an empty input
    with pytest.raises(ValueError) as e:
        check_pair(prefix)
    assert str(e.value) == (f"{prefix}.bin is empty (no tokens): the corpus it was made from held no document; re-run "
                            f"tools/preprocess_data.py on a non-empty input or drop {prefix} from --data-path.")
    open(prefix + ".idx", "wb").close()
    with pytest.raises(ValueError, match=f"{prefix}.idx is not a megatron indexed-dataset index"):
        check_pair(prefix)


_ORPHAN = textwrap.dedent("""
    import multiprocessing as mp, sys, time
    def sleeper():
        time.sleep(120)
    if __name__ == "__main__":
        if sys.argv[1] == "fixed":
            from hope_megatron.training import checkpoint_writers
            checkpoint_writers.install()
        from megatron.core.dist_checkpointing.strategies import filesystem_async
        filesystem_async._get_write_results_queue()        # megatron's Manager (spawned), as its first save does
        p = mp.get_context("fork").Process(target=sleeper)  # a writer, forked as megatron forks them
        p.start()
        import psutil
        print(" ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
        time.sleep(120)
""")


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("mode", ["megatron", "fixed"])
def test_checkpoint_writers_die_with_a_killed_rank(tmp_path, mode):
    """Without checkpoint_writers.install() megatron's writer and Manager outlive a SIGKILLed rank (the control);
    with it they die with it."""
    script = tmp_path / "rank.py"
    script.write_text(_ORPHAN)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    kids = [int(x) for x in proc.stdout.readline().split()]
    assert len(kids) >= 2, kids
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + (10 if mode == "fixed" else 2)
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if _alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    if mode == "fixed":
        assert left == []
    else:
        assert left, "the control should leave orphans; if megatron fixed this, drop checkpoint_writers"


_KILLED = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests.unit.data.conftest import load_tool
    from hope_megatron.data import document_encoder as enc
    pre = load_tool("preprocess_data")
    real = enc.encode
    def encode(record):
        if record[1] == 5:  # SIGKILL mid-run: no finally, no cleanup
            os.kill(os.getpid(), signal.SIGKILL)
        return real(record)
    enc.encode = encode
    pre.main(sys.argv[1:])
""")


def test_killed_rerun_keeps_the_old_pair_and_its_leftovers_are_removed_safely(tmp_path, capsys):
    pre = load_tool("preprocess_data")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"{i} {i + 1}"}) + "\n" for i in range(8)))
    prefix = str(tmp_path / "out" / "p")
    argv = ["--input", str(src), "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", "20"]
    assert pre.main(argv) == 0
    final = prefix + "_text_document"
    before = [open(final + ext, "rb").read() for ext in (".bin", ".idx")]
    script = tmp_path / "killed.py"
    script.write_text(_KILLED.format(repo=REPO))
    killed = run([str(script)] + argv[:1] + [str(src)] + argv[2:])
    assert killed.returncode == -signal.SIGKILL
    assert [open(final + ext, "rb").read() for ext in (".bin", ".idx")] == before  # the old pair is intact
    stale = sorted(f for f in os.listdir(tmp_path / "out") if ".tmp-" in f)
    assert stale and all(f.startswith("p_text_document.bin.tmp-") for f in stale)
    live = final + f".bin.tmp-{os.getppid()}"  # a running process's file (pytest's parent): never taken
    open(live, "w").close()
    capsys.readouterr()
    assert pre.main(argv) == 0
    err = capsys.readouterr().err
    for f in stale:
        assert f"[preprocess] removed {tmp_path}/out/{f}, left by a killed run (process {f.rsplit('-', 1)[1]} is gone)" \
            in err
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["p_text_document.bin", "p_text_document.idx",
                                                           os.path.basename(live)])


def test_a_locked_temporary_is_never_removed(tmp_path):
    """A dead pid is not enough: a writer on another host sharing the disk holds an flock, and its file stays."""
    from hope_megatron.data.output_paths import lock_while_writing, remove_stale_temporaries

    final = str(tmp_path / "p.bin")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tmp = f"{final}.tmp-{int(dead.stdout)}"
    open(tmp, "w").close()
    fd = lock_while_writing(tmp)
    assert remove_stale_temporaries(final) == [] and os.path.exists(tmp)
    os.close(fd)
    assert remove_stale_temporaries(final) == [tmp] and not os.path.exists(tmp)
