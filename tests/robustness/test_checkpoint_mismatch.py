"""Case 2: --load of a checkpoint into a different model is one sentence naming the flags (never a silent load of
another vocabulary, a shape-mismatch traceback or a KeyError listing every key); the same flags load cleanly."""

from __future__ import annotations

import os

import pytest

from hope_megatron.testing import run_distributed
from tests.robustness.conftest import BIG, SMALL, TINY, assert_no_traceback, error_lines, train_cli


def mismatch_worker(base, cases):
    """One process: pretrain() once per case (each fails at --load, before any training); returns the sentences."""
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.loop import pretrain

    out = {}
    for name, extra in cases.items():
        try:
            summary = pretrain(parse_args(base + extra))
            out[name] = ("ok", summary["start_iteration"])
        except ValueError as e:
            out[name] = ("error", str(e))
    return out


@pytest.fixture(scope="module")
def outcomes(trained, toks):
    base = TINY + ["--load", trained["save"], "--mock-data", "--tokenizer-type", "SentencePieceTokenizer",
                   "--tokenizer-model", toks[SMALL], "--no-exit-signal-handler"]
    cases = {"same": [], "vocab 100": ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100"],
             "vocab 1000": ["--tokenizer-type", "NullTokenizer", "--vocab-size", "1000"],
             "bigger tokenizer": ["--tokenizer-model", toks[BIG]], "hidden": ["--hidden-size", "64"],
             "layers": ["--num-layers", "3"], "variant": ["--hope-variant", "transformer"]}
    return run_distributed(mismatch_worker, 1, base, cases, timeout=400)[0]


def test_same_flags_load(outcomes):
    assert outcomes["same"] == ("ok", 6)


@pytest.mark.parametrize("case, theirs", [("vocab 100", "--tokenizer-type NullTokenizer --vocab-size 100"),
                                          ("vocab 1000", "--tokenizer-type NullTokenizer --vocab-size 1000"),
                                          ("bigger tokenizer", None)])
def test_another_vocabulary_is_refused(outcomes, trained, toks, case, theirs):
    path = os.path.join(trained["save"], "iter_0000006")
    size = {"vocab 100": 101, "vocab 1000": 1001, "bigger tokenizer": BIG}[case]
    theirs = theirs or f"--tokenizer-model {toks[BIG]}"
    assert outcomes[case] == ("error", f"{path} was trained with a vocabulary of {SMALL} (--tokenizer-model "
                                       f"{toks[SMALL]}) but this run's tokenizer has {size} ({theirs}); pass the "
                                       f"checkpoint's tokenizer flags, or drop --load to train a new model.")


@pytest.mark.parametrize("case, said", [("hidden", "--hidden-size 64 here, 32 in the checkpoint"),
                                        ("layers", "--num-layers 3 here, 2 in the checkpoint"),
                                        ("variant", "--hope-variant transformer here, hope in the checkpoint")])
def test_another_model_names_the_flags(outcomes, trained, case, said):
    path = os.path.join(trained["save"], "iter_0000006")
    assert outcomes[case] == ("error", f"{path} holds a different model ({said}); pass the checkpoint's values "
                                       f"(listed in {path}/run_config.yaml) or a different --load.")


def test_cli_prints_one_sentence(trained):
    proc = train_cli(trained["args"] + ["--load", trained["save"], "--hope-variant", "transformer"])
    path = os.path.join(trained["save"], "iter_0000006")
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        f"error: {path} holds a different model (--hope-variant transformer here, hope in the checkpoint); pass the "
        f"checkpoint's values (listed in {path}/run_config.yaml) or a different --load."]
    assert_no_traceback(proc)
