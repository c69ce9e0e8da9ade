"""Built models: analytic parameter counts equal numel for every variant, names and keys the rest of the project
relies on (CMS levels, TE-compatible checkpoint keys), the mixer's causality and the RoPE choice."""

import pytest
import torch

from hope_megatron.config import HopeConfig
from hope_megatron.layers.cms import cms_level_of

VOCAB, SEQ = 64, 16
SHAPE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, titans_chunk_size=4,
             params_dtype=torch.float32)
CASES = {
    "hope": ("hope", dict(cms_levels=3, cms_hidden_sizes=[16, 32, 48])),
    "hope_attention": ("hope_attention", {}),
    "titans": ("titans", {}),
    "transformer": ("transformer", {}),
    "deltanet": ("deltanet", dict(titans_chunk_size=1)),
    "swa": ("swa", dict(swa_window=4)),
    "hybrid_independent": ("hope", dict(num_layers=4, layer_pattern="HTDA", cms_levels=2, cms_variant="independent")),
    "hope_inner_q_biases": ("hope", dict(inner_q=True, inner_k=False, memory_expansion=2, add_bias_linear=True,
                                         cms_levels=2)),
}


def _build(case, transformer_impl="local"):
    from hope_megatron import platform
    from hope_megatron.models import build_model

    variant, extra = CASES[case]
    cfg = HopeConfig.for_variant(variant, **{**SHAPE, **extra})
    platform.configure(cfg)
    return cfg, build_model(cfg, VOCAB, SEQ, transformer_impl=transformer_impl)


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_parameter_count_equals_numel(mp_group, case):
    from hope_megatron.models.summary import count_parameters

    cfg, model = _build(case)
    counts = count_parameters(cfg, VOCAB)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    fam = {"memory": 0, "attention": 0, "cms": 0}
    for name, p in model.named_parameters():
        if ".self_attention." in name:
            fam["memory" if ("in_proj" in name or "meta." in name or "conv_weight" in name or "out_norm" in name
                             or "out_proj" in name) else "attention"] += p.numel()
        if cms_level_of(name) is not None:
            fam["cms"] += p.numel()
    assert fam["memory"] == counts["memory"] and fam["attention"] == counts["attention"]
    assert fam["cms"] == sum(v for k, v in counts.items() if k.startswith("cms_level_"))


def test_cms_level_names(mp_group):
    cfg, model = _build("hope")
    levels = {}
    for name, p in model.named_parameters():
        lvl = cms_level_of(name)
        if lvl is not None:
            levels.setdefault(lvl, []).append(name)
    assert sorted(levels) == [0, 1, 2]
    assert "decoder.layers.1.mlp.levels.2.mlp.linear_fc2.weight" in levels[2]
    assert model.decoder.layers[0].mlp.levels[1].mlp.linear_fc1.weight.shape == (2 * 32, 32)  # SwiGLU width F_1 = 32
    assert cms_level_of("decoder.layers.0.self_attention.in_proj.weight") is None
    assert cms_level_of("decoder.layers.0.mlp.pre_mlp_layernorm.weight") is None


def _sharded_keys(model):
    """Checkpoint keys (ShardedTensor.key, which keys_map renames; the dict keys stay the module names)."""
    return sorted(v.key for v in model.sharded_state_dict().values() if not v.key.endswith("_extra_state"))


def test_local_checkpoint_keys_use_te_names(mp_group):
    _, model = _build("hybrid_independent")
    keys = _sharded_keys(model)
    assert "decoder.layers.0.self_attention.in_proj.layer_norm_weight" in keys  # input norm under its TE name
    assert "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight" in keys
    assert not any("input_layernorm" in k for k in keys)
    _, hope = _build("hope")
    assert "decoder.layers.mlp.levels.1.mlp.linear_fc1.layer_norm_weight" in _sharded_keys(hope)


@pytest.mark.te
@pytest.mark.parametrize("case", ["hope", "transformer", "hybrid_independent"])
def test_te_and_local_specs_give_the_same_checkpoint_keys(mp_group, case):
    _, local = _build(case)
    _, te = _build(case, transformer_impl="transformer_engine")
    assert _sharded_keys(local) == _sharded_keys(te)


def test_rope_only_with_attention(mp_group):
    _, hope = _build("hope")
    _, hybrid = _build("hybrid_independent")
    assert hope.position_embedding_type == "none" and hybrid.position_embedding_type == "rope"


def test_mixer_is_causal_and_returns_out_bias(mp_group):
    """hope_math §8 test 7 at module level: changing token s leaves every output before s unchanged."""
    cfg, model = _build("hope")
    mixer = model.decoder.layers[0].self_attention
    x = torch.randn(SEQ, 2, cfg.hidden_size)
    out, bias = mixer(x)
    assert out.shape == (SEQ, 2, cfg.hidden_size) and bias is None
    x2 = x.clone()
    x2[9] += 1.0
    out2, _ = mixer(x2)
    assert torch.equal(out2[:9], out[:9])
    assert (out2[9:] - out[9:]).abs().max() > 1e-4


def test_mixer_on_the_triton_kernels_equals_chunked(mp_group):
    """The megatron mixer with titans_impl='triton' (the kernels under Triton's interpreter on CPU) against the chunked
    form, fp32, at hope_math §8 row 5's tolerances: output ≤ 1e-5, every parameter gradient ≤ 1e-4."""
    import dataclasses
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from hope_megatron.ops import triton as tri

    if not tri.interpreting():
        pytest.skip("set TRITON_INTERPRET=1 to run the kernels on CPU")
    cfg, model = _build("hope")
    mixer = model.decoder.layers[0].self_attention
    x = torch.randn(SEQ, 2, cfg.hidden_size)
    results = []
    for impl in ("chunked", "triton"):
        mixer.op_cfg = dataclasses.replace(mixer.op_cfg, impl=impl)
        mixer.zero_grad()
        out, _ = mixer(x)
        (out * torch.cos(out.detach())).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in mixer.parameters()])
    for i, (got, want) in enumerate(zip(results[1], results[0])):
        assert (got - want).norm() <= (1e-5 if i == 0 else 1e-4) * want.norm(), i


def test_unknown_backend_is_one_sentence(mp_group):
    from hope_megatron.layers.specs import get_backend

    with pytest.raises(ValueError, match="transformer_impl='te' must be one of local, transformer_engine"):
        get_backend("te")


def test_every_memory_mixer_parameter_gets_gradient(mp_group):
    """Issue 16 item 2: without self-modification (T, D) nothing reads x̃, so in_proj and the conv hold no x̃ rows
    (they had gradient exactly 0): every in_proj row and conv channel of every memory layer gets a gradient."""
    cfg, model = _build("hybrid_independent")  # layers H, T, D, A
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    pos = torch.arange(SEQ).expand(2, SEQ)
    model(tokens, pos, None, labels=tokens).sum().backward()
    d, H = cfg.memory_head_dim, cfg.memory_heads
    rows = {}
    for i, letter in enumerate("HTD"):
        mixer = model.decoder.layers[i].self_attention
        rows[letter] = mixer.in_proj.weight.shape[0]
        for name, p in (("in_proj", mixer.in_proj.weight), ("conv", mixer.conv_weight)):
            dead = (p.grad.abs().sum(dim=1) == 0).sum().item()
            assert dead == 0, f"layer {letter}: {dead} of {p.shape[0]} {name} rows have gradient exactly 0"
    assert rows == {"H": 3 * H * d, "T": 4 * H * d + 2 * H, "D": 4 * H * d + H}  # T: q g k v η α; D: no α


def test_reset_at_eod_makes_packed_documents_independent(mp_group):
    """Issue 16 item 3 (hope_math §2.7): with hope_reset_at_eod a packed [doc1 EOD doc2] gives doc2 the same
    per-token losses as doc2 alone, through every memory letter (H, T, D) of a megatron GPTModel; without it doc1
    leaks into doc2 through the memory state."""
    from hope_megatron import platform
    from hope_megatron.models import build_model
    from hope_megatron.ops.documents import document_starts

    eod = VOCAB - 1
    g = torch.Generator().manual_seed(5)
    doc1 = torch.cat([torch.randint(0, eod, (2, 6), generator=g), torch.full((2, 1), eod)], dim=1)
    doc2 = torch.randint(0, eod, (2, SEQ - 7), generator=g)
    packed = torch.cat([doc1, doc2], dim=1)
    losses = {}
    for reset in (True, False):
        cfg = HopeConfig.for_variant("hope", **{**SHAPE, "num_layers": 3}, layer_pattern="HTD", cms_levels=2,
                                     hope_reset_at_eod=reset)
        platform.configure(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB, SEQ).eval()
        pos = torch.arange(SEQ).expand(2, SEQ)
        with torch.no_grad():
            both = model(packed, pos, document_starts(packed, eod) if reset else None, labels=packed)[:, 7:]
            alone = model(doc2, pos[:, :SEQ - 7], None, labels=doc2)
        losses[reset] = (both - alone).abs().max().item()
    assert losses[True] < 1e-5 and losses[False] > 1e-3, losses
