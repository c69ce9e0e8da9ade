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
    in_proj = 2 * 64 * (64 * 4 + 4 * 2)          # x̃, q, k̃, ṽ channels + η, α logits
    out_and_gate = 2 * 64 * 64 * 2
    memories = 2 * 5 * (8 + 7) * 16 * 16 * 4     # hope_math §3.7: (8 advance w/ momentum + 7) r d_h² MACs per head
    assert fam["memory"] == 3 * (in_proj + out_and_gate + memories)
    assert fam["cms"] == 3 * 2 * (2 * 3 * 64 * 128)
    assert fam["logits"] == 2 * 64 * 100 and fam["attention"] == 0 and fam["mlp"] == 0
    total = flops_per_iteration(shape, 2)["total"]
    assert total == 3 * 2 * 32 * sum(fam.values())
