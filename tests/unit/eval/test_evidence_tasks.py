"""The evidence grid's synthetic tasks (benchmarks/evidence/tasks.py), its statistics and its parameter matching:
the documents are what the report says they are, exactly the training length, and the scoring reads the right
positions (a model that copies the answer scores 100%, chance-level guessing scores chance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.evidence import grid, measure, stats, tasks


def test_mqar_stream_binds_each_query_to_its_latest_value():
    spec = tasks.MQARSpec(keys=16, values=16)
    rng = np.random.default_rng(0)
    for length, choices in ((128, [2, 4, 8]), (96, [16]), (50, [4])):
        ids, queries = tasks.mqar_stream(rng, spec, length, choices)
        assert len(ids) == length and queries
        for p in queries:
            assert 1 <= ids[p] <= spec.keys and spec.keys < ids[p + 1] <= spec.keys + spec.values
        # every instance: N pairs with distinct keys, then the same N keys queried with the same values
        i, seen = 0, 0
        while i < length and ids[i] != spec.GAP:
            n = next(n for n in choices if i + 4 * n <= length and
                     sorted(ids[i:i + 2 * n:2]) == sorted(ids[i + 2 * n:i + 4 * n:2]) and
                     len(set(ids[i:i + 2 * n:2])) == n)
            binding = dict(zip(ids[i:i + 2 * n:2], ids[i + 1:i + 2 * n:2]))
            assert all(binding[k] == v for k, v in zip(ids[i + 2 * n:i + 4 * n:2], ids[i + 2 * n + 1:i + 4 * n:2]))
            assert [q for q in queries if i + 2 * n <= q < i + 4 * n] == list(range(i + 2 * n, i + 4 * n, 2))
            seen += n
            i += 4 * n
        assert seen == len(queries) and all(t == spec.GAP for t in ids[i:])


def test_mqar_refuses_impossible_instances():
    spec = tasks.MQARSpec(keys=8, values=8)
    with pytest.raises(ValueError, match="exceeds the 8 distinct keys"):
        tasks.mqar_instance(np.random.default_rng(0), spec, 64, 9)
    with pytest.raises(ValueError, match="cannot hold 5 pairs"):
        tasks.mqar_instance(np.random.default_rng(0), spec, 19, 5)


class _Oracle(torch.nn.Module):
    """Logits that put all mass on a fixed next-token table: oracle[b, t] = the true next token."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, ids):
        nxt = self.fn(ids)
        return torch.nn.functional.one_hot(nxt, 200).float()


def test_mqar_accuracy_scores_the_value_after_each_query():
    spec = tasks.MQARSpec(keys=16, values=16)
    shift = _Oracle(lambda ids: torch.cat([ids[:, 1:], ids[:, :1]], dim=1))  # knows every next token
    assert measure.mqar_accuracy(shift, spec, 128, 4, 8, seed=3) == [1.0] * 8
    const = _Oracle(lambda ids: torch.full_like(ids, spec.keys + 1))  # always the first value id
    acc = measure.mqar_accuracy(const, spec, 512, 8, 64, seed=3)
    assert abs(np.mean(acc) - 1 / spec.values) < 0.02


def test_passkey_prompt_and_training_document():
    spec = tasks.PasskeySpec()
    rng = np.random.default_rng(1)
    for length, depth in ((256, 0.0), (1024, 0.5), (4096, 1.0)):
        ids, answer = tasks.passkey_prompt(rng, spec, length, depth)
        assert len(ids) == length and ids[-2:] == [spec.Q, spec.PK] and len(set(answer)) == 5
        pk = ids.index(spec.PK)
        assert ids.count(spec.PK) == 2 and ids[pk + 1:pk + 6] == answer and ids[pk + 6] == spec.END
        assert pk == round(depth * (length - 9))  # the needle after a depth fraction of the filler
        assert all(spec.FILLER0 <= t < spec.vocab for i, t in enumerate(ids[:-2]) if not pk <= i <= pk + 6)
    for d in tasks.passkey_documents(rng, spec, 32, 5):
        pk = d.index(spec.PK)
        assert len(d) == 32 and d[25:27] == [spec.Q, spec.PK] and d[27:] == d[pk + 1:pk + 6]


def test_permuted_classes_share_labels_and_permute_features():
    spec = tasks.ClassesSpec()
    u = tasks.PermutedClasses(spec, 3, seed=4)
    rng = np.random.default_rng(0)
    x0, y0 = u.examples(np.random.default_rng(5), 0, 200)
    x2, y2 = u.examples(np.random.default_rng(5), 2, 200)
    assert (y0 == y2).all() and (x0[:, -1] == y0 + spec.features + 1).all() and (x0[:, -2] == spec.SEP).all()
    assert (u.perms[2][x0[:, :spec.proto_len]] == x2[:, :spec.proto_len]).all()  # same draws, permuted inputs
    assert not (x0[:, :spec.proto_len] == x2[:, :spec.proto_len]).all()
    clean = (x0[:, :spec.proto_len] == u.protos[y0]).mean()
    assert 0.75 < clean < 0.9  # noise 0.2 (a replacement can draw the same token back)
    docs = u.documents(rng, 1, 64, 5)
    assert all(len(d) == 64 for d in docs) and all(d[6] == spec.SEP for d in docs)


def test_class_accuracy_reads_the_label_after_sep():
    spec = tasks.ClassesSpec()
    u = tasks.PermutedClasses(spec, 2, seed=0)
    oracle = _Oracle(lambda ids: torch.cat([ids[:, 1:], ids[:, :1]], dim=1))
    assert measure.class_accuracy(oracle, u, 1, 64, 64, seed=0) == 1.0
    first = _Oracle(lambda ids: torch.full_like(ids, spec.features + 1))
    assert abs(measure.class_accuracy(first, u, 0, 2000, 64, seed=0) - 1 / spec.classes) < 0.03


def test_mean_ci_against_known_values():
    m, h, n = stats.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and abs(h - 4.303 * 1.0 / np.sqrt(3)) < 1e-9
    assert stats.mean_ci([5.0]) == (5.0, None, 1) and stats.mean_ci([None]) == (None, None, 0)
    assert stats.fmt([0.1, 0.2, 0.3], 100, 1) == "20.0 ± 24.8" and stats.fmt([]) == "–"


def test_baselines_are_parameter_matched_to_hope():
    g = grid.DEFAULT
    widths = {v: grid.matched_width(v, g) for v in g.variants}
    counts = grid.parameter_counts(g, widths, vocab=34)
    target = counts["hope"]["non_embedding"]
    for v, c in counts.items():
        assert abs(c["non_embedding"] - target) / target < 0.005, (v, c, target)
    assert counts["titans"]["cms"] > 0 and counts["titans_nocms"]["cms"] == 0 and counts["transformer"]["attention"] > 0


def test_clip_figure_draws_every_variant_the_grid_knows(tmp_path):
    """The report of a grid run with the diagnostic variant (--variants ...,hope_eta1e-3) died here once: the figure
    ordered variants by its colour table, which lacked the diagnostic."""
    from benchmarks.evidence import figures

    vs = list(grid.VARIANTS)
    curves = {v: ([1, 2], [[0.5, 0.6], [0.4, 0.7]]) for v in vs}
    finals = {t: {v: [0.5, 0.6] for v in vs} for t in ("mqar", "passkey", "classes")}
    out = figures.clip(str(tmp_path / "clip.png"), curves, finals)
    assert (tmp_path / "clip.png").stat().st_size > 10_000 and out.endswith("clip.png")
    assert set(vs) <= set(figures.COLORS)
