#!/usr/bin/env bash
# The documented evaluation chain (docs/evaluation.md §5) on the tiny CPU demo model, one process at a time:
#
#   train (tools/demo.py, reused when done) -> convert -> perplexity -> zero-shot (7 tasks) -> NIAH
#   -> continual mode A (continue training segment by segment: drama -> encyclopedia -> code, convert after each)
#   -> continual mode B (test-time CMS stream) -> tools/make_report.py -> reports/
#
#   tools/eval_chain.sh                          # every step; outputs under runs/evalchain, report in reports/
#   STEPS="niah report" tools/eval_chain.sh      # only some steps (names below)
#
# Steps: train convert perplexity zeroshot niah segments continual_a continual_b report.
# Environment (defaults): PYTHON (.venv/bin/python), DEMO (runs/demo: tokenizer, shards, held-out pieces, checkpoints),
# RUN (runs/evalchain), REPORTS (reports), ZS_LIMIT (100 items per task), NOTE (index paragraph),
# NIAH_LENGTHS (1k,2k,4k,8k), NIAH_DEPTHS (0,0.5,1), HAYSTACK (data/eval/niah/essays.jsonl), SEG_ITERS (30 iterations
# per segment), SEG_LR (1e-3, constant), SEG_SEEDS ("1234 1": mode A training seeds = data orders), SEEDS (0,1,2: mode B
# streaming seeds). Logs: RUN/logs/STEP.log.
set -euo pipefail
{  # the whole script is parsed before it runs: editing this file during a run cannot break the run
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
DEMO=${DEMO:-runs/demo}
RUN=${RUN:-runs/evalchain}
REPORTS=${REPORTS:-reports}
ZS_LIMIT=${ZS_LIMIT:-100}
NIAH_LENGTHS=${NIAH_LENGTHS:-1k,2k,4k,8k}
NIAH_DEPTHS=${NIAH_DEPTHS:-0,0.5,1}
HAYSTACK=${HAYSTACK:-data/eval/niah/essays.jsonl}
SEG_ITERS=${SEG_ITERS:-30}
SEG_LR=${SEG_LR:-1e-3}
SEG_SEEDS=${SEG_SEEDS:-1234 1}
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-all}
SEGMENTS=(drama encyclopedia code)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RUN/logs" "$RUN/eval"

want() { [ "$STEPS" = all ] || [[ " $STEPS " == *" $1 "* ]]; }
run() {  # run STEP CMD...: echo the command, stream it to RUN/logs/STEP.log, stop the chain on failure
  local step=$1; shift
  echo "+ $*" | tee -a "$RUN/logs/$step.log"
  "$@" >>"$RUN/logs/$step.log" 2>&1 || { echo "eval_chain: step $step failed; see $RUN/logs/$step.log" >&2; exit 1; }
  grep -E "^(ppl|.*ppl: |.*: acc |niah |average forgetting|wrote )" "$RUN/logs/$step.log" | tail -n 40 || true
}
BASE=$RUN/torch/base

if want train; then  # the tiny model: corpus, tokenizer, shards, 60 iterations on 2 ranks (steps already done are reused)
  run train "$PY" tools/demo.py --workdir "$DEMO" --skip perplexity zeroshot niah
fi
if want convert; then
  run convert "$PY" checkpoints_convert/convert_to_torch.py --load "$DEMO/checkpoints" --output "$BASE" --overwrite
fi
if want perplexity; then  # held-out pieces, one set per domain, plus the PG19-like / Wiki-like substitutes
  mkdir -p "$RUN/heldout"
  for d in drama poetry encyclopedia code; do ln -sf "$(realpath "$DEMO/pieces/$d.heldout.jsonl")" "$RUN/heldout/$d.jsonl"; done
  run perplexity "$PY" -m hope_megatron.eval.perplexity --checkpoint "$BASE" --data-path "$RUN/heldout" --named-sets \
    --max-samples 12 --threads 1 --output "$RUN/eval/perplexity.json"
fi
if want zeroshot; then
  run zeroshot "$PY" -m hope_megatron.eval.zeroshot --checkpoint "$BASE" --limit "$ZS_LIMIT" --threads 1 \
    --tasks piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq --output "$RUN/eval/zeroshot.json"
fi
if want niah; then
  run niah "$PY" -m hope_megatron.eval.niah --checkpoint "$BASE" --lengths "$NIAH_LENGTHS" --depths "$NIAH_DEPTHS" \
    --needles passkey,number,word,uuid --trials 1 --haystack "$HAYSTACK" --measure-memory --threads 1 \
    --plot "$RUN/eval/niah_heatmap.png" --output "$RUN/eval/niah.json"
fi
if want segments; then  # mode A's checkpoints: keep training the demo model on one domain after the other, per seed
  for seed in $SEG_SEEDS; do
    prev=$DEMO/checkpoints
    for s in "${SEGMENTS[@]}"; do
      ck=$RUN/continual/seed$seed/ckpt_$s
      rm -rf "$ck"
      run segments "$PY" -m hope_megatron.train --config configs/hope/tiny.yaml --load "$prev" --finetune --save "$ck" \
        --seed "$seed" --data-path "$DEMO/shards/${s}_train_text_document" --tokenizer-type SentencePieceTokenizer \
        --tokenizer-model "$DEMO/tokenizer/demo8k.model" --data-cache-path "$RUN/continual/data_cache" \
        --inner-clip 0.3 --split 98,2,0 --micro-batch-size 4 --global-batch-size 8 --seq-length 128 \
        --train-iters "$SEG_ITERS" --lr "$SEG_LR" --min-lr "$SEG_LR" --lr-decay-style constant --lr-warmup-iters 0 \
        --save-interval "$SEG_ITERS" --eval-interval "$SEG_ITERS" --eval-iters 2 --log-interval 10 \
        --transformer-impl local
      run segments "$PY" checkpoints_convert/convert_to_torch.py --load "$ck" --output "$RUN/continual/seed$seed/torch_$s" \
        --overwrite
      prev=$ck
    done
  done
fi
common_yaml() {
  echo "segments:"
  for s in "${SEGMENTS[@]}"; do echo "  - {name: $s, path: $(realpath "$DEMO/pieces/$s.heldout.jsonl")}"; done
  echo "eval_docs: 4"
  echo "seq_length: 128"
  echo "max_windows: 8"
}
if want continual_a; then
  { common_yaml; echo "start_checkpoint: $BASE"; echo "train_seeds: [${SEG_SEEDS// /, }]"; echo "checkpoints:"
    for seed in $SEG_SEEDS; do
      echo "  - [$(for s in "${SEGMENTS[@]}"; do printf '%s, ' "$RUN/continual/seed$seed/torch_$s"; done | sed 's/, $//')]"
    done; } >"$RUN/segments_A.yaml"
  run continual_a "$PY" -m hope_megatron.eval.continual --segments "$RUN/segments_A.yaml" --mode A --threads 1 \
    --output "$RUN/eval/continual_A.json"
fi
if want continual_b; then
  { common_yaml; echo "checkpoint: $BASE"; echo "stream_tokens: 2048"
    echo "test_time_cms: {periods: [128, 512], lr: [1.0e-3, 1.0e-4], clip: [1.0, 1.0], momentum: [0.0, 0.0]}"
  } >"$RUN/segments_B.yaml"
  run continual_b "$PY" -m hope_megatron.eval.continual --segments "$RUN/segments_B.yaml" --mode B --seeds "$SEEDS" \
    --threads 1 --output "$RUN/eval/continual_B.json"
fi
if want report; then
  NOTE=${NOTE:-"Written by tools/eval_chain.sh (docs/evaluation.md §5) on the make-demo model (configs/hope/tiny.yaml: \
4 layers, D=64, 60 iterations of 1024 tokens on 2 CPU ranks) converted with checkpoints_convert/convert_to_torch.py; \
zero-shot limited to $ZS_LIMIT items per task, NIAH 1 trial per cell, continual mode A = $SEG_ITERS further \
iterations per segment, training seeds $SEG_SEEDS. A model this small and this briefly trained sits at chance: \
these reports show that every step of the chain works and how its outputs look, not the paper's claims (each report \
ends with what it can and cannot show)."}
  run report "$PY" tools/make_report.py --inputs "$RUN/eval" --output "$REPORTS" \
    --title "hope_megatron evaluation: tiny CPU demo model" --note "$NOTE"
fi
exit 0
}
