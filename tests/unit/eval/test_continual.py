"""Forgetting on synthetic matrices with known answers; bootstrap CI brackets the point estimate; test-time CMS with
all-zero learning rates reproduces the static model's streamed losses and updates fire only at multiples of P_l."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hope_megatron.eval.continual import bootstrap_af, forgetting
from hope_megatron.inference.cms_stream import TestTimeCMS, TestTimeCMSConfig
from tests.unit.eval.helpers import tiny_model


def test_forgetting_known_answer():
    # row 0 = before any segment; row i = after segment i; columns = segments (losses)
    m = [[5.0, 5.0, 5.0],
         [2.0, 4.0, 5.0],   # learned segment 0
         [1.8, 1.5, 4.5],   # learned 1 (segment 0 still improved to 1.8)
         [3.0, 1.0, 1.0]]   # learned 2: segment 0 at 3.0 (best 1.8), segment 1 at 1.0 (improved: negative)
    r = forgetting(m)
    assert r["forgetting"] == pytest.approx([1.2, -0.5])
    assert r["average_forgetting"] == pytest.approx(0.35)
    assert r["bwt"] == pytest.approx([1.0, -0.5])
    assert r["average_bwt"] == pytest.approx(0.25)
    square = forgetting(np.asarray(m)[1:])  # mode A: no "before" row
    assert square["forgetting"] == pytest.approx([1.2, -0.5])


def test_bootstrap_ci_brackets_point():
    rng = np.random.default_rng(0)
    base = np.array([[5, 5], [2, 4], [3, 1]], dtype=float)
    per_seed = [base[:, :, None] + 0.1 * rng.standard_normal((3, 2, 30)) for _ in range(3)]
    point, lo, hi = bootstrap_af(per_seed, n_boot=300)
    assert point == pytest.approx(1.0, abs=0.1)
    assert lo <= point <= hi and hi - lo < 0.2


def test_zero_lr_is_static_and_updates_fire_on_period():
    model = tiny_model("hope", chunk=8, cms_widths=(16, 16))
    tokens = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(1))
    static = model.token_nll(tokens, segment=16)
    ttc = TestTimeCMS(model, TestTimeCMSConfig(periods=[16, 48], lr=[0.0, 0.0], clip=[1.0, 1.0], momentum=[0.0, 0.0]))
    streamed = torch.cat([ttc.feed(tokens[:, :40]), ttc.feed(tokens[:, 40:])], dim=1)
    assert float((streamed - static).abs().max() / static.abs().max()) <= 1e-6
    assert ttc.updates == {0: 6, 1: 2}

    model2 = tiny_model("hope", chunk=8, cms_widths=(16, 16))
    before = {n: p.detach().clone() for n, p in model2.named_parameters()}
    ttc2 = TestTimeCMS(model2, TestTimeCMSConfig(periods=[16, 48], lr=[1e-2, 1e-2], clip=[1.0, 1.0],
                                                 momentum=[0.9, 0.0]))
    ttc2.feed(tokens[:, :40])  # 40 tokens: level 0 fired twice, level 1 not yet
    changed = {n for n, p in model2.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".mlp.levels.0." in n for n in changed)
    assert ttc2.updates == {0: 2, 1: 0}


def _save_converted(model, path):
    """A converted-checkpoint directory (config.json + model.safetensors) of a tiny plain model, NullTokenizer ids."""
    import json
    import os

    from safetensors.torch import save_file

    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model.cfg, f)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
    return str(path)


def test_mode_a_rows_are_each_checkpoint_on_every_segment(tmp_path):
    import json
    import os

    from hope_megatron.eval.continual import run, window_losses
    from hope_megatron.inference import load_model

    rng = np.random.default_rng(0)
    segs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for _ in range(3):  # the last 2 documents are held out
                f.write(json.dumps({"text": " ".join(str(int(i)) for i in rng.integers(0, 250, 40))}) + "\n")
        segs.append({"name": name, "path": str(path)})
    cks = []
    for seed in (0, 1, 2):
        model = tiny_model("hope", seed=seed, chunk=8)
        cks.append(_save_converted(model, tmp_path / f"ck{seed}"))
    spec = {"segments": segs, "eval_docs": 2, "seq_length": 16, "max_windows": 4, "start_checkpoint": cks[0],
            "checkpoints": cks[1:]}
    res = run(spec, "A", [0], n_boot=50)
    assert res["row_labels"] == ["start", "after a", "after b"]
    assert res["run"]["checkpoint"] == os.path.abspath(cks[0])  # the model the sequence starts from
    m = np.asarray(res["matrix"])
    assert m.shape == (3, 2)
    from hope_megatron.eval.common import load_tokenizer
    from hope_megatron.eval.continual import segment_windows

    win = segment_windows(load_tokenizer(cks[0]), segs[0]["path"], 2, 16, 4)
    direct = [window_losses(load_model(ck), win).mean() for ck in cks]
    assert m[:, 0] == pytest.approx(direct, rel=1e-6)
    assert res["forgetting"] == pytest.approx([m[2, 0] - m[1, 0]])  # F_a = L[last][a] - min over {after a}
    assert res["average_forgetting_ci"][0] == pytest.approx(res["average_forgetting"])

    # two training seeds: a list of sequences; the matrix is their mean, one AF per seed
    cks.append(_save_converted(tiny_model("hope", seed=3, chunk=8), tmp_path / "ck3"))
    two = run(dict(spec, checkpoints=[cks[1:3], [cks[3], cks[2]]], train_seeds=[7, 8]), "A", [0], n_boot=50)
    assert two["seeds"] == [7, 8] and len(two["per_seed_average_forgetting"]) == 2
    l3 = window_losses(load_model(cks[3]), win).mean()
    assert two["matrix"][1][0] == pytest.approx((direct[1] + l3) / 2, rel=1e-6)
    assert two["per_seed_average_forgetting"][0] == pytest.approx(res["average_forgetting"], rel=1e-9)
    with pytest.raises(ValueError, match="one checkpoint per segment"):
        run(dict(spec, checkpoints=[cks[1:3], cks[1:2]]), "A", [0])


def test_test_time_cms_does_not_depend_on_the_feed_cuts():
    """Issue 16 item 4: feeding a stream as 3 + 10 + 13 tokens gives the NLL and the CMS parameters of one aligned
    call (segment 8): the pair crossing a feed() cut is differentiated and no gradient is truncated at the cut."""
    tokens = torch.randint(0, 256, (2, 26), generator=torch.Generator().manual_seed(3))
    cfg = TestTimeCMSConfig(periods=[8, 16], lr=[5e-2, 5e-2], clip=[10.0, 10.0], momentum=[0.5, 0.0])
    runs = {}
    for name, cuts in (("aligned", [26]), ("cut", [3, 10, 13]), ("fine", [1, 6, 1, 9, 9])):
        model = tiny_model("hope", chunk=4, cms_widths=(16, 16))
        ttc = TestTimeCMS(model, cfg)
        pos, out = 0, []
        for n in cuts:
            out.append(ttc.feed(tokens[:, pos:pos + n]))
            pos += n
        runs[name] = (torch.cat(out, dim=1), torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
                      dict(ttc.updates))
    nll, params, updates = runs["aligned"]
    assert updates == {0: 3, 1: 1}
    for name in ("cut", "fine"):
        assert runs[name][2] == updates
        assert (runs[name][0] - nll).abs().max() < 1e-6, (name, (runs[name][0] - nll).abs().max())
        assert (runs[name][1] - params).abs().max() < 1e-6, (name, (runs[name][1] - params).abs().max())
