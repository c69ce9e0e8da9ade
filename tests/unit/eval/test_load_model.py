"""load_model reads directories converted before issue 16 (format 1), whose T/D layers still hold dead x̃ rows."""

from __future__ import annotations

import json

import torch

from hope_megatron.inference import load_model
from tests.unit.eval.helpers import tiny_config, tiny_model


def test_format_1_directory_with_dead_x_rows_loads_to_the_same_function(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("titans", layers=2)
    cfg = dict(tiny_config("titans", layers=2), format_version=1)
    rows = cfg["memory_heads"] * cfg["memory_head_dim"]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in range(2):  # the old layout: x̃ rows (never read) lead in_proj and the conv
        for name in ("in_proj.weight", "conv_weight"):
            key = f"decoder.layers.{i}.self_attention.{name}"
            sd[key] = torch.cat([torch.randn(rows, sd[key].shape[1]), sd[key]])
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.equal(load_model(str(tmp_path))(tokens), model(tokens))
