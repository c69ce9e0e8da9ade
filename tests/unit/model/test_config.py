"""HopeConfig: presets per variant (hope_math §5.2), derived fields, and one clear error per invalid setting."""

import pytest
import torch

from hope_megatron.config import VARIANT_DEFAULTS, VARIANTS, HopeConfig, hope_fields

SHAPE = dict(num_layers=4, hidden_size=64, num_attention_heads=4)


def test_defaults_are_hope_math_section_1():
    c = HopeConfig(**SHAPE)
    assert (c.memory_heads, c.memory_head_dim) == (4, 16)
    assert c.cms_periods == [1, 4, 32, 128] and c.cms_warmup == [0, 0, 0, 0]
    assert (c.normalization, c.gated_linear_unit, c.add_bias_linear) == ("RMSNorm", True, False)
    op = c.to_op_config()
    assert (op.chunk_size, op.momentum, op.eta_max, op.eta_init, op.alpha_init) == (8, 0.9, 0.1, 0.01, 0.999)
    assert op.memory_names() == ("k", "v", "eta", "alpha", "mem") and op.inner_clip == 0.3  # §10 #17: finite
    assert not op.recompute_chunks and HopeConfig(titans_recompute_chunks=True, **SHAPE).to_op_config().recompute_chunks


def test_variant_presets():
    assert set(VARIANT_DEFAULTS) == set(VARIANTS)
    t = HopeConfig.for_variant("titans", **SHAPE)
    assert t.to_op_config().memory_names() == ("mem",) and not t.to_op_config().dgd and t.cms_levels == 1
    d = HopeConfig.for_variant("deltanet", **SHAPE).to_op_config()
    assert (d.memory_depth, d.chunk_size, d.momentum, d.decay, d.eta_max, d.read_after_update) == (1, 1, 0.0, False, 0.5, True)
    assert HopeConfig.for_variant("hope", cms_levels=3, **SHAPE).cms_periods == [1, 4, 32]
    assert HopeConfig.for_variant("transformer", **SHAPE).layer_letters() == ["A"] * 4
    assert not HopeConfig.for_variant("swa", **SHAPE).uses_cms and HopeConfig(**SHAPE).uses_cms


def test_pattern_tiles_and_sets_windows():
    c = HopeConfig.for_variant("hope", layer_pattern="AW", swa_window=7, **SHAPE)
    assert c.layer_letters() == list("AWAW") and c.window_size == (7, 0) and c.window_attn_skip_freq == [0, 1, 0, 1]
    assert c.hetereogenous_dist_checkpoint and c.has_attention()
    h = HopeConfig.for_variant("hope", layer_pattern="HD", **SHAPE)
    assert h.to_op_config("D").chunk_size == 1 and h.to_op_config("H").chunk_size == 8


def test_every_hope_field_has_help():
    names = [f.name for f in hope_fields()]
    for want in ("hope_variant", "layer_pattern", "memory_heads", "titans_chunk_size", "cms_periods", "swa_window"):
        assert want in names
    assert all(f.metadata["help"].endswith(".") for f in hope_fields())


@pytest.mark.parametrize("kw, message", [
    (dict(tensor_model_parallel_size=4, memory_heads=2, num_attention_heads=4), "memory_heads=2 is not divisible by tensor_model_parallel_size=4"),
    (dict(titans_chunk_size=0), "titans_chunk_size=0 must be a positive int"),
    (dict(titans_proj_chunk_size=-2), "titans_proj_chunk_size=-2 must be a positive int or None"),
    (dict(cms_periods=[1, 4]), "cms_periods has 2 entries but cms_levels=4"),
    (dict(cms_warmup=[0]), "cms_warmup has 1 entries but cms_levels=4"),
    (dict(cms_levels=2, cms_hidden_sizes=[8, 8, 8]), "cms_hidden_sizes has 3 entries but cms_levels=2"),
    (dict(cms_levels=5), "cms_levels=5 exceeds the 4 seed periods"),
    (dict(cms_variant="parallel"), "cms_variant='parallel' must be 'sequential' or 'independent'"),
    (dict(hope_variant="mamba"), "hope_variant='mamba' is not a known variant"),
    (dict(layer_pattern="HX"), "layer_pattern='HX' has letters 'X'"),
    (dict(layer_pattern="HHA"), "does not tile num_layers=4"),
    (dict(memory_heads=3), "hidden_size=64 is not divisible by memory_heads=3"),
    (dict(inner_momentum=1.0), "momentum=1.0 must be in [0, 1)"),
    (dict(read_after_update=True), "read_after_update=True needs chunk_size=1"),
    (dict(layer_pattern="W", swa_window=0), "swa_window=0 must be a positive int"),
])
def test_invalid_configs_raise_one_clear_sentence(kw, message):
    with pytest.raises(ValueError) as e:
        HopeConfig(**{**SHAPE, **kw})
    assert message in str(e.value)


def test_for_variant_rejects_unknown_variant():
    with pytest.raises(ValueError, match="hope_variant='gpt' is not a known variant"):
        HopeConfig.for_variant("gpt", **SHAPE)


def test_pipeline_dtype_follows_params_dtype():
    assert HopeConfig(params_dtype=torch.bfloat16, bf16=True, **SHAPE).pipeline_dtype == torch.bfloat16


def test_default_inner_clip_keeps_self_generated_targets_finite():
    """hope_math §10 #17 (issue 16 item 5): with the spec's defaults and no clip the self-generated targets diverge
    (max |y| ~1e10 within 40 tokens at d_h = 8, then nan); the default config's clip keeps the read bounded."""
    import torch.nn.functional as F

    from hope_megatron.ops import init_meta_params, titans_memory

    op = HopeConfig(num_layers=1, hidden_size=16, num_attention_heads=2).to_op_config()  # d_h = 8
    torch.manual_seed(0)
    p = init_meta_params(2, 8, op)
    x = F.silu(torch.randn(2, 2, 64, 8))
    q = F.normalize(F.silu(torch.randn(2, 2, 64, 8)), dim=-1)
    stats = {}
    y = titans_memory(x, q, p, op, impl="chunked", stats=stats)
    assert torch.isfinite(y).all() and y.abs().max() < 10.0
    assert stats["clip_writes"] == 2 * 2 * 5 * 7  # (batch, head, memory, closed chunk): every write is clipped-checked
