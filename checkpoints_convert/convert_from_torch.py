"""Convert a plain PyTorch directory (convert_to_torch.py's output) back into a torch_dist checkpoint for training.

    python checkpoints_convert/convert_from_torch.py --input OUT --save SAVE [--iteration N]

Writes SAVE/iter_XXXXXXX/ (model weights only, with the original arguments as `args`) and the tracker. The checkpoint is
saved at TP=1/PP=1 and, like every dist_checkpointing checkpoint, loads at any TP/PP (the sharded keys carry global
offsets). It holds no optimizer, scheduler, RNG or CMS accumulators: continue training with
`python -m hope_megatron.train --load SAVE --finetune ...` (fresh optimizer, iteration 0, any layout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def fail(msg: str):
    raise SystemExit(f"convert_from_torch: {msg}")


def convert(input_dir: str, save: str, iteration: int = 0) -> str:
    """Platform must be initialised (1 rank, TP=1/PP=1). Returns the iteration directory written."""
    from megatron.core import dist_checkpointing
    from safetensors.torch import load_file

    from checkpoints_convert.convert_to_torch import TRACKER, build_template
    from hope_megatron.models.full_weights import load_full_state_dict

    args_path = os.path.join(input_dir, "megatron_args.json")
    weights = os.path.join(input_dir, "model.safetensors")
    for need in (args_path, weights, os.path.join(input_dir, "config.json")):
        if not os.path.isfile(need):
            fail(f"{need} is missing; --input must be a directory written by convert_to_torch.py.")
    with open(args_path, encoding="utf-8") as f:
        args = json.load(f)
    with open(os.path.join(input_dir, "config.json"), encoding="utf-8") as f:
        vocab = int(json.load(f)["vocab_size"])
    _, model, _ = build_template(args, vocab)
    dtype = next(model.parameters()).dtype
    full = {k: v.to(dtype) for k, v in load_file(weights).items()}
    try:
        load_full_state_dict(model, full)
    except (KeyError, ValueError) as e:
        fail(f"{weights} does not fit the model of {args_path}: {e}")
    path = os.path.join(save, f"iter_{iteration:07d}")
    os.makedirs(path, exist_ok=True)
    saved = dict(args, tensor_model_parallel_size=1, pipeline_model_parallel_size=1, world_size=0,
                 virtual_pipeline_model_parallel_size=None, num_layers_per_virtual_pipeline_stage=None)
    sd = {"model": model.sharded_state_dict(), "args": saved, "iteration": iteration, "consumed_train_samples": 0,
          "checkpoint_version": 1, "cms": None}
    dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
    with open(os.path.join(save, TRACKER), "w", encoding="utf-8") as f:
        f.write(f"{iteration}\n")
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="directory from convert_to_torch.py")
    p.add_argument("--save", required=True, help="output checkpoint root")
    p.add_argument("--iteration", type=int, default=0, help="iteration number to record (default 0)")
    a = p.parse_args(argv)
    from hope_megatron import platform

    torch.manual_seed(0)
    platform.initialize(1, 1)
    try:
        path = convert(a.input, a.save, a.iteration)
    finally:
        platform.teardown()
    print(f"wrote {path}; continue with: python -m hope_megatron.train --load {a.save} --finetune ...")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
