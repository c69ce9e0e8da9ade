"""Command line of `python -m hope_megatron.train`: Megatron-LM's flag names, HOPE flags generated from HopeConfig.

design.md §5. Precedence: built-in defaults < `--config FILE.yaml` (keys are flag names with underscores) < flags.
`validate_args` stops impossible combinations before any work, one sentence each.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import yaml

# (flag, type, default, help); bool flags are store_true unless the default is True (then --no-X is added).
_MEGATRON_FLAGS = {
    "model": [
        ("--num-layers", int, 4, "number of layers (HOPE or transformer blocks)"),
        ("--hidden-size", int, 128, "model width D"),
        ("--ffn-hidden-size", int, None, "MLP / CMS level width F (default 4*D)"),
        ("--num-attention-heads", int, 4, "attention heads (and the default memory heads)"),
        ("--num-query-groups", int, None, "grouped-query attention groups (default: no GQA)"),
        ("--kv-channels", int, None, "attention head dim (default hidden/heads)"),
        ("--seq-length", int, 256, "sequence length in tokens"),
        ("--max-position-embeddings", int, None, "position table size (default --seq-length)"),
        ("--rotary-base", int, 10000, "RoPE base"),
        ("--normalization", str, None, "RMSNorm | LayerNorm (default: HopeConfig, RMSNorm)"),
        ("--norm-epsilon", float, 1e-5, "norm epsilon"),
        ("--swiglu", "tristate", None, "SwiGLU MLPs / CMS levels (default: HopeConfig, on)"),
        ("--disable-bias-linear", "tristate", None, "no biases in linear layers (default: HopeConfig, no biases)"),
        ("--untie-embeddings-and-output-weights", bool, False, "separate output layer weights"),
        ("--hidden-dropout", float, None, "residual dropout (default: HopeConfig, 0)"),
        ("--attention-dropout", float, None, "attention dropout (default: HopeConfig, 0)"),
        ("--init-method-std", float, 0.02, "weight init std"),
        ("--make-vocab-size-divisible-by", int, 128, "pad the vocabulary to a multiple of this x TP"),
        ("--transformer-impl", str, "local", "local (torch, CPU) | transformer_engine (GPU)"),
    ],
    "parallel": [
        ("--tensor-model-parallel-size", int, 1, "TP size"),
        ("--pipeline-model-parallel-size", int, 1, "PP size"),
        ("--num-layers-per-virtual-pipeline-stage", int, None, "layers per virtual stage (interleaved 1F1B)"),
        ("--sequence-parallel", bool, False, "Megatron sequence parallelism (needs TP > 1)"),
        ("--use-distributed-optimizer", bool, False, "shard optimizer state over DP (ZeRO-1)"),
        ("--overlap-grad-reduce", bool, False, "overlap the DP gradient reduce with the backward pass"),
        ("--use-torch-fsdp2", bool, False, "FSDP (ZeRO-3): shard parameters, gradients and optimizer state over DP "
                                           "with megatron-core's torch-FSDP2 wrapper; one FSDP unit per layer"),
        ("--ddp-bucket-size", int, None, "DDP bucket size in elements"),
    ],
    "training": [
        ("--micro-batch-size", int, 2, "sequences per micro-batch per DP rank"),
        ("--global-batch-size", int, None, "sequences per iteration (default micro x DP)"),
        ("--train-iters", int, 20, "iterations to train"),
        ("--exit-interval", int, None, "stop (after saving) when the iteration is a multiple of this"),
        ("--seed", int, 1234, "random seed"),
        ("--bf16", bool, False, "bf16 parameters and compute (fp32 main weights)"),
        ("--recompute-granularity", str, None, "full | selective activation recomputation"),
        ("--recompute-method", str, None, "uniform | block (with --recompute-granularity full)"),
        ("--recompute-num-layers", int, None, "layers per recompute unit"),
        ("--max-consecutive-skipped-iters", int, 10, "save and stop after this many NaN/inf iterations in a row"),
    ],
    "optimizer": [
        ("--optimizer", str, "adam", "adam (AdamW, decoupled weight decay)"),
        ("--lr", float, 3e-4, "peak learning rate"),
        ("--min-lr", float, 0.0, "final learning rate"),
        ("--lr-decay-style", str, "cosine", "constant | linear | cosine | inverse-square-root"),
        ("--lr-warmup-iters", int, 0, "linear warmup iterations"),
        ("--lr-warmup-init", float, 0.0, "learning rate at iteration 0 of the warmup"),
        ("--lr-decay-iters", int, None, "decay horizon (default --train-iters)"),
        ("--weight-decay", float, 0.1, "decoupled weight decay"),
        ("--adam-beta1", float, 0.9, "AdamW beta1"),
        ("--adam-beta2", float, 0.95, "AdamW beta2"),
        ("--adam-eps", float, 1e-8, "AdamW epsilon"),
        ("--clip-grad", float, 1.0, "global gradient-norm clip (0 disables)"),
    ],
    "fp8": [
        ("--fp8-format", str, None, "e4m3 | hybrid (Transformer Engine only)"),
        ("--fp8-recipe", str, "delayed", "delayed | tensorwise | mxfp8 | blockwise"),
        ("--fp8-margin", int, 0, "FP8 scaling margin"),
        ("--fp8-amax-history-len", int, 1024, "FP8 amax history"),
        ("--fp8-amax-compute-algo", str, "max", "max | most_recent"),
    ],
    "data": [
        ("--data-path", "list_str", None, "Megatron blend: PREFIX, or W1 PREFIX1 W2 PREFIX2 ..."),
        ("--split", str, "969,30,1", "train,valid,test weights"),
        ("--mock-data", bool, False, "synthetic tokens (MockGPTDataset), no files"),
        ("--tokenizer-type", str, "NullTokenizer", "SentencePieceTokenizer | GPT2BPETokenizer | NullTokenizer"),
        ("--tokenizer-model", str, None, "SentencePiece model file"),
        ("--vocab-file", str, None, "GPT-2 encoder.json"),
        ("--merge-file", str, None, "GPT-2 vocab.bpe"),
        ("--vocab-size", int, None, "vocabulary size for NullTokenizer (ids 0..N-1, EOD = N)"),
        ("--data-cache-path", str, None, "where GPTDataset caches its index files"),
        ("--eod-mask-loss", bool, False, "do not train on end-of-document tokens"),
        ("--num-workers", int, 0, "DataLoader workers"),
    ],
    "checkpointing": [
        ("--save", str, None, "checkpoint directory to write"),
        ("--load", str, None, "checkpoint directory to resume from"),
        ("--save-interval", int, None, "save every N iterations"),
        ("--ckpt-format", str, "torch_dist", "torch_dist (megatron dist_checkpointing)"),
        ("--no-save-optim", bool, False, "do not save the optimizer state"),
        ("--no-load-optim", bool, False, "do not load the optimizer state (fresh optimizer)"),
        ("--no-load-rng", bool, False, "do not restore RNG states"),
        ("--finetune", bool, False, "load weights only and start at iteration 0"),
        ("--ckpt-step", int, None, "load this iteration instead of the tracker's (e.g. the one before a damaged one)"),
        ("--override-opt-param-scheduler", bool, False, "on --load, take the learning-rate schedule (--lr, --min-lr, "
         "warmup, decay) from the command line instead of the checkpoint"),
        ("--exit-on-missing-checkpoint", bool, False, "fail if --load has no checkpoint"),
        ("--exit-signal-handler", bool, True, "save and exit on SIGTERM/SIGINT"),
    ],
    "logging": [
        ("--log-interval", int, 1, "iterations per log line"),
        ("--tensorboard-dir", str, None, "TensorBoard event directory"),
        ("--eval-interval", int, None, "validate every N iterations"),
        ("--eval-iters", int, 2, "validation iterations per evaluation"),
        ("--peak-flops", float, None, "per-device peak FLOP/s for MFU (default: the BF16 dense peak of a known GPU, "
                                      "e.g. 989e12 for H100/H200; no MFU on CPU or an unknown device)"),
        ("--log-memory-state-norms", bool, True, "TensorBoard per-layer memory-state norms when the model exposes them"),
        ("--wandb-project", str, None, "W&B project: every TensorBoard scalar is logged to W&B too (pip install -e "
                                       "'.[wandb]'; offline, synced later, when there is no API key or no network)"),
        ("--wandb-exp-name", str, None, "W&B run name (default: W&B's generated name)"),
        ("--wandb-save-dir", str, None, "directory W&B writes its run into (default: --save/wandb, else ./wandb)"),
    ],
}

CHOICES = {
    "transformer_impl": ("local", "transformer_engine"),
    "normalization": (None, "RMSNorm", "LayerNorm"),
    "lr_decay_style": ("constant", "linear", "cosine", "inverse-square-root"),
    "recompute_granularity": (None, "full", "selective"),
    "recompute_method": (None, "uniform", "block"),
    "fp8_format": (None, "e4m3", "hybrid"),
    "fp8_recipe": ("delayed", "tensorwise", "mxfp8", "blockwise"),
    "optimizer": ("adam",),
    "ckpt_format": ("torch_dist",),
    "tokenizer_type": ("SentencePieceTokenizer", "GPT2BPETokenizer", "NullTokenizer"),
}

def hope_config_class():
    from hope_megatron.config import HopeConfig

    return HopeConfig


def hope_choices(name: str):
    """The allowed values of a HOPE string field (metadata["choices"]), or None."""
    from hope_megatron.config import hope_fields as model_hope_fields

    return next((f.metadata.get("choices") for f in model_hope_fields() if f.name == name), None)


def hope_fields():
    """[(name, type_string, default, help)] of HopeConfig's HOPE fields (hope_megatron.config.hope_fields)."""
    from hope_megatron.config import HopeConfig, hope_fields as model_hope_fields

    hints = typing.get_type_hints(HopeConfig)
    out = []
    for f in model_hope_fields():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((f.name, str(hints.get(f.name, f.type)), default, f.metadata.get("help", f"HopeConfig.{f.name}")))
    return out


def _add_hope_flag(group, name: str, type_str: str, default, help_: str) -> None:
    """Default None: only values set in the YAML or on the command line override the variant's preset."""
    flag = "--" + name.replace("_", "-")
    t = type_str.replace("typing.", "").lower()
    help_ = f"{help_} [HopeConfig default: {default}]".replace("%", "%%")
    if "list" in t or "tuple" in t:
        elem = float if "float" in t else (str if "str" in t else int)
        group.add_argument(flag, type=elem, nargs="+", default=None, help=help_ + " (space-separated)")
    elif "bool" in t:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif "int" in t and "float" not in t:
        group.add_argument(flag, type=int, default=None, help=help_)
    elif "float" in t:
        group.add_argument(flag, type=float, default=None, help=help_)
    else:
        choices = hope_choices(name)
        group.add_argument(flag, type=str, default=None, help=help_, **({"choices": list(choices)} if choices else {}))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope-train", description="Train HOPE (or a baseline) on megatron-core.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=str, default=None, help="YAML file of defaults (keys: flag names with underscores)")
    for title, flags in _MEGATRON_FLAGS.items():
        g = p.add_argument_group(title)
        for flag, typ, default, help_ in flags:
            dest = flag[2:].replace("-", "_")
            kw = {"help": help_, "default": default}
            if dest in CHOICES:
                kw["choices"] = [c for c in CHOICES[dest] if c is not None]
            if typ is bool:
                kw.pop("choices", None)
                g.add_argument(flag, action=argparse.BooleanOptionalAction if default else "store_true", **kw)
            elif typ == "tristate":
                g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif typ == "list_str":
                g.add_argument(flag, nargs="+", type=str, **kw)
            else:
                g.add_argument(flag, type=typ, **kw)
    g = p.add_argument_group("hope (generated from HopeConfig)")
    for name, type_str, default, help_ in hope_fields():
        _add_hope_flag(g, name, type_str, default, help_)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Defaults < YAML (`--config`) < flags. Unknown YAML keys are an error naming the key."""
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config:
        with open(first.config, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"error: {first.config} must be a YAML mapping of flag names to values.")
        known = {a.dest for a in parser._actions}
        for key in values:
            if key.replace("-", "_") not in known:
                raise SystemExit(f"error: {first.config}: key '{key}' is not a flag of hope-train (see --help).")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    args = parser.parse_args(argv)
    _fill_derived(args)
    return args


def _fill_derived(args) -> None:
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args.world_size = world
    mp = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    args.data_parallel_size = max(world // mp, 1)
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * args.data_parallel_size
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.num_layers_per_virtual_pipeline_stage:
        per_stage = args.num_layers // max(args.pipeline_model_parallel_size, 1)
        args.virtual_pipeline_model_parallel_size = per_stage // args.num_layers_per_virtual_pipeline_stage
    else:
        args.virtual_pipeline_model_parallel_size = None
    if args.hope_variant is None:
        args.hope_variant = "hope"
    if args.vocab_size is None and args.tokenizer_type == "NullTokenizer":
        args.vocab_size = 8192 if args.mock_data else None


def _te_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def _wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def validate_args(args) -> None:
    """Raise ValueError with one sentence for the first impossible combination found."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    errors = []
    if args.world_size % (tp * pp) != 0:
        errors.append(f"world size {args.world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                      f"--pipeline-model-parallel-size {pp}; launch a multiple of {tp * pp} processes.")
    dp = args.data_parallel_size
    if args.global_batch_size % (args.micro_batch_size * dp) != 0:
        errors.append(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
                      f"{args.micro_batch_size} x data-parallel size {dp}.")
    if args.use_torch_fsdp2:
        fsdp_conflict = next((f for f, on in (("--use-distributed-optimizer", args.use_distributed_optimizer),
                                               ("--overlap-grad-reduce", args.overlap_grad_reduce),
                                               ("--pipeline-model-parallel-size > 1", pp > 1)) if on), None)
        if fsdp_conflict:
            errors.append(f"--use-torch-fsdp2 cannot be combined with {fsdp_conflict}: FSDP already shards the "
                          f"optimizer state and overlaps its own gradient reduce-scatters, and it runs without "
                          f"pipeline stages; drop one of the two.")
    if args.sequence_parallel and tp == 1:
        errors.append("--sequence-parallel needs --tensor-model-parallel-size > 1.")
    elif args.sequence_parallel and args.seq_length % tp != 0:
        errors.append(f"--sequence-parallel splits the sequence over TP: --seq-length {args.seq_length} is not "
                      f"divisible by --tensor-model-parallel-size {tp}.")
    if args.fp8_format and args.transformer_impl != "transformer_engine":
        errors.append("--fp8-format needs --transformer-impl transformer_engine.")
    if (args.fp8_format or args.transformer_impl == "transformer_engine") and not _te_available():
        errors.append("--transformer-impl transformer_engine / --fp8-format need Transformer Engine, which is not "
                      "installed; use --transformer-impl local (CPU) or pip install -e '.[gpu]' on a CUDA machine.")
    if args.num_layers % pp != 0:
        errors.append(f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size {pp}.")
    if args.num_layers_per_virtual_pipeline_stage:
        per_stage = args.num_layers // pp
        if pp < 2 or per_stage % args.num_layers_per_virtual_pipeline_stage != 0 or \
                per_stage // args.num_layers_per_virtual_pipeline_stage < 2:
            errors.append(f"--num-layers-per-virtual-pipeline-stage {args.num_layers_per_virtual_pipeline_stage} "
                          f"must divide the {per_stage} layers per pipeline stage into at least 2 chunks with PP >= 2.")
        elif (args.global_batch_size // (args.micro_batch_size * dp)) % pp != 0:
            errors.append("interleaved pipelining needs the number of micro-batches per iteration to be a multiple "
                          f"of --pipeline-model-parallel-size {pp}.")
    if args.hidden_size % args.num_attention_heads != 0 and args.kv_channels is None:
        errors.append(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
                      f"{args.num_attention_heads}; set --kv-channels.")
    if args.num_attention_heads % tp != 0:
        errors.append(f"--num-attention-heads {args.num_attention_heads} is not divisible by TP size {tp}.")
    mh = getattr(args, "memory_heads", None)
    if mh and mh % tp != 0:
        errors.append(f"--memory-heads {mh} is not divisible by TP size {tp}.")
    if (args.wandb_exp_name or args.wandb_save_dir) and not args.wandb_project:
        errors.append("--wandb-exp-name / --wandb-save-dir need --wandb-project NAME (the W&B project to log to).")
    if args.wandb_project and not _wandb_available():
        errors.append(f"--wandb-project {args.wandb_project} needs the wandb package; pip install -e '.[wandb]' (or "
                      f"drop --wandb-project).")
    if args.peak_flops is not None and not args.peak_flops > 0:
        errors.append(f"--peak-flops {args.peak_flops} must be a positive FLOP/s figure (e.g. 989e12).")
    if not args.mock_data and not args.data_path:
        errors.append("no data: pass --data-path PREFIX (see tools/preprocess_data.py) or --mock-data.")
    if args.tokenizer_type == "NullTokenizer" and not args.vocab_size:
        errors.append("--tokenizer-type NullTokenizer needs --vocab-size N.")
    if args.train_iters <= 0:
        errors.append(f"--train-iters must be positive, got {args.train_iters}.")
    if args.save_interval is not None and args.save_interval > 0 and not args.save:
        errors.append("--save-interval needs --save DIR.")
    if args.recompute_method and args.recompute_granularity != "full":
        errors.append("--recompute-method needs --recompute-granularity full.")
    _validate_model(args, errors)
    for key, allowed in CHOICES.items():
        if getattr(args, key, None) not in allowed:
            errors.append(f"--{key.replace('_', '-')} {getattr(args, key)!r} is not one of "
                          f"{', '.join(str(a) for a in allowed if a is not None)}.")
    if errors:
        raise ValueError(errors[0])


def _validate_model(args, errors) -> None:
    """Build the HopeConfig once (cheap, no process group) so its own one-sentence checks run before any work."""
    if errors:
        return
    try:
        from hope_megatron.training.model_config import build_config

        build_config(args, configure=False)
    except ValueError as e:
        errors.append(str(e))


def cms_schedule(config):
    """[(period, warmup)] per CMS level (hope_math §4.3), or [] when the model's MLP stack is not a CMS."""
    if not getattr(config, "uses_cms", False):
        return []
    return [(int(p), int(w)) for p, w in zip(config.cms_periods, config.cms_warmup)]


def resolved_config(args) -> dict:
    """The run's configuration as plain YAML-able values (printed once, saved with every checkpoint)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        else:
            out[k] = str(v)
    return out


def format_config(args) -> str:
    return yaml.safe_dump(resolved_config(args), sort_keys=True, default_flow_style=None).rstrip()
