"""Train/valid/test GPT datasets over megatron-core's BlendedMegatronDatasetBuilder.

Called by the training loop after `platform.initialize` (megatron_core_notes §2.1: a blend with a cache
folder needs torch.distributed initialised). Every rank calls it; megatron builds on rank 0 and loads on the others.
"""

from __future__ import annotations

import os


def parse_blend(data_path) -> tuple[list[str], list[float] | None]:
    """Megatron's blend: ["p"], ["p1", "p2"], ["w1", "p1", "w2", "p2"], or one string "w1 p1 w2 p2"."""
    if isinstance(data_path, str):
        data_path = [data_path]
    items = [tok for entry in data_path for tok in str(entry).split()]
    if not items:
        raise ValueError("data_path is empty; pass one prefix or 'w1 prefix1 w2 prefix2 ...'.")

    def is_number(tok: str) -> bool:
        try:
            float(tok)
            return True
        except ValueError:
            return False

    if len(items) % 2 == 0 and all(is_number(t) for t in items[0::2]):
        weights = [float(t) for t in items[0::2]]
        prefixes = items[1::2]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"blend weights {weights} must be non-negative with a positive sum.")
    elif any(is_number(t) for t in items):
        raise ValueError(f"data_path {items} mixes weights and prefixes; give 'w1 p1 w2 p2 ...' or prefixes only.")
    else:
        weights, prefixes = None, items
    for prefix in prefixes:
        missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"dataset prefix {prefix} lacks {', '.join(missing)}; run tools/preprocess_data.py first.")
    return prefixes, weights


def check_pair(prefix: str) -> None:
    """A readable index and a non-empty .bin, else one sentence naming the file (megatron's own message for an empty
    .bin is numpy's "cannot mmap an empty file", without the name)."""
    from hope_megatron.data.token_range import index_dtype

    index_dtype(prefix)
    if os.path.getsize(prefix + ".bin") == 0:
        raise ValueError(f"{prefix}.bin is empty (no tokens): the corpus it was made from held no document; re-run "
                         f"tools/preprocess_data.py on a non-empty input or drop {prefix} from --data-path.")


def build_gpt_datasets(
    data_path,
    split: str,
    seq_length: int,
    seed: int,
    train_valid_test_num_samples,
    tokenizer,
    cache_dir: str | None = None,
    mock: bool = False,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
    create_attention_mask: bool = False,
    is_built_on_rank=None,
):
    """Return (train, valid, test) megatron datasets (None for a split with no samples or off-rank).

    data_path: a Megatron blend (see parse_blend); ignored with mock=True (MockGPTDataset).
    split: e.g. "969,30,1". train_valid_test_num_samples: three sample counts.
    tokenizer: an object with vocab_size/eod/pad (hope_megatron.data.build_tokenizer).
    is_built_on_rank: callable -> bool; default: tensor-parallel rank 0 (every rank when model parallel is off).
    A cache_dir needs torch.distributed initialised (megatron_core_notes §2.1).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}.")
    sizes = [int(n) for n in train_valid_test_num_samples]
    if len(sizes) != 3 or any(n < 0 for n in sizes):
        raise ValueError(f"train_valid_test_num_samples must be three counts >= 0, got {train_valid_test_num_samples}.")
    blend = None if mock else parse_blend(data_path)
    if cache_dir is not None:
        import torch.distributed as dist

        if blend is not None and len(blend[0]) > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("build_gpt_datasets: a blend with cache_dir needs torch.distributed initialised "
                             "(call platform.initialize first), or pass cache_dir=None.")
        os.makedirs(cache_dir, exist_ok=True)
    config = GPTDatasetConfig(
        random_seed=int(seed),
        sequence_length=int(seq_length),
        blend=blend,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask,
        mmap_bin_files=True,
    )
    if blend is not None:
        for prefix in blend[0]:
            check_pair(prefix)
        _check_every_split_has_documents(blend[0], config.split_matrix, sizes, split)
    cls = MockGPTDataset if mock else GPTDataset
    train, valid, test = BlendedMegatronDatasetBuilder(cls, sizes, is_built_on_rank or _build_on_this_rank, config).build()
    return train, valid, test


def _check_every_split_has_documents(prefixes, split_matrix, sizes, split) -> None:
    """megatron's GPTDataset loops forever building the sample index of a split that asks for samples but holds no
    document (e.g. the 0.1% test part of "969,30,1" on a small corpus), even when it is asked for no sample: refuse
    it before any index is built. A split whose --split weight is 0 is not built at all and is fine."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    names = ("train", "validation", "test")
    for prefix in prefixes:
        try:
            n_docs = IndexedDataset(prefix).document_indices.shape[0] - 1
        except (ValueError, OSError, RuntimeError, AssertionError) as e:
            raise ValueError(f"{prefix}.bin/.idx cannot be read ({type(e).__name__}: {e}); re-run "
                             f"tools/preprocess_data.py.") from e
        for i, bounds in enumerate(split_matrix):
            if bounds is None:
                continue
            n = int(round(bounds[1] * n_docs)) - int(round(bounds[0] * n_docs))
            if n <= 0:
                raise ValueError(
                    f"--split {split} gives the {names[i]} split no document of {prefix} ({n_docs} documents), and "
                    f"megatron cannot build an empty split; give it a larger share, or weight 0 to drop it "
                    f"(e.g. --split 98,2,0), or use a larger corpus.")


def _build_on_this_rank() -> bool:
    """Build on TP rank 0 only (others receive broadcast batches), or always without model parallelism."""
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return parallel_state.get_tensor_model_parallel_rank() == 0
    except Exception:  # noqa: BLE001 - parallel_state unavailable: single process
        pass
    return True
