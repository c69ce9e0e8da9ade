"""Rank-side workers for the converter tests (module-level so spawned ranks import them): every variant saved at
TP2xPP2 as training saves it (build_model + dist_checkpointing.save with the resolved arguments; the vocabulary of 65
is padded to 66 rows there), the TP=1 reference logits of the same full weights, and the one-process conversions."""

from __future__ import annotations

import os

import torch

VOCAB, SEQ, BATCH = 64, 16, 2
BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "48",
        "--titans-chunk-size", "4", "--seq-length", str(SEQ), "--tokenizer-type", "NullTokenizer",
        "--vocab-size", str(VOCAB), "--make-vocab-size-divisible-by", "1"]
CASES = {
    "hope": ["--hope-variant", "hope", "--titans-proj-chunk-size", "2", "--inner-clip", "0.5", "--cms-levels", "2"],
    "hope_attention": ["--hope-variant", "hope_attention", "--cms-levels", "2", "--untie-embeddings-and-output-weights"],
    "titans": ["--hope-variant", "titans"],
    "transformer": ["--hope-variant", "transformer", "--num-query-groups", "2"],
    "deltanet": ["--hope-variant", "deltanet", "--titans-chunk-size", "1"],
    "swa": ["--hope-variant", "swa", "--swa-window", "5"],
    "hybrid": ["--hope-variant", "hope", "--num-layers", "4", "--layer-pattern", "HDWT", "--cms-levels", "2",
               "--cms-variant", "independent", "--cms-hidden-sizes", "32", "64", "--untie-embeddings-and-output-weights"],
    # issue 16 item 3: memory layers reset after every EOD (tokens() holds two), the W layer sees across them
    "hybrid_reset": ["--hope-variant", "hope", "--num-layers", "4", "--layer-pattern", "HTDW", "--cms-levels", "2",
                     "--hope-reset-at-eod"],
}
EOD = VOCAB - 1  # what the save records as the tokenizer's eod_token_id


ROUND_TRIP = ("hope", "hybrid")


def case_args(case, tp=1, pp=1):
    from hope_megatron.training.arguments import parse_args

    extra = CASES[case]
    if "--num-layers" in extra:
        base = list(BASE)
        i = base.index("--num-layers")
        del base[i:i + 2]
    else:
        base = BASE
    args = parse_args(base + extra + ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size",
                                      str(pp)])
    # as pretrain records them: NullTokenizer's VOCAB ids + EOD, padded to a multiple of TP (66 rows at TP2)
    args.real_vocab_size = VOCAB + 1
    args.padded_vocab_size = -(-args.real_vocab_size // tp) * tp
    return args


def tokens():
    t = torch.randint(0, EOD, (BATCH, SEQ), generator=torch.Generator().manual_seed(5))
    t[0, 5] = t[1, 9] = EOD  # row 0's next document starts at a streaming split (6), row 1's inside a piece (10)
    return t


def _build(args):
    from hope_megatron.testing import fill_deterministic
    from hope_megatron.training.model_setup import build_config, build_model_chunks

    torch.manual_seed(0)
    chunks = build_model_chunks(args, build_config(args), args.real_vocab_size, args.padded_vocab_size, init=False)
    fill_deterministic(chunks, seed=1)
    return chunks[0]


def save_worker(root):
    """4 ranks: save every case at TP2xPP2, then (TP=1 on every rank) return rank 0's reference logits."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from hope_megatron import platform
    from hope_megatron.training.arguments import resolved_config

    platform.initialize(2, 2, seed=3)
    for case in CASES:
        args = case_args(case, 2, 2)
        args.world_size, args.eod_token_id = 4, EOD  # the training loop records the tokenizer's EOD id
        model = _build(args)
        path = os.path.join(root, case, "iter_0000007")
        if dist.get_rank() == 0:
            os.makedirs(path, exist_ok=True)
        dist.barrier()
        sd = {"model": model.sharded_state_dict(), "args": resolved_config(args), "iteration": 7}
        dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
        if dist.get_rank() == 0:
            with open(os.path.join(root, case, "latest_checkpointed_iteration.txt"), "w") as f:
                f.write("7\n")
        dist.barrier()
    platform.initialize(1, 1, seed=3)
    out = {}
    from hope_megatron.ops.documents import document_starts

    for case in CASES:
        args = case_args(case)
        model = _build(args)
        model.eval()
        with torch.no_grad():
            t = tokens()
            pos = torch.arange(SEQ).unsqueeze(0).expand_as(t)
            starts = document_starts(t, EOD) if args.hope_reset_at_eod else None
            out[case] = model(t, pos, starts).detach().clone()
    return out if dist.get_rank() == 0 else None


def convert_worker(root):
    """1 rank: convert every case to plain PyTorch, back to torch_dist, and that one to plain PyTorch again."""
    from checkpoints_convert import convert_from_torch, convert_to_torch
    from hope_megatron import platform

    platform.initialize(1, 1)
    errors = {}
    for case in CASES:
        convert_to_torch.convert(os.path.join(root, case), os.path.join(root, case + "_torch"))
        if case not in ROUND_TRIP:
            continue
        convert_from_torch.convert(os.path.join(root, case + "_torch"), os.path.join(root, case + "_back"), 3)
        convert_to_torch.convert(os.path.join(root, case + "_back"), os.path.join(root, case + "_torch2"))
    for bad in ("missing", "partial"):  # refusals, one sentence each
        try:
            convert_to_torch.convert(os.path.join(root, bad), os.path.join(root, bad + "_out"))
        except SystemExit as e:
            errors[bad] = str(e)
    return errors
