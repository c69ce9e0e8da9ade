"""The seed plan's configs hit their parameter targets (±10%, issue 4) and the summary tool prints them."""

import pathlib

import pytest

from hope_megatron.models.summary import count_parameters, main

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name, target, shape", [
    ("pilot", 160e6, (12, 512, 8, 2048, 8)),
    ("mid", 760e6, (24, 1024, 16, 4096, 16)),
    ("target", 1.3e9, (32, 1536, 24, 8192, 32)),
])
def test_seed_plan_configs_hit_their_sizes(name, target, shape):
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_config import build_config

    args = parse_args(["--config", str(ROOT / "configs" / "hope" / f"{name}.yaml")])
    cfg = build_config(args, configure=False)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, args.seq_length,
            cfg.titans_chunk_size) == shape
    assert cfg.hope_variant == "hope" and cfg.cms_periods == [1, 4, 32, 128] and cfg.memory_head_dim == 64
    total = count_parameters(cfg, args.vocab_size)["total"]
    assert abs(total / target - 1) <= 0.10, f"{name}: {total / 1e6:.1f}M is not within 10% of {target / 1e6:.0f}M"


def test_summary_cli_prints_counts(capsys):
    assert main(["--config", str(ROOT / "configs" / "hope" / "pilot.yaml")]) == 0
    out = capsys.readouterr().out
    assert "total               162,628,288" in out and "cms_level_3" in out and "FLOPs per token" in out


def test_titans_baseline_counts_no_dead_x_channel():
    """Issue 16 item 2: the pilot Titans baseline's memory is q, g, k̃, ṽ (D·H·d_h each) + η̃, α̃ (D·H) in in_proj,
    conv on q, k̃, ṽ, one meta-init pair, b_η and b_α, norm and out_proj per layer: no x̃ rows (3.17M fewer than before)."""
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_setup import build_config

    args = parse_args(["--config", str(ROOT / "configs" / "hope" / "ablations" / "baseline_titans.yaml")])
    cfg = build_config(args, configure=False)
    D, H, d = 512, 8, 64
    per_layer = D * (4 * H * d + 2 * H) + 4 * 3 * H * d + 2 * H * d * d + 2 * H + H * d + H * d * D  # biases b_η, b_α
    assert count_parameters(cfg, args.vocab_size)["memory"] == 12 * per_layer == 16_693_440
