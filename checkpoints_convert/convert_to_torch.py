"""Convert a hope_megatron distributed checkpoint (torch_dist, any TP/PP, any variant) into a plain PyTorch directory.

    python checkpoints_convert/convert_to_torch.py --load SAVE [--iteration N] --output OUT [--overwrite] [--hf]

One CPU process: a 1-rank gloo group (platform.initialize), a TP=1/PP=1 template model built from the arguments saved
in the checkpoint, megatron's dist_checkpointing.load resharding every tensor into it (megatron_core_notes.md pain
point 7). Writes OUT/model.safetensors (fp32, megatron GPTModel parameter names), OUT/config.json (the HopeConfig
fields that define the model, per-letter op configs, vocab and sequence length) and the tokenizer file the arguments
name, if it exists. Only the tokenizer's vocabulary is kept: the rows megatron padded the tables with (their number
depends on the TP size the checkpoint was saved at) are dropped, so the export is the same from any layout.
hope_megatron.inference.load_model(OUT) reads the result without megatron. --hf then adds what transformers needs
(export_hf.py: config keys, remote code, tokenizer files), in place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from typing import Optional, Tuple

import torch

TRACKER = "latest_checkpointed_iteration.txt"
VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")  # rows = vocabulary (+ padding)
# HopeConfig / TransformerConfig fields that define the model's function (config.json).
MODEL_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "ffn_hidden_size", "normalization", "layernorm_epsilon", "gated_linear_unit", "add_bias_linear")


def fail(msg: str):
    raise SystemExit(f"convert_to_torch: {msg}")


def resolve_iteration_dir(load: str, iteration: Optional[int]) -> Tuple[str, int]:
    """SAVE/iter_XXXXXXX for --iteration or the tracker's iteration; a damaged or missing tracked iteration falls back
    to the newest complete one before it with a warning (training/checkpoint_health.py); refuses, naming the file,
    what cannot be read."""
    from hope_megatron.training.checkpoint_health import CheckpointError, choose

    if not os.path.isdir(load):
        fail(f"--load {load} is not a directory; pass the training --save directory.")
    try:
        choice = choose(load, iteration, step_flag="--iteration", what="--load")
    except CheckpointError as e:
        fail(str(e))
    if choice is None:
        fail(f"{load} has no {TRACKER}, so no complete checkpoint was written there; pass --iteration N or "
             f"the right --save directory.")
    if choice.warning:
        print(choice.warning, file=sys.stderr, flush=True)
    return choice.path, choice.iteration


def saved_args(path: str) -> dict:
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(path)
    args = common.get("args") if isinstance(common, dict) else None
    if not isinstance(args, dict) or "hope_variant" not in args:
        fail(f"{path} has no hope_megatron arguments in common.pt; it was not written by hope_megatron.train (or "
             f"a test helper saving `args`), so its model cannot be rebuilt.")
    return args


def template_namespace(args: dict) -> argparse.Namespace:
    """The saved arguments at TP=1/PP=1 on CPU: one process holds the whole model."""
    ns = argparse.Namespace(**args)
    ns.tensor_model_parallel_size = ns.pipeline_model_parallel_size = 1
    ns.virtual_pipeline_model_parallel_size = None
    ns.sequence_parallel = False
    ns.recompute_granularity = ns.recompute_method = ns.recompute_num_layers = None
    ns.transformer_impl = "local"  # checkpoint keys are backend-independent (layers/specs.py)
    ns.fp8_format = None
    return ns


def global_vocab_size(path: str) -> int:
    """Rows of the saved embedding table (the padded vocabulary of the layout it was saved at)."""
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(path)
    key = "embedding.word_embeddings.weight"
    if key not in meta:
        fail(f"{path} has no {key}; the checkpoint holds no model weights (optimizer-only or another model).")
    return int(meta[key].global_shape[0])


def real_vocab_size(args: dict, padded: int) -> int:
    """The tokenizer's vocabulary: recorded by training (`real_vocab_size`), else rebuilt from the saved tokenizer
    arguments; a checkpoint whose tokenizer cannot be rebuilt here keeps every saved row (with a warning)."""
    real = args.get("real_vocab_size")
    if real is None:
        try:
            from hope_megatron.training.data import build_tokenizer_from_args

            real = int(build_tokenizer_from_args(argparse.Namespace(**args)).vocab_size)
        except Exception as e:  # noqa: BLE001 - a missing tokenizer file only costs the padding rows
            print(f"warning: the checkpoint does not record its tokenizer's vocabulary and the tokenizer could not be "
                  f"rebuilt ({type(e).__name__}: {e}); keeping all {padded} saved rows.", file=sys.stderr)
            return padded
    if not 1 <= int(real) <= padded:
        fail(f"the checkpoint's vocabulary ({real}) does not fit its {padded}-row embedding table; it was saved by "
             f"different code.")
    return int(real)


def build_template(args: dict, vocab: int, padded: Optional[int] = None):
    """(HopeConfig, GPTModel, namespace) at TP=1/PP=1 built exactly as training builds a stage (model_setup), with
    `padded` table rows (default `vocab`); no initialisation draw (the weights are loaded into it)."""
    from hope_megatron.training.model_setup import build_config, build_model_chunks

    ns = template_namespace(args)
    config = build_config(ns)
    (model,) = build_model_chunks(ns, config, vocab, padded or vocab, init=False)
    return config, model, ns


def model_config_json(config, ns, vocab: int) -> dict:
    """config.json: what hope_megatron.inference needs to rebuild the function, nothing about parallelism."""
    from hope_megatron.config import MEMORY_LETTERS, hope_fields
    from hope_megatron.inference.model import CONVERTED_FORMAT

    out = {f: getattr(config, f) for f in MODEL_FIELDS}
    out.update({f.name: getattr(config, f.name) for f in hope_fields()})
    act = config.activation_func
    out["activation"] = "silu" if act is torch.nn.functional.silu else "gelu"
    letters = config.layer_letters()
    out.update(layer_letters="".join(letters), uses_cms=bool(config.uses_cms), cms_widths=config.cms_widths(),
               vocab_size=vocab, seq_length=int(ns.seq_length), max_position_embeddings=int(ns.max_position_embeddings),
               rotary_base=int(ns.rotary_base), share_embeddings_and_output_weights=not ns.untie_embeddings_and_output_weights,
               op_configs={c: dataclasses.asdict(config.to_op_config(c)) for c in sorted(set(letters) & set(MEMORY_LETTERS))},
               tokenizer_type=ns.tokenizer_type, format_version=CONVERTED_FORMAT)
    # the EOD id the training data used: inference resets the memory after it under hope_reset_at_eod
    out["eod_token_id"] = getattr(ns, "eod_token_id", None)
    if config.hope_reset_at_eod and out["eod_token_id"] is None:
        fail("the checkpoint was trained with --hope-reset-at-eod but its arguments record no eod_token_id, so "
             "inference could not find the document starts; save it again with hope_megatron.train.")
    return out


def load_full_state_dict(path: str, model, vocab: int) -> dict:
    """dist_checkpointing.load into the TP=1/PP=1 template; returns {name: fp32 tensor} of every parameter, the
    vocabulary tables cut to their first `vocab` (real) rows."""
    from megatron.core import dist_checkpointing

    from hope_megatron.training.checkpoint_health import CheckpointError, reading

    try:  # torch's CheckpointException is a BaseException: `reading` turns it into one sentence
        with reading(path, "the checkpoint is damaged or was saved by different code; pass --iteration N for an "
                           "earlier one."):
            state = dist_checkpointing.load({"model": model.sharded_state_dict()}, path)
    except CheckpointError as e:
        fail(str(e))
    model.load_state_dict(state["model"])
    out = {}
    for n, p in model.named_parameters():
        t = p.detach().to(torch.float32)
        if n in VOCAB_TABLES:
            t = t[:vocab]
        out[n] = t.contiguous().clone()
    return out


def copy_tokenizer(ns, output: str) -> Optional[str]:
    src = getattr(ns, "tokenizer_model", None) or getattr(ns, "vocab_file", None)
    if not src:
        return None
    if not os.path.isfile(src):
        print(f"warning: the tokenizer file {src} named by the checkpoint's arguments is not here; copy it to "
              f"{output} by hand.", file=sys.stderr)
        return None
    shutil.copy2(src, os.path.join(output, os.path.basename(src)))
    merge = getattr(ns, "merge_file", None)
    if merge and os.path.isfile(merge):
        shutil.copy2(merge, os.path.join(output, os.path.basename(merge)))
    return os.path.basename(src)


def convert(load: str, output: str, iteration: Optional[int] = None, overwrite: bool = False) -> dict:
    """Convert; platform must be initialised (1 rank). Returns the written config dict. The output is checked (a
    writable directory, empty or --overwrite, room for the weights) before the checkpoint's tensors are read."""
    from safetensors.torch import save_file

    from hope_megatron.data.output_paths import OutputPathError, check_output_dir
    from checkpoints_convert.output_dir import previous_conversion

    path, iteration = resolve_iteration_dir(load, iteration)
    args = saved_args(path)
    padded = global_vocab_size(path)
    vocab = real_vocab_size(args, padded)
    config, model, ns = build_template(args, vocab, padded)
    need = sum(p.numel() for p in model.parameters()) * 4 + 2**20
    try:
        check_output_dir("--output", output, need)
        stale = previous_conversion(output, overwrite)
    except OutputPathError as e:
        fail(str(e))
    sd = load_full_state_dict(path, model, vocab)
    for p in stale:  # only now that the new weights are in memory
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    if stale:
        kept = sorted(os.listdir(output))
        print(f"--overwrite: removed the earlier conversion's {', '.join(os.path.basename(p) for p in stale)} from "
              f"{output}" + (f" (kept: {', '.join(kept)})" if kept else ""), file=sys.stderr)
    os.makedirs(output, exist_ok=True)
    cfg = model_config_json(config, ns, vocab)
    cfg.update(iteration=iteration, source=os.path.abspath(load),
               saved_layout={"tensor_model_parallel_size": args.get("tensor_model_parallel_size"),
                             "pipeline_model_parallel_size": args.get("pipeline_model_parallel_size")})
    try:
        cfg["tokenizer_file"] = copy_tokenizer(ns, output)
        _atomic(os.path.join(output, "model.safetensors"),
                lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
        _atomic(os.path.join(output, "config.json"), lambda tmp: _dump(cfg, tmp))
        _atomic(os.path.join(output, "megatron_args.json"), lambda tmp: _dump(args, tmp))  # convert_from_torch reads it
    except OSError as e:
        from hope_megatron.data.output_paths import enospc_message

        fail((enospc_message(output, e) or f"writing {output} failed ({e})") + "; the files written so far are "
             "incomplete, re-run the conversion.")
    return cfg


def _dump(obj, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _atomic(final: str, write) -> None:
    """write(tmp) then rename: a crash or a full disk never leaves a half-written file under the final name."""
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, help="training --save directory (holds latest_checkpointed_iteration.txt)")
    p.add_argument("--iteration", type=int, default=None, help="iteration to convert (default: the tracker's)")
    p.add_argument("--output", required=True, help="output directory (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in --output: its weights, "
                   "config, tokenizer and eval/ results are removed once the new weights are loaded; other files stay")
    p.add_argument("--hf", action="store_true", help="also make OUT loadable by Hugging Face transformers and "
                   "`lm_eval --model hf` (checkpoints_convert/export_hf.py, in place)")
    a = p.parse_args(argv)
    from hope_megatron import platform

    platform.initialize(1, 1)
    try:
        cfg = convert(a.load, a.output, a.iteration, a.overwrite)
    finally:
        platform.teardown()
    n = cfg["num_layers"]
    print(f"converted {a.load} iteration {cfg['iteration']} ({cfg['hope_variant']}, {n} layers, vocab "
          f"{cfg['vocab_size']}, saved at TP={cfg['saved_layout']['tensor_model_parallel_size']} "
          f"PP={cfg['saved_layout']['pipeline_model_parallel_size']}) -> {a.output}")
    if a.hf:
        from checkpoints_convert.export_hf import main as export_main

        export_main(["--checkpoint", a.output])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
