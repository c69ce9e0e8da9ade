"""`python -m hope_megatron.models.summary --config FILE`: parameter counts and FLOPs per token of a config.

Counts are analytic (no model is built, so the 1.3B target prints in a second); `tests/unit/model/test_summary.py`
holds them equal to the numel of built models for every variant. Families: embedding (input table), output layer,
attention (A/W mixers), memory (H/T/D Titans mixers, hope_math §2.9), mlp (single-MLP stacks), cms (the CMS levels,
per level), norms (pre-norms and the final norm). FLOPs per token come from hope_megatron.training.flops (forward +
backward = 3 x forward).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from typing import Dict

from hope_megatron.config import ATTENTION_LETTERS, MEMORY_LETTERS
from hope_megatron.ops import init_meta_params


def _linear(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def _mlp(config, width: int) -> int:
    glu = 2 if config.gated_linear_unit else 1
    bias = config.add_bias_linear
    return _linear(config.hidden_size, glu * width, bias) + _linear(width, config.hidden_size, bias)


def memory_mixer_params(config, letter: str) -> int:
    """Titans mixer parameters (hope_math §2.9): in_proj, conv, meta-inits + readouts, per-head norm, out_proj."""
    op = config.to_op_config(letter)
    H, d, D = config.memory_heads, config.memory_head_dim, config.hidden_size
    from hope_megatron.layers.titans_mixer import CONV_WIDTH, in_proj_components

    comps = in_proj_components(config, op)
    in_proj = D * H * sum(w for _, w, _ in comps)
    conv = CONV_WIDTH * H * sum(w for _, w, c in comps if c)
    meta = H * sum(t.numel() for t in init_meta_params(1, d, op).values())
    return in_proj + conv + meta + H * d + _linear(H * d, D, config.add_bias_linear)


def attention_params(config) -> int:
    d = config.kv_channels
    q, kv = config.num_attention_heads * d, config.num_query_groups * d
    bias = config.add_bias_linear
    return _linear(config.hidden_size, q + 2 * kv, bias) + _linear(q, config.hidden_size, bias)


def count_parameters(config, vocab_size: int, tied: bool = False) -> "OrderedDict[str, int]":
    """Parameters by family for the whole model (all pipeline stages, TP=1 view)."""
    D = config.hidden_size
    fam: Dict[str, int] = OrderedDict(embedding=vocab_size * D, output_layer=0 if tied else vocab_size * D,
                                      attention=0, memory=0, mlp=0, norms=D)
    if config.uses_cms:
        for i in range(config.cms_levels):
            fam[f"cms_level_{i}"] = 0
    for letter in config.layer_letters():
        fam["norms"] += D  # input (mixer) pre-norm
        if letter in MEMORY_LETTERS:
            fam["memory"] += memory_mixer_params(config, letter)
        elif letter in ATTENTION_LETTERS:
            fam["attention"] += attention_params(config)
        if config.uses_cms:
            if config.cms_variant == "independent":
                fam["norms"] += D
            for i, width in enumerate(config.cms_widths()):
                fam[f"cms_level_{i}"] += _mlp(config, width) + (D if config.cms_variant == "sequential" else 0)
        else:
            fam["norms"] += D
            fam["mlp"] += _mlp(config, config.ffn_hidden_size)
    fam["total"] = sum(fam.values())
    fam["non_embedding"] = fam["total"] - fam["embedding"] - fam["output_layer"]
    return fam


def flops_per_token(args, config, vocab_size: int) -> Dict[str, float]:
    """Training (forward + backward) FLOPs per token by family, from hope_megatron.training.flops."""
    from hope_megatron.training import flops

    fwd = flops.forward_flops_per_token(flops.from_args(args, config, vocab_size))
    out = {k: 3.0 * v for k, v in fwd.items()}
    out["total"] = sum(out.values())
    return out


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:.0f}"


def summarize(config_file: str) -> str:
    from hope_megatron.training.arguments import parse_args
    from hope_megatron.training.model_config import build_config

    args = parse_args(["--config", config_file])
    config = build_config(args, configure=False)
    vocab = args.vocab_size
    if vocab is None:
        raise SystemExit(f"error: {config_file} sets no vocab_size; add it (e.g. vocab_size: 32000).")
    tied = not getattr(args, "untie_embeddings_and_output_weights", True)
    counts = count_parameters(config, vocab, tied=tied)
    lines = [f"{config_file}: variant {config.hope_variant}, {config.num_layers} layers "
             f"({''.join(config.layer_letters())}), hidden {config.hidden_size}, heads {config.num_attention_heads}, "
             f"memory heads {config.memory_heads}x{config.memory_head_dim}, seq {args.seq_length}, vocab {vocab}, "
             f"{'tied' if tied else 'untied'} embeddings",
             "parameters:"]
    lines += [f"  {k:16s} {v:>14,d}  ({_fmt(v)})" for k, v in counts.items() if v or k == "total"]
    fl = flops_per_token(args, config, vocab)
    lines.append(f"training FLOPs per token (fwd+bwd): {_fmt(fl['total'])}FLOP  ("
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in fl.items() if k != "total" and v) + ")")
    lines.append(f"6 x parameters (dense estimate):    {_fmt(6 * counts['total'])}FLOP")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hope_megatron.models.summary", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a YAML config (configs/hope/*.yaml)")
    a = p.parse_args(argv)
    print(summarize(a.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
