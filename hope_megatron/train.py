"""`torchrun --nproc_per_node N -m hope_megatron.train [--config configs/hope/X.yaml] [--flags]` (console script
`hope-train`). Flags and the checkpoint layout: docs/training.md."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from hope_megatron.training.arguments import parse_args

    args = parse_args(argv)
    from hope_megatron import platform
    from hope_megatron.training.loop import pretrain

    try:
        summary = pretrain(args)
    except ValueError as e:  # configuration, data and checkpoint problems: one sentence, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        platform.teardown()
        return 2
    platform.teardown()
    return 3 if summary.get("stopped_by") == "nan" else 0  # diverged: a chained convert/eval step must not follow


if __name__ == "__main__":  # the guard matters: dist_checkpointing's async writer re-imports __main__ (notes §2.4)
    sys.exit(main())
