"""Vocabulary padding never reaches a loss or a logit, and the seeded initialisation draws every parameter from
(seed, its name) whatever the padding: the single-process halves of the layout-parity guarantee (the distributed
halves are tests/distributed/test_train_loop.py and tools/layout_parity.py)."""

import pytest
import torch
import torch.nn.functional as F

from hope_megatron.config import HopeConfig

REAL, SEQ = 61, 16
SHAPE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, titans_chunk_size=4,
             params_dtype=torch.float32)
CASES = {
    "hope": ("hope", dict(cms_levels=2)),
    "transformer": ("transformer", {}),
    "deltanet": ("deltanet", dict(titans_chunk_size=1)),
    "hybrid_biases": ("hope", dict(num_layers=4, layer_pattern="HTDA", cms_levels=2, cms_variant="independent",
                                   add_bias_linear=True)),
}
TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")


def _build(case, padded, seed=5, tied=False):
    from hope_megatron import platform
    from hope_megatron.models import build_model

    variant, extra = CASES[case]
    cfg = HopeConfig.for_variant(variant, **{**SHAPE, **extra})
    platform.configure(cfg)
    return build_model(cfg, REAL, SEQ, padded_vocab_size=padded, seed=seed,
                       share_embeddings_and_output_weights=tied)


@pytest.mark.parametrize("case", list(CASES))
def test_seeded_weights_do_not_depend_on_the_padding(mp_group, case):
    a, b = dict(_build(case, 64).named_parameters()), dict(_build(case, 128).named_parameters())
    other = dict(_build(case, 64, seed=6).named_parameters())
    assert a.keys() == b.keys() and len(a) > 10
    for name, p in a.items():
        q = b[name]
        if name in TABLES:
            assert torch.equal(p[:REAL], q[:REAL]), name
            assert not p[REAL:].any() and not q[REAL:].any(), name  # padding rows are 0
        else:
            assert torch.equal(p, q), name
        if "norm" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias") and "meta." not in name:
            assert not p.any(), name
        elif name.endswith(".linear_fc1.weight"):
            assert abs(float(p.std()) - 0.02) < 0.004 and not torch.equal(p, other[name]), name


def test_padding_rows_take_no_probability_and_get_no_gradient(mp_group):
    model = _build("hope", 128)
    with torch.no_grad():
        model.output_layer.weight[REAL:] = 3.0  # would dominate every softmax if it were not masked
    tokens = torch.randint(0, REAL, (2, SEQ), generator=torch.Generator().manual_seed(0))
    labels = torch.roll(tokens, -1, dims=1)
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ)
    logits = model(tokens, pos, None)
    assert logits.shape[-1] == 128 and torch.all(logits[..., REAL:] == float("-inf"))
    loss = model(tokens, pos, None, labels=labels)
    ref = F.cross_entropy(logits[..., :REAL].reshape(-1, REAL), labels.reshape(-1), reduction="none")
    assert torch.allclose(loss.reshape(-1), ref, rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    grad = model.output_layer.weight.grad
    assert not grad[REAL:].any() and grad[:REAL].abs().sum() > 0


def test_parameter_count_excludes_padding_rows(mp_group):
    from hope_megatron.training.model_setup import count_parameters

    untied, tied = _build("hope", 128), _build("hope", 128, tied=True)
    numel = sum(p.numel() for p in untied.parameters())
    assert count_parameters([untied]) == numel - 2 * (128 - REAL) * SHAPE["hidden_size"]
    assert count_parameters([tied]) == count_parameters([untied]) - REAL * SHAPE["hidden_size"]  # one table
