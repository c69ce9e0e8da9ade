#!/usr/bin/env bash
# HOPE target, ~1.3B parameters, 32 layers x 1536, 24 heads, seq 8192, 100B tokens (seed plan §4.1;
# configs/hope/target.yaml).
#
#   examples/pretrain_hope_1p3b.sh --dry-run
#   sbatch -N 8 --ntasks-per-node=1 --gpus-per-node=8 --wrap "srun examples/pretrain_hope_1p3b.sh"   # SLURM
#   NNODES=8 NODE_RANK=$i MASTER_ADDR=node0 examples/pretrain_hope_1p3b.sh                         # per node, by hand
#   FP8=1 examples/pretrain_hope_1p3b.sh                         # FP8 (hybrid) through Transformer Engine
#   FSDP=1 examples/pretrain_hope_1p3b.sh                        # ZeRO-3 (torch FSDP2) instead of the distributed optimizer
# Default layout: TP=2 + sequence parallel (memory heads 24 split 12/12), PP=1, DP = GPUs / 2, distributed optimizer;
# 128 x 8192 = 1,048,576 tokens per step, 95,367 steps = 100B tokens. For PP, pass PP=2 (32 layers -> 16 per stage).
set -euo pipefail
HOPE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEF_CONFIG=$HOPE_REPO/configs/hope/target.yaml
DEF_TP=2 DEF_PP=1 DEF_MICRO=1 DEF_GLOBAL=128 DEF_SEQ=8192 DEF_ITERS=95367
DEF_LAYERS=32 DEF_HIDDEN=1536 DEF_PARAMS=1.339e9
DEF_GPUS_PER_NODE=8 DEF_BF16=1 DEF_SEQUENCE_PARALLEL=1
DEF_DATA_PATH=$HOPE_REPO/data/tokenized/pretrain_text_document
DEF_TOKENIZER=$HOPE_REPO/data/tokenizer/spm_unigram_32k.model
DEF_CKPT=$HOPE_REPO/checkpoints/hope_1p3b
DEF_EXTRA=(--log-interval 10 --save-interval 1000 --eval-interval 2000 --eval-iters 20)
# shellcheck source=examples/_launch_common.sh
source "$HOPE_REPO/examples/_launch_common.sh"
hope_launch "$@"
