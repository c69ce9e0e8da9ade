"""hope-train's command line: Megatron-LM names, HopeConfig-generated HOPE flags, YAML < flags, one-sentence errors."""

import pytest

from hope_megatron.training.arguments import build_parser, parse_args, validate_args

MOCK = ["--mock-data", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2"]


def test_hope_flags_come_from_hopeconfig():
    from hope_megatron.config import hope_fields

    dests = {a.dest for a in build_parser()._actions}
    names = [f.name for f in hope_fields()]
    assert len(names) >= 20 and set(names) <= dests
    args = parse_args(MOCK + ["--cms-levels", "3", "--cms-periods", "1", "4", "16", "--cms-warmup", "0", "5", "9",
                              "--no-self-mod", "--memory-heads", "4", "--titans-chunk-size", "16",
                              "--titans-recompute-chunks"])
    assert args.cms_periods == [1, 4, 16] and args.cms_warmup == [0, 5, 9] and args.titans_recompute_chunks is True
    assert args.self_mod is False and args.memory_heads == 4 and args.titans_chunk_size == 16


def test_yaml_defaults_and_flag_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hidden_size: 96\nlr: 0.01\ncms_periods: [1, 8]\ncms_levels: 2\n")
    args = parse_args(["--config", str(cfg), "--lr", "0.5", "--mock-data"])
    assert (args.hidden_size, args.lr, args.cms_periods) == (96, 0.5, [1, 8])
    assert args.adam_beta1 == 0.9 and args.adam_beta2 == 0.95 and args.global_batch_size == args.micro_batch_size
    bad = tmp_path / "bad.yaml"
    bad.write_text("hiden_size: 96\n")
    with pytest.raises(SystemExit, match="hiden_size"):
        parse_args(["--config", str(bad)])


def test_tiny_yaml_parses_and_validates():
    args = parse_args(["--config", "configs/hope/tiny.yaml", "--mock-data"])
    validate_args(args)
    assert args.hope_variant == "hope" and args.cms_levels == 2 and args.vocab_size == 8192


@pytest.mark.parametrize("argv,env,fragment", [
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], "6", "not divisible by --tensor"),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], "1", "--global-batch-size 6"),
    (["--sequence-parallel"], "1", "--sequence-parallel needs"),
    (["--fp8-format", "e4m3"], "1", "--fp8-format needs --transformer-impl transformer_engine"),
    (["--transformer-impl", "transformer_engine"], "1", "Transformer Engine"),
    (["--cms-levels", "2", "--cms-periods", "1"], "1", "cms_periods has 1 entries"),
    (["--save-interval", "5"], "1", "--save-interval needs --save"),
    (["--sequence-parallel", "--tensor-model-parallel-size", "2", "--seq-length", "17"], "2",
     "--seq-length 17 is not divisible by --tensor-model-parallel-size 2"),
    (["--use-torch-fsdp2", "--use-distributed-optimizer"], "2",
     "--use-torch-fsdp2 cannot be combined with --use-distributed-optimizer"),
    (["--use-torch-fsdp2", "--pipeline-model-parallel-size", "2"], "2",
     "--use-torch-fsdp2 cannot be combined with --pipeline-model-parallel-size > 1"),
])
def test_impossible_combinations_stop_with_one_sentence(monkeypatch, argv, env, fragment):
    monkeypatch.setenv("WORLD_SIZE", env)
    args = parse_args(MOCK + argv)
    with pytest.raises(ValueError) as e:
        validate_args(args)
    msg = str(e.value)
    assert fragment in msg and msg.count(". ") == 0 and msg.endswith("."), msg


def test_no_data_is_an_error():
    args = parse_args(["--num-layers", "2"])
    with pytest.raises(ValueError, match="--data-path"):
        validate_args(args)


def test_arguments_and_model_setup_do_not_import_each_other():
    """The CLI's validation and the model set-up share training/model_config.py; neither imports the other."""
    import ast
    import os

    import hope_megatron.training as training

    root = os.path.dirname(training.__file__)

    def imported(name):
        tree = ast.parse(open(os.path.join(root, name + ".py"), encoding="utf-8").read())
        mods = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods.add(node.module)
            elif isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
        return mods

    assert "hope_megatron.training.model_setup" not in imported("arguments")
    assert "hope_megatron.training.arguments" not in imported("model_setup")
    assert "hope_megatron.training.model_config" in imported("arguments") & imported("model_setup")
