"""convert_to_torch: a TP2xPP2 checkpoint of every variant converts on one CPU process and the plain PyTorch model's
logits equal megatron's (fp32, relative 1e-5); streaming in uneven segments equals the whole forward; greedy
generation equals argmax re-forwarding; convert_from_torch round-trips bitwise; unknown/partial checkpoints are refused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from hope_megatron.testing import run_distributed
from tests.distributed import convert_workers as W


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ckpt"))
    ref = run_distributed(W.save_worker, 4, root, timeout=400)[0]
    os.makedirs(os.path.join(root, "missing"))
    shutil.copytree(os.path.join(root, "titans"), os.path.join(root, "partial"))
    os.remove(os.path.join(root, "partial", "iter_0000007", ".metadata"))
    errors = run_distributed(W.convert_worker, 1, root, timeout=400)[0]
    return root, ref, errors


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", list(W.CASES))
def test_plain_model_equals_megatron(converted, case):
    from hope_megatron.inference import load_model

    root, ref, _ = converted
    model = load_model(os.path.join(root, case + "_torch"))
    t = W.tokens()
    with torch.no_grad():
        whole = model(t)
        # saved at TP2 with 66 rows, exported with the tokenizer's 65 (the padding row dropped)
        assert model.vocab_size == W.VOCAB + 1 and whole.shape[-1] == ref[case].shape[-1] == W.VOCAB + 1
        assert _rel(whole, ref[case]) <= 1e-5
        state, pieces = None, []
        for a, b in ((0, 5), (5, 6), (6, 13), (13, 16)):  # splits mid-chunk and mid-window
            logits, state = model(t[:, a:b], state, return_state=True)
            pieces.append(logits)
        assert _rel(torch.cat(pieces, dim=1), whole) <= 1e-5
        assert state.position == W.SEQ
        gen = model.generate(t[:, :6], 4, segment=4)
        seq = t[:, :6]
        for _ in range(4):  # greedy == argmax of the whole forward, token by token
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(gen, seq[:, 6:])


@pytest.mark.parametrize("case", W.ROUND_TRIP)
def test_round_trip_is_bitwise(converted, case):
    from safetensors.torch import load_file

    root = converted[0]
    a = load_file(os.path.join(root, case + "_torch", "model.safetensors"))
    b = load_file(os.path.join(root, case + "_torch2", "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_unknown_and_partial(converted):
    errors = converted[2]
    assert "latest_checkpointed_iteration.txt" in errors["missing"]
    assert ".metadata is missing (the save did not finish), and no complete checkpoint precedes iteration 7" \
        in errors["partial"]


@pytest.mark.parametrize("case", list(W.CASES))
def test_transformers_export_equals_megatron(converted, case):
    """The converted TP2xPP2 checkpoint, exported for Hugging Face transformers (export_hf.py), gives megatron's
    logits through AutoModelForCausalLM (fp32, relative 1e-5): every variant and the HDWT hybrid."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from checkpoints_convert.export_hf import export_hf

    root, ref, _ = converted
    out = os.path.join(root, case + "_hf")
    export_hf(os.path.join(root, case + "_torch"), out)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert _rel(model(W.tokens()).logits, ref[case]) <= 1e-5
