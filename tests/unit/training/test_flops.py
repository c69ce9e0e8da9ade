"""FLOP counts: the transformer matches Megatron's GPT formula; HOPE families match a hand count."""

from hope_megatron.training.flops import FlopsShape, flops_per_iteration, forward_flops_per_token, megatron_gpt_flops


def test_transformer_equals_megatron_formula():
    for L, h, s, V, B in [(4, 128, 256, 8192, 8), (24, 2048, 4096, 50304, 512), (2, 64, 16, 64, 4)]:
        shape = FlopsShape(num_layers=L, hidden_size=h, seq_length=s, vocab_size=V, ffn_hidden_size=4 * h,
                           num_attention_heads=h // 64 or 1)
        got = flops_per_iteration(shape, B)["total"]
        want = megatron_gpt_flops(B, s, L, h, V)
        assert abs(got - want) / want < 1e-12, (got, want)


def test_hope_hand_count():
    # D=64, H=4, d_h=16, r=1, 5 memories with momentum, 2 CMS levels of width 128 (SwiGLU), V=100, 3 layers
    shape = FlopsShape(num_layers=3, hidden_size=64, seq_length=32, vocab_size=100, ffn_hidden_size=128,
                       num_attention_heads=4, swiglu=True, variant="hope", memory_heads=4, memory_head_dim=16,
                       cms_hidden_sizes=[128, 128])
    fam = forward_flops_per_token(shape)
    in_proj = 2 * 64 * (64 * 3)                  # x̃, q, g (self-modifying: no static k̃, ṽ, η̃, α̃ channels)
    out_proj = 2 * 64 * 64
    memories = 2 * 5 * (8 + 7) * 16 * 16 * 4     # hope_math §3.7: (8 advance w/ momentum + 7) r d_h² MACs per head
    assert fam["memory"] == 3 * (in_proj + out_proj + memories)
    assert fam["cms"] == 3 * 2 * (2 * 3 * 64 * 128)
    assert fam["logits"] == 2 * 64 * 100 and fam["attention"] == 0 and fam["mlp"] == 0
    total = flops_per_iteration(shape, 2)["total"]
    assert total == 3 * 2 * 32 * sum(fam.values())


def test_from_config_counts_each_layer_of_a_hybrid_with_its_own_mixer():
    """"AH" alternates attention and HOPE layers; titans has static channels and one memory; deltanet a linear one."""
    import types

    from hope_megatron.config import HopeConfig
    from hope_megatron.training.flops import from_args

    args = types.SimpleNamespace(seq_length=32)
    hyb = HopeConfig.for_variant("hope", num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                                 layer_pattern="AH")
    fam = forward_flops_per_token(from_args(args, hyb, 100))
    pure = forward_flops_per_token(from_args(args, HopeConfig.for_variant(
        "hope", num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128), 100))
    attn = forward_flops_per_token(from_args(args, HopeConfig.for_variant(
        "transformer", num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128), 100))
    assert fam["memory"] == pure["memory"] / 2 and fam["attention"] == attn["attention"] / 2 > 0
    titans = from_args(args, HopeConfig.for_variant("titans", num_layers=2, hidden_size=64, num_attention_heads=4,
                                                    ffn_hidden_size=128), 100)
    assert titans.cms_hidden_sizes is None  # one plain MLP, not a CMS stack
    m = titans.mixers[0]
    assert (m.num_memories, m.static_vector_channels, m.static_scalar_channels) == (1, 2, 2)
    # no x̃ channel without self-modification (issue 16 item 2): in_proj is q, g, k̃, ṽ (H·d_h each) + η̃, α̃ (H)
    in_proj, out_proj = 2 * 64 * (4 * 64 + 2 * 4), 2 * 64 * 64
    memory = 2 * 1 * (8 + 7) * 16 * 16 * 4  # one memory with momentum (hope_math §3.7)
    assert not m.x_channel and forward_flops_per_token(titans)["memory"] == 2 * (in_proj + out_proj + memory)
