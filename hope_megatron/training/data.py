"""Batches for the loop: tokenizer, GPT datasets (megatron's BlendedMegatronDatasetBuilder), a sampler that resumes
from consumed samples, and TP broadcast so only tensor-parallel rank 0 reads data."""

from __future__ import annotations

import torch


def build_tokenizer_from_args(args):
    from hope_megatron.data import build_tokenizer

    return build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
                           merge_file=args.merge_file, vocab_size=args.vocab_size)


def check_token_ranges(args, tokenizer) -> None:
    """Every --data-path prefix holds only ids the tokenizer has (data/token_range.py), before the model is built."""
    from hope_megatron.data import parse_blend
    from hope_megatron.data.gpt_datasets import check_pair
    from hope_megatron.data.token_range import check_prefix
    from hope_megatron.training.checkpoint_fit import describe_tokenizer

    if args.mock_data or not args.data_path:
        return
    for prefix in parse_blend(args.data_path)[0]:
        check_pair(prefix)  # an empty or unreadable pair, named (megatron would say "cannot mmap an empty file")
        check_prefix(prefix, tokenizer.vocab_size, describe_tokenizer(args))


def checked_batches(batches, vocab_size: int):
    """Hold every micro-batch to the vocabulary: an id past the tokenizer (e.g. beyond the part of a huge .bin that
    check_token_ranges sampled) stops with a sentence instead of an IndexError or silently training padding rows."""
    for batch in batches:
        top = int(batch["tokens"].max()) if batch["tokens"].numel() else -1
        top = max(top, int(batch["labels"].max()) if batch["labels"].numel() else -1)
        if top >= vocab_size:
            raise ValueError(f"a training batch holds token id {top} but the tokenizer has {vocab_size} ids; the "
                             f"--data-path shards were made with a larger tokenizer: train with that one, or re-run "
                             f"tools/preprocess_data.py with this one.")
        yield batch


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron pads the embedding table to a multiple of divisible_by x TP (so every TP shard is equal)."""
    multiple = max(divisible_by, 1) * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def sample_counts(args):
    """Samples needed per split: every training iteration, each evaluation and one final test pass."""
    gbs = args.global_batch_size
    train = args.train_iters * gbs
    evals = (args.train_iters // args.eval_interval + 1) if args.eval_interval else 1
    return [train, evals * args.eval_iters * gbs, args.eval_iters * gbs]


def build_datasets(args, tokenizer):
    from hope_megatron.data import build_gpt_datasets

    return build_gpt_datasets(
        args.data_path, args.split, args.seq_length, args.seed, sample_counts(args), tokenizer,
        cache_dir=args.data_cache_path, mock=args.mock_data, eod_mask_loss=args.eod_mask_loss)


class ResumableBatchSampler:
    """Megatron's pretraining sampler: global batches taken in order from `consumed_samples`; within a step the
    micro-batch k of DP rank r holds samples [k*mbs*dp + r*mbs, ... + mbs) of the step's global batch, so the union
    over DP ranks of a step is the same set at any DP size."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total = int(total_samples)
        self.consumed = int(consumed_samples)
        self.mbs, self.rank, self.dp = int(micro_batch_size), int(dp_rank), int(dp_size)

    def __iter__(self):
        step = self.mbs * self.dp
        start = self.consumed
        while start + step <= self.total:
            base = start + self.rank * self.mbs
            yield [i % self.total for i in range(base, base + self.mbs)]
            start += step


def build_iterator(dataset, consumed_samples: int, args, cycle: bool = False):
    """An iterator of micro-batch dicts for this DP rank (None off TP rank 0, where the dataset is None)."""
    from megatron.core import parallel_state as ps

    if dataset is None:
        return None
    total = len(dataset)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    if cycle:
        consumed_samples = consumed_samples % max(total - total % (args.micro_batch_size * dp), 1)
    sampler = ResumableBatchSampler(total, consumed_samples, args.micro_batch_size, dp_rank, dp)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                                         pin_memory=False, persistent_workers=False)
    vocab = getattr(args, "real_vocab_size", None)
    guard = (lambda it: checked_batches(it, vocab)) if vocab else iter
    if not cycle:
        return guard(iter(loader))

    def forever():
        while True:
            yield from loader
    return guard(forever())


_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def get_batch(data_iterator, device):
    """Read a micro-batch on TP rank 0 and broadcast it over the TP group (megatron's get_batch_on_this_tp_rank)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        batch = next(data_iterator)
        return {k: batch[k].to(device) for k in _KEYS}
    group, src = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_src_rank()
    if ps.get_tensor_model_parallel_rank() == 0:
        batch = next(data_iterator)
        shape = torch.tensor(list(batch["tokens"].shape), dtype=torch.long, device=device)
    else:
        batch, shape = None, torch.zeros(2, dtype=torch.long, device=device)
    dist.broadcast(shape, src, group=group)
    out = {}
    for k in _KEYS:
        dtype = torch.float32 if k == "loss_mask" else torch.long
        t = batch[k].to(device=device, dtype=dtype) if batch is not None else \
            torch.empty(tuple(shape.tolist()), dtype=dtype, device=device)
        dist.broadcast(t, src, group=group)
        out[k] = t
    return out
