#!/usr/bin/env bash
# HOPE pilot, ~160M parameters, 12 layers x 512, 8 heads, seq 2048, 3B tokens (seed plan §4.1; configs/hope/pilot.yaml).
# Also the scale of every ablation: CONFIG=configs/hope/ablations/<name>.yaml examples/pretrain_hope_160m.sh
#
#   examples/pretrain_hope_160m.sh --dry-run                     # preflight + resolved command, nothing launched
#   DATA_PATH=/data/tok/fineweb_text_document TOKENIZER_MODEL=/data/tok/spm32k.model \
#     CHECKPOINT_DIR=/ckpt/hope_160m NNODES=1 GPUS_PER_NODE=8 examples/pretrain_hope_160m.sh
#   sbatch -N 2 --ntasks-per-node=1 --gpus-per-node=8 --wrap "srun examples/pretrain_hope_160m.sh"   # SLURM
# Default layout: TP=1 PP=1, DP = all GPUs, distributed optimizer; 256 x 2048 = 524,288 tokens per step,
# 5,722 steps = 3.0B tokens. Every knob is an environment variable: see examples/_launch_common.sh.
set -euo pipefail
HOPE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEF_CONFIG=$HOPE_REPO/configs/hope/pilot.yaml
DEF_TP=1 DEF_PP=1 DEF_MICRO=8 DEF_GLOBAL=256 DEF_SEQ=2048 DEF_ITERS=5722
DEF_LAYERS=12 DEF_HIDDEN=512 DEF_PARAMS=162.6e6
DEF_GPUS_PER_NODE=8 DEF_BF16=1 DEF_SEQUENCE_PARALLEL=0
DEF_DATA_PATH=$HOPE_REPO/data/tokenized/pretrain_text_document
DEF_TOKENIZER=$HOPE_REPO/data/tokenizer/spm_unigram_32k.model
DEF_CKPT=$HOPE_REPO/checkpoints/hope_160m
DEF_EXTRA=(--log-interval 10 --save-interval 1000 --eval-interval 1000 --eval-iters 20)
# shellcheck source=examples/_launch_common.sh
source "$HOPE_REPO/examples/_launch_common.sh"
hope_launch "$@"
