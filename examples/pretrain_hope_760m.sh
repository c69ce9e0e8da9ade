#!/usr/bin/env bash
# HOPE mid, ~760M parameters, 24 layers x 1024, 16 heads, seq 4096, 30B tokens (seed plan §4.1; configs/hope/mid.yaml).
#
#   examples/pretrain_hope_760m.sh --dry-run
#   DATA_PATH=/data/tok/fineweb_text_document TOKENIZER_MODEL=/data/tok/spm32k.model \
#     CHECKPOINT_DIR=/ckpt/hope_760m examples/pretrain_hope_760m.sh                        # one node, 8 GPUs
#   sbatch -N 4 --ntasks-per-node=1 --gpus-per-node=8 --wrap "srun examples/pretrain_hope_760m.sh"   # SLURM
# Default layout: TP=1 PP=1, DP = all GPUs, distributed optimizer; 128 x 4096 = 524,288 tokens per step,
# 57,221 steps = 30.0B tokens. Use TP=2 (SEQUENCE_PARALLEL=1) if a micro-batch of 2 x 4096 does not fit.
set -euo pipefail
HOPE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEF_CONFIG=$HOPE_REPO/configs/hope/mid.yaml
DEF_TP=1 DEF_PP=1 DEF_MICRO=2 DEF_GLOBAL=128 DEF_SEQ=4096 DEF_ITERS=57221
DEF_LAYERS=24 DEF_HIDDEN=1024 DEF_PARAMS=786.3e6
DEF_GPUS_PER_NODE=8 DEF_BF16=1 DEF_SEQUENCE_PARALLEL=1
DEF_DATA_PATH=$HOPE_REPO/data/tokenized/pretrain_text_document
DEF_TOKENIZER=$HOPE_REPO/data/tokenizer/spm_unigram_32k.model
DEF_CKPT=$HOPE_REPO/checkpoints/hope_760m
DEF_EXTRA=(--log-interval 10 --save-interval 1000 --eval-interval 2000 --eval-iters 20)
# shellcheck source=examples/_launch_common.sh
source "$HOPE_REPO/examples/_launch_common.sh"
hope_launch "$@"
