#!/usr/bin/env bash
# Tiny HOPE, what `make demo` trains (configs/hope/tiny.yaml): 2 CPU ranks (gloo, FP32) or the GPUs it finds (BF16).
#
#   examples/pretrain_hope_tiny.sh --dry-run
#   examples/pretrain_hope_tiny.sh                        # after tools/demo.py built runs/demo/{tokenizer,shards}
#   MOCK_DATA=1 examples/pretrain_hope_tiny.sh --train-iters 5 --vocab-size 512   # no files at all
# Reads the demo's shards (one per domain, equal weights) and writes runs/demo/checkpoints; rerun to resume.
set -euo pipefail
HOPE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEF_CONFIG=$HOPE_REPO/configs/hope/tiny.yaml
DEF_TP=1 DEF_PP=1 DEF_MICRO=2 DEF_GLOBAL=8 DEF_SEQ=128 DEF_ITERS=60
DEF_LAYERS=2 DEF_HIDDEN=64 DEF_PARAMS=1.2e6
DEF_GPUS_PER_NODE=2 DEF_SEQUENCE_PARALLEL=0
# GPUs: BF16; CPU: FP32. Either way the distributed optimizer when DP > 1 (the cluster launchers' layout).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEF_BF16=1
else DEF_BF16=0; fi
_shards=$HOPE_REPO/runs/demo/shards
DEF_DATA_PATH="1 $_shards/drama_text_document 1 $_shards/poetry_text_document 1 $_shards/encyclopedia_text_document 1 $_shards/code_text_document"
DEF_TOKENIZER=$HOPE_REPO/runs/demo/tokenizer/demo8k.model
DEF_CKPT=$HOPE_REPO/runs/demo/checkpoints
# --inner-clip 0.3: the seed plan's inner clip, also HopeConfig's default since issue 16 (without it the demo hits NaN
# gradients around iteration 14 at lr 3e-3). --split 98,2,0: the demo's shards are a few hundred documents, too few
# for a 0.1% test split.
DEF_EXTRA=(--inner-clip 0.3 --split 98,2,0)
DEF_ROUND_GLOBAL=1  # on a machine with more GPUs the demo still runs: the global batch grows with DP
: "${PEAK_FLOPS:=$([ "$DEF_BF16" = 1 ] && echo 989e12 || echo 5e10)}"  # CPU: ~50 GFLOP/s per process, a rough guess
: "${ASSUMED_MFU:=0.05}"  # the tiny model is overhead-bound: a few % of peak on CPU or GPU
# shellcheck source=examples/_launch_common.sh
source "$HOPE_REPO/examples/_launch_common.sh"
hope_launch "$@"
