"""Does a checkpoint fit the run that loads it? One sentence when it does not, before dist_checkpointing reads a byte.

- Vocabulary: megatron loads embedding and output rows with `allow_shape_mismatch` (the padded size legitimately
  changes with TP), so a different tokenizer loads silently. The tokenizer's real size is saved with every checkpoint
  (`args["real_vocab_size"]`; NullTokenizer's `vocab_size` + 1 for older ones) and compared with this run's.
- Shapes and names: every tensor the model will load must exist in the checkpoint with the same global shape; when
  one does not, the model flags that differ from the saved arguments are named (`--hidden-size 64 here, 32 in the
  checkpoint`) instead of megatron's shape-mismatch traceback or a KeyError listing every key.
- Learning-rate schedule: megatron's scheduler keeps the checkpoint's values unless `--override-opt-param-scheduler`;
  `schedule_note` says which schedule applies whenever the command line differs from the checkpoint.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from hope_megatron.training.checkpoint_health import CheckpointError

# flags that shape the model (beside every HopeConfig field); the others (dropout, init std, ...) may change on resume
_MODEL_FLAGS = ("hope_variant", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_query_groups", "kv_channels", "swiglu", "disable_bias_linear",
                "untie_embeddings_and_output_weights", "normalization")
_EMBEDDING = "embedding.word_embeddings.weight"


def saved_vocab_size(saved_args: dict) -> Optional[int]:
    """The tokenizer size the checkpoint was trained with, when the saved arguments tell it."""
    if saved_args.get("real_vocab_size"):
        return int(saved_args["real_vocab_size"])
    if saved_args.get("tokenizer_type") == "NullTokenizer" and saved_args.get("vocab_size"):
        return int(saved_args["vocab_size"]) + 1  # NullTokenizer: ids 0..N-1 and EOD = N
    return None


def describe_tokenizer(args_like) -> str:
    get = args_like.get if isinstance(args_like, dict) else lambda k, d=None: getattr(args_like, k, d)
    kind = get("tokenizer_type")
    if kind == "NullTokenizer":
        return f"--tokenizer-type NullTokenizer --vocab-size {get('vocab_size')}"
    if kind == "GPT2BPETokenizer":
        return f"--vocab-file {get('vocab_file')}"
    return f"--tokenizer-model {get('tokenizer_model')}"


def check_vocab(path: str, saved_args: dict, tensors: dict, args, vocab_now: int) -> None:
    """Refuse a tokenizer of another size than the checkpoint's (rows beyond it would be untrained or dropped)."""
    saved = saved_vocab_size(saved_args)
    rows = tuple(tensors[_EMBEDDING].global_shape)[0] if _EMBEDDING in tensors else None
    if saved is None:  # an older checkpoint: only a tokenizer larger than its embedding rows is certainly wrong
        if rows is None or vocab_now <= rows:
            return
        saved = rows
    if saved != vocab_now:
        raise CheckpointError(
            f"{path} was trained with a vocabulary of {saved} ({describe_tokenizer(saved_args)}) but this run's "
            f"tokenizer has {vocab_now} ({describe_tokenizer(args)}); pass the checkpoint's tokenizer flags, or drop "
            f"--load to train a new model.")


def model_flag_differences(saved_args: dict, args) -> List[Tuple[str, object, object]]:
    """[(flag, this run's value, the checkpoint's)] for the flags that shape the model."""
    from hope_megatron.training.arguments import hope_fields

    names = list(_MODEL_FLAGS) + [n for n, _, _, _ in hope_fields() if n not in _MODEL_FLAGS]
    out = []
    for name in names:
        if name not in saved_args:
            continue
        ours, theirs = _plain(getattr(args, name, None)), _plain(saved_args[name])
        if ours != theirs:
            out.append(("--" + name.replace("_", "-"), ours, theirs))
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _model_shapes(sharded) -> Dict[str, tuple]:
    """{key: global shape} of every ShardedTensor the model will load (factories built), skipping the tensors megatron
    loads with allow_shape_mismatch (vocabulary rows, checked by check_vocab)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out: Dict[str, tuple] = {}

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, ShardedTensorFactory):
            walk(obj.build())
        elif isinstance(obj, ShardedTensor) and not obj.allow_shape_mismatch:
            out[obj.key] = tuple(obj.global_shape)

    walk(sharded)
    return out


def check_shapes(path: str, model_sharded: dict, tensors: dict, saved_args: dict, args) -> None:
    """Every model tensor exists in the checkpoint with its global shape, else one sentence naming the flags."""
    wrong = None
    for key, shape in sorted(_model_shapes(model_sharded).items()):
        have = tensors.get(key)
        if have is None:
            wrong = f"{key} is not in the checkpoint"
        elif tuple(have.global_shape) != shape:
            wrong = f"{key} is {tuple(have.global_shape)} in the checkpoint and {shape} in this model"
        if wrong:
            break
    if wrong is None:
        return
    diffs = model_flag_differences(saved_args, args)
    where = os.path.join(path, "run_config.yaml")
    if diffs:
        said = "; ".join(f"{flag} {_show(ours)} here, {_show(theirs)} in the checkpoint" for flag, ours, theirs in diffs[:4])
        raise CheckpointError(f"{path} holds a different model ({said}); pass the checkpoint's values (listed in "
                              f"{where}) or a different --load.")
    raise CheckpointError(f"{path} does not fit this model ({wrong}); build the model with the flags in {where}, or "
                          f"pass a different --load.")


def _show(v) -> str:
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return "unset (the variant's preset)" if v is None else str(v)


# OptimizerParamScheduler.state_dict() key -> (flag, the value this command line gives the scheduler)
def _schedule_now(args) -> Dict[str, Tuple[str, object]]:
    decay = max(args.lr_decay_iters, args.lr_warmup_iters + 1)  # model_setup.build_scheduler
    return {"max_lr": ("--lr", args.lr), "min_lr": ("--min-lr", args.min_lr),
            "lr_warmup_steps": ("--lr-warmup-iters", args.lr_warmup_iters),
            "lr_decay_steps": ("--lr-decay-iters", decay), "lr_decay_style": ("--lr-decay-style", args.lr_decay_style)}


def schedule_note(saved: dict, args) -> Optional[str]:
    """Which learning-rate schedule a resumed run follows, when the command line and the checkpoint differ."""
    now = _schedule_now(args)
    diffs = [(flag, value, saved[k]) for k, (flag, value) in now.items() if k in saved and saved[k] != value]
    if not diffs:
        return None
    listed = ", ".join(f"{flag} {ours} here, {theirs} in the checkpoint" for flag, ours, theirs in diffs)
    if getattr(args, "override_opt_param_scheduler", False):
        return (f"learning-rate schedule: this command line's ({listed}) because of --override-opt-param-scheduler, "
                f"continuing at step {saved.get('num_steps', 0)}")
    return (f"learning-rate schedule: the checkpoint's ({listed}); add --override-opt-param-scheduler to use this "
            f"command line's values instead")


def apply_schedule_override(optimizer, scheduler, args) -> None:
    """--override-opt-param-scheduler: megatron's param groups carry their own max_lr/min_lr, restored from the
    checkpoint with the optimizer state, and the scheduler reads those before its own values; set them to this
    command line's and recompute the current learning rate (same step)."""
    if not getattr(args, "override_opt_param_scheduler", False):
        return
    for group in optimizer.param_groups:
        if "max_lr" in group:
            group["max_lr"] = args.lr
        if "min_lr" in group:
            group["min_lr"] = args.min_lr
    scheduler.step(increment=0)
