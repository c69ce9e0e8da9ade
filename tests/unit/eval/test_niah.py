"""NIAH: prompts have exactly the requested token length with the needle at the requested depth; a hope model's
peak memory while reading 64k tokens is within 1.2x of its peak at 8k (streamed, hope_math §7.2)."""

from __future__ import annotations

import random

import pytest
import torch

from hope_megatron.eval import niah
from tests.unit.eval.helpers import ByteTokenizer, tiny_model


@pytest.mark.parametrize("kind", niah.NEEDLES)
@pytest.mark.parametrize("length,depth", [(1024, 0.0), (1024, 0.5), (3000, 0.25), (4096, 1.0), (777, 0.9)])
def test_needle_at_depth_with_exact_length(kind, length, depth):
    tok = ByteTokenizer()
    hay = tok.tokenize("The quick brown fox jumps over the lazy dog. " * 7)  # shorter than the fill: cycled
    needle, question, answer = niah.make_needle(kind, random.Random(length))
    n_ids, q_ids = tok.tokenize(needle), tok.tokenize(question)
    ids, pos = niah.build_prompt(hay, n_ids, q_ids, length, depth, offset=5)
    assert len(ids) == length
    fill = length - len(n_ids) - len(q_ids)
    assert pos == round(depth * fill)
    assert ids[pos:pos + len(n_ids)] == n_ids and ids[-len(q_ids):] == q_ids
    assert answer.strip() in needle
    cycled = (hay * (length // len(hay) + 2))[5:5 + fill]  # the haystack, cycled from the offset, around the needle
    assert ids[:pos] + ids[pos + len(n_ids):length - len(q_ids)] == cycled


def test_build_prompt_refuses_bad_input():
    with pytest.raises(ValueError, match="depth"):
        niah.build_prompt([1, 2], [3], [4], 10, 1.5)
    with pytest.raises(ValueError, match="shorter"):
        niah.build_prompt([1, 2], [3] * 8, [4] * 8, 10, 0.5)


def test_attention_marked_beyond_budget():
    from tests.unit.eval.helpers import tiny_config

    cfg = tiny_config("transformer")
    assert niah.attention_bytes(tiny_config("hope"), 2**19, 2048) == 0  # memory model: nothing grows
    assert niah.attention_bytes(cfg, 2**16, 2048) > niah.attention_bytes(cfg, 2**13, 2048) * 7


def test_hope_peak_memory_flat_in_length():
    torch.manual_seed(0)
    model = tiny_model("hope", hidden=8, heads=1, chunk=512, cms_widths=(8,))
    peaks = {}
    for length in (4096, 16384):  # 2 and 8 streamed segments (was 8k vs 64k: the same claim at a quarter of the time)
        prompt = torch.randint(0, 256, (1, length))
        _, peaks[length] = niah.peak_alloc_bytes(lambda: niah.run_trial(model, prompt, [1, 2], 2048))
    assert peaks[4096] > 0
    assert peaks[16384] <= 1.2 * peaks[4096], peaks


def test_peak_probe_sees_a_known_allocation():
    """A 16 MiB tensor alive inside fn (then freed) is the peak: measured within 1 MiB of 16 MiB once warm (the first
    call also sees one-off lazy initialisation, which is why niah.evaluate warms up before measuring)."""
    def work():
        x = torch.ones(4 * 2**20)  # 16 MiB of fp32
        return float(x[:4].sum())

    niah.peak_alloc_bytes(work)
    out, peak = niah.peak_alloc_bytes(work)
    assert out == 4.0
    assert abs(peak - 16 * 2**20) < 2**20, peak


class _Oracle:
    """Answers from the needle it finds in the prompt (ByteTokenizer ids), or a wrong answer when `wrong`: the scoring
    must give recall 1 and 0."""

    def __init__(self, tok, wrong=False):
        self.tok, self.wrong = tok, wrong

    def generate(self, prompt, max_new_tokens, segment, **progress_hook):
        import re

        text = self.tok.detokenize(prompt[0].tolist())
        m = re.search(r"(?:The pass key is|is:) (\S+?)\. ", text)
        ans = " " + ("x" if self.wrong else m.group(1))
        return torch.tensor([self.tok.tokenize(ans)[:max_new_tokens]])


@pytest.mark.parametrize("wrong", [False, True])
def test_recall_scoring_with_an_oracle(wrong):
    tok = ByteTokenizer()
    hay = tok.tokenize("Plain filler text without any digits or colons at all here. " * 4)
    cells = niah.evaluate(_Oracle(tok, wrong), tok, {"layer_letters": "H"}, hay, [400, 700], [0.0, 0.5, 1.0],
                          list(niah.NEEDLES), trials=2, segment=256, budget_bytes=1e9)
    assert len(cells) == 2 * 3 * 4 and {c["status"] for c in cells} == {"run"}
    assert {c["recall"] for c in cells} == ({0.0} if wrong else {1.0})
    assert niah.recall_grid(cells, [400, 700], [0.0, 0.5, 1.0]) == [[0.0 if wrong else 1.0] * 2] * 3
