# Shared body of examples/pretrain_hope_*.sh: resolve the cluster layout, print a preflight, launch torchrun.
# Sourced (never run) by a launcher that first sets HOPE_REPO and its scale defaults:
#   DEF_CONFIG DEF_TP DEF_PP DEF_MICRO DEF_GLOBAL DEF_SEQ DEF_LAYERS DEF_HIDDEN DEF_PARAMS DEF_ITERS
#   DEF_GPUS_PER_NODE DEF_BF16 DEF_SEQUENCE_PARALLEL DEF_DISTRIBUTED_OPTIMIZER DEF_DATA_PATH DEF_TOKENIZER DEF_CKPT
#   DEF_EXTRA (array of extra train flags) DEF_ROUND_GLOBAL=1 (round the global batch up to micro x DP)
# and then calls `hope_launch "$@"`.
#
# Every knob comes from the environment (empty or unset = the default shown by the preflight):
#   layout     GPUS_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT (SLURM_NNODES, SLURM_NODEID,
#              SLURM_JOB_NODELIST via scontrol and SLURM_GPUS_ON_NODE are read when present)
#   parallel   TP PP (DP = world / (TP x PP)), VPP_LAYERS (layers per virtual stage), SEQUENCE_PARALLEL=1,
#              DISTRIBUTED_OPTIMIZER=0|1 (default 1 when DP > 1), FSDP=1 (ZeRO-3 through torch FSDP2, PP=1,
#              instead of the distributed optimizer), RECOMPUTE=full|selective
#   batch      MICRO_BATCH GLOBAL_BATCH SEQ_LEN TRAIN_ITERS
#   precision  BF16=1 (default on GPU) | FP8=1 (hybrid E4M3/E5M2 through Transformer Engine) | TRANSFORMER_IMPL
#   paths      CONFIG DATA_PATH (prefix, or "W1 P1 W2 P2" blend) TOKENIZER_MODEL CHECKPOINT_DIR TENSORBOARD_DIR
#              DATA_CACHE_PATH MOCK_DATA=1 (synthetic tokens, no files)
#   estimate   MODEL_PARAMS PEAK_FLOPS (per device, default 989e12 H100 BF16 dense) ASSUMED_MFU (default 0.35)
#              GPU_MEMORY_GB (memory of one GPU in GiB, default 80): the preflight refuses a layout whose estimated
#              peak memory per GPU exceeds it (hope_megatron/training/memory_estimate.py, docs/training.md)
#   other      PYTHON (interpreter with hope_megatron installed), LOG_INTERVAL SAVE_INTERVAL EVAL_INTERVAL
# Arguments: --dry-run (print the preflight and the resolved command, launch nothing); anything else is passed to
# `python -m hope_megatron.train` after the resolved flags, so it overrides them (e.g. --train-iters 100).

hope_die() { echo "error: $*" >&2; exit 2; }

_hope_gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

# Fill the rendezvous variables from SLURM when the user did not set them (one torchrun per node: srun --ntasks-per-node=1).
_hope_slurm_layout() {
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  : "${NNODES:=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-}}}"
  : "${NODE_RANK:=${SLURM_NODEID:-}}"
  if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    if command -v scontrol >/dev/null 2>&1; then
      MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    elif [[ "$SLURM_JOB_NODELIST" != *[\[,]* ]]; then
      MASTER_ADDR=$SLURM_JOB_NODELIST  # a single plain hostname needs no expansion
    fi
  fi
  : "${GPUS_PER_NODE:=${SLURM_GPUS_ON_NODE:-}}"
  HOPE_SLURM="job ${SLURM_JOB_ID}"
}

# Values a YAML config sets, as shell assignments CFG_<KEY>=value (only the keys the preflight needs).
_hope_read_config() {
  local cfg=$1
  [ -f "$cfg" ] || return 0
  "$PYTHON" - "$cfg" <<'PY' 2>/dev/null || true
import sys, yaml
d = yaml.safe_load(open(sys.argv[1])) or {}
for k in ("seq_length", "micro_batch_size", "global_batch_size", "num_layers", "hidden_size", "train_iters",
          "hope_variant", "memory_heads", "num_attention_heads", "cms_levels", "self_mod"):
    v = d.get(k)
    if v is not None and not isinstance(v, (list, dict)):
        print(f"CFG_{k.upper()}='{v}'")
PY
}

_hope_check_data() {
  local tok
  for tok in $DATA_PATH; do
    [[ "$tok" =~ ^[0-9.eE+-]+$ ]] && continue  # a blend weight
    [ -f "${tok}.idx" ] && [ -f "${tok}.bin" ] || hope_die "DATA_PATH prefix '${tok}' has no ${tok}.bin/.idx; run tools/preprocess_data.py (docs/data.md) or set DATA_PATH to its --output-prefix + _text_document."
  done
  if [ -n "$TOKENIZER_MODEL" ] && [ ! -f "$TOKENIZER_MODEL" ]; then
    hope_die "TOKENIZER_MODEL '$TOKENIZER_MODEL' does not exist; train one with tools/train_tokenizer.py or set TOKENIZER_MODEL."
  fi
}

# Memory preflight: the estimated peak memory per GPU of the run the resolved command starts (its own training flags,
# parsed by the training CLI). Sets HOPE_MEM_LINES (printed in the preflight) and HOPE_MEM_REFUSAL (one sentence, or
# empty). Arguments: world size, then the command. A crash of the estimator itself warns and never blocks a launch.
_hope_memory_preflight() {
  local world=$1 seen=0 a out err rc train=()
  shift
  for a in "$@"; do [ "$seen" = 1 ] && train+=("$a"); [ "$a" = hope_megatron.train ] && seen=1; done
  HOPE_MEM_LINES="" HOPE_MEM_REFUSAL=""
  if [ ! -f "$CONFIG" ]; then
    HOPE_MEM_LINES="memory per GPU    not estimated (CONFIG '$CONFIG' does not exist)"
    return 0
  fi
  err=$(mktemp)
  out=$(PYTHONWARNINGS=ignore "$PYTHON" -m hope_megatron.training.memory_estimate --world-size "$world" \
        --gpu-memory-gb "${GPU_MEMORY_GB:-80}" -- "${train[@]}" 2>"$err") && rc=0 || rc=$?
  HOPE_MEM_LINES=$out
  case $rc in
    0) ;;
    2|3) HOPE_MEM_REFUSAL=$(grep '^error: ' "$err" | tail -n 1 | sed 's/^error: //')
         [ -n "$HOPE_MEM_REFUSAL" ] || HOPE_MEM_REFUSAL="the memory preflight refused this run (exit $rc)." ;;
    *) HOPE_MEM_LINES="memory per GPU    not estimated (the estimator failed: $(tail -n 1 "$err"))" ;;
  esac
  rm -f "$err"
}

hope_launch() {
  local dry_run=0 passthrough=()
  # --train-iters/--micro-batch-size/--global-batch-size/--seq-length given as arguments act like the variables, so the
  # preflight shows the numbers the run will use.
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) dry_run=1 ;;
      --train-iters) TRAIN_ITERS=$2; shift ;;
      --micro-batch-size) MICRO_BATCH=$2; shift ;;
      --global-batch-size) GLOBAL_BATCH=$2; shift ;;
      --seq-length) SEQ_LEN=$2; shift ;;
      *) passthrough+=("$1") ;;
    esac
    shift
  done
  local repo=$HOPE_REPO
  if [ -z "${PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
  fi

  HOPE_SLURM=""
  _hope_slurm_layout
  local ngpu
  ngpu=$(_hope_gpu_count)
  : "${GPUS_PER_NODE:=$([ "$ngpu" -gt 0 ] && echo "$ngpu" || echo "$DEF_GPUS_PER_NODE")}"
  : "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}"
  GPUS_PER_NODE=${GPUS_PER_NODE%%(*}  # SLURM may write "8(x2)"

  CONFIG=${CONFIG:-$DEF_CONFIG}
  [ "$dry_run" = 1 ] || [ -f "$CONFIG" ] || hope_die "CONFIG '$CONFIG' does not exist; set CONFIG to a file under configs/hope/."
  [ -f "$CONFIG" ] || echo "warning: CONFIG '$CONFIG' does not exist yet; the preflight uses the launcher's defaults." >&2
  eval "$(_hope_read_config "$CONFIG")"

  local tp=${TP:-$DEF_TP} pp=${PP:-$DEF_PP}
  local micro=${MICRO_BATCH:-${CFG_MICRO_BATCH_SIZE:-$DEF_MICRO}}
  local gbs=${GLOBAL_BATCH:-${CFG_GLOBAL_BATCH_SIZE:-$DEF_GLOBAL}}
  local seq=${SEQ_LEN:-${CFG_SEQ_LENGTH:-$DEF_SEQ}}
  local iters=${TRAIN_ITERS:-${CFG_TRAIN_ITERS:-$DEF_ITERS}}
  local layers=${CFG_NUM_LAYERS:-$DEF_LAYERS} hidden=${CFG_HIDDEN_SIZE:-$DEF_HIDDEN}
  local variant=${CFG_HOPE_VARIANT:-hope}
  local world=$((GPUS_PER_NODE * NNODES))
  [ $((world % (tp * pp))) -eq 0 ] || hope_die "world size $world (GPUS_PER_NODE=$GPUS_PER_NODE x NNODES=$NNODES) is not divisible by TP=$tp x PP=$pp; change TP/PP or the node count."
  local dp=$((world / (tp * pp)))
  local gbs_note=""
  if [ "${DEF_ROUND_GLOBAL:-0}" = 1 ] && [ -z "${GLOBAL_BATCH:-}" ] && [ $((gbs % (micro * dp))) -ne 0 ]; then
    gbs_note=" (rounded up from $gbs to a multiple of micro x DP)"
    gbs=$(( (gbs + micro * dp - 1) / (micro * dp) * micro * dp ))
  fi
  [ $((gbs % (micro * dp))) -eq 0 ] || hope_die "GLOBAL_BATCH=$gbs is not divisible by MICRO_BATCH=$micro x DP=$dp; set GLOBAL_BATCH to a multiple of $((micro * dp))."
  [ "$NODE_RANK" -lt "$NNODES" ] || hope_die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES."

  # Precision: BF16 by default on GPUs, FP32 on CPU; FP8=1 adds Transformer Engine's hybrid recipe (E4M3 fwd, E5M2 bwd).
  local bf16=${BF16:-$DEF_BF16} fp8=${FP8:-0} impl=${TRANSFORMER_IMPL:-}
  if [ -z "$impl" ]; then
    if [ "$fp8" = 1 ]; then impl=transformer_engine
    elif "$PYTHON" -c "import transformer_engine.pytorch" >/dev/null 2>&1; then impl=transformer_engine
    else impl=local; fi
  fi
  [ "$fp8" != 1 ] || [ "$impl" = transformer_engine ] || hope_die "FP8=1 needs TRANSFORMER_IMPL=transformer_engine (pip install -e '.[gpu]')."

  DATA_PATH=${DATA_PATH:-$DEF_DATA_PATH}
  TOKENIZER_MODEL=${TOKENIZER_MODEL:-$DEF_TOKENIZER}
  CHECKPOINT_DIR=${CHECKPOINT_DIR:-$DEF_CKPT}
  TENSORBOARD_DIR=${TENSORBOARD_DIR:-$CHECKPOINT_DIR/tensorboard}

  local cmd=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK"
             --nproc-per-node "$GPUS_PER_NODE" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
             -m hope_megatron.train --config "$CONFIG"
             --tensor-model-parallel-size "$tp" --pipeline-model-parallel-size "$pp"
             --micro-batch-size "$micro" --global-batch-size "$gbs" --seq-length "$seq" --train-iters "$iters"
             --transformer-impl "$impl"
             --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" --tensorboard-dir "$TENSORBOARD_DIR")
  if [ "${MOCK_DATA:-0}" = 1 ]; then
    cmd+=(--mock-data)
  else
    # shellcheck disable=SC2206  # a blend is several words on purpose
    local blend=($DATA_PATH)
    cmd+=(--data-path "${blend[@]}" --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER_MODEL")
    [ -z "${DATA_CACHE_PATH:-}" ] || cmd+=(--data-cache-path "$DATA_CACHE_PATH")
  fi
  [ "$bf16" != 1 ] || cmd+=(--bf16)
  [ "$fp8" != 1 ] || cmd+=(--fp8-format hybrid --fp8-recipe delayed --fp8-amax-history-len 1024 --fp8-amax-compute-algo max)
  [ -z "${VPP_LAYERS:-}" ] || cmd+=(--num-layers-per-virtual-pipeline-stage "$VPP_LAYERS")
  local sp=${SEQUENCE_PARALLEL:-${DEF_SEQUENCE_PARALLEL:-0}}
  [ "$tp" -gt 1 ] || sp=0  # sequence parallelism only exists with TP > 1
  [ "$sp" != 1 ] || cmd+=(--sequence-parallel)
  # FSDP=1: megatron-core's torch-FSDP2 wrapper (ZeRO-3) in place of DDP; it shards the optimizer state itself
  local fsdp=${FSDP:-0} dopt
  if [ "$fsdp" = 1 ]; then
    [ "${DISTRIBUTED_OPTIMIZER:-0}" != 1 ] || hope_die "FSDP=1 already shards the optimizer state; drop DISTRIBUTED_OPTIMIZER=1."
    [ "$pp" = 1 ] || hope_die "FSDP=1 runs without pipeline stages; set PP=1 or drop FSDP=1."
    dopt=0
    cmd+=(--use-torch-fsdp2)
  else
    dopt=${DISTRIBUTED_OPTIMIZER:-${DEF_DISTRIBUTED_OPTIMIZER:-$([ "$dp" -gt 1 ] && echo 1 || echo 0)}}
  fi
  [ "$dopt" != 1 ] || cmd+=(--use-distributed-optimizer)
  [ -z "${RECOMPUTE:-}" ] || cmd+=(--recompute-granularity "$RECOMPUTE")
  [ -z "${LOG_INTERVAL:-}" ] || cmd+=(--log-interval "$LOG_INTERVAL")
  [ -z "${SAVE_INTERVAL:-}" ] || cmd+=(--save-interval "$SAVE_INTERVAL")
  [ -z "${EVAL_INTERVAL:-}" ] || cmd+=(--eval-interval "$EVAL_INTERVAL")
  cmd+=("${DEF_EXTRA[@]}" "${passthrough[@]}")

  # Preflight estimate (design.md pain point 13): FLOPs/token ~ 6N (dense weights, fwd+bwd) + the memory inner loop
  # (hope_math §3.7: ~15 r·d_h² MACs per memory, head and token, x2 FLOPs x3 fwd+bwd, 5 memories with self-mod, 1
  # without) for H/T/D mixers, or causal attention 6·L·S·D for attention variants. Step time = FLOPs / (world·peak·MFU).
  local params=${MODEL_PARAMS:-$DEF_PARAMS} peak=${PEAK_FLOPS:-989e12} mfu=${ASSUMED_MFU:-0.35}
  local nmem=5
  [ "${CFG_SELF_MOD:-True}" != False ] || nmem=1
  local est
  est=$(awk -v N="$params" -v L="$layers" -v D="$hidden" -v S="$seq" -v B="$gbs" -v W="$world" -v P="$peak" \
            -v M="$mfu" -v V="$variant" -v K="$nmem" -v I="$iters" 'BEGIN {
      tok = B * S; per = 6 * N;
      if (V == "transformer" || V == "hope_attention" || V == "swa") per += 6 * L * S * D;
      else per += 90 * K * D * 64 * L;
      f = per * tok; t = f / (W * P * M);
      printf "%.3e|%.2f|%.1f|%.3e", f, t, t * I / 3600, tok * I }')
  local flops step_s hours total_tok
  IFS='|' read -r flops step_s hours total_tok <<<"$est"
  _hope_memory_preflight "$world" "${cmd[@]}"

  echo "================ hope_megatron preflight ($(basename "$0")) ================"
  echo "config            $CONFIG (variant ${variant})"
  echo "rendezvous        nnodes=$NNODES node_rank=$NODE_RANK master=$MASTER_ADDR:$MASTER_PORT${HOPE_SLURM:+ (SLURM $HOPE_SLURM)}"
  echo "world size        $world = $NNODES node(s) x $GPUS_PER_NODE proc(s) per node"
  echo "parallel layout   TP=$tp PP=$pp DP=$dp${VPP_LAYERS:+ VPP layers/stage=$VPP_LAYERS}$([ "$sp" = 1 ] && echo " +sequence-parallel")$([ "$dopt" = 1 ] && echo " +distributed-optimizer")$([ "$fsdp" = 1 ] && echo " +fsdp")"
  echo "batch             micro=$micro global=$gbs (grad-accum steps $((gbs / (micro * dp)))) seq=$seq$gbs_note"
  echo "tokens per step   $((gbs * seq)); iterations $iters; total tokens $total_tok"
  echo "precision         $([ "$fp8" = 1 ] && echo "FP8 hybrid + BF16" || { [ "$bf16" = 1 ] && echo BF16 || echo FP32; }) (transformer-impl $impl)"
  echo "estimate          ${flops} FLOPs/step, ~${step_s} s/step, ~${hours} h total at MFU $mfu of $peak FLOP/s per device (N=$params)"
  [ -z "$HOPE_MEM_LINES" ] || echo "$HOPE_MEM_LINES"
  echo "data              $([ "${MOCK_DATA:-0}" = 1 ] && echo "mock tokens" || echo "$DATA_PATH")"
  echo "tokenizer         $TOKENIZER_MODEL"
  echo "checkpoints       $CHECKPOINT_DIR (resumes from the latest iteration there)"
  echo "env               CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"
  echo "command           ${cmd[*]}"
  echo "============================================================================"
  [ -z "$HOPE_MEM_REFUSAL" ] || hope_die "$HOPE_MEM_REFUSAL"
  if [ "$dry_run" = 1 ]; then
    echo "dry run: nothing launched"
    return 0
  fi
  [ "${MOCK_DATA:-0}" = 1 ] || _hope_check_data
  export CUDA_DEVICE_MAX_CONNECTIONS=1      # TP/SP comm-compute overlap ordering (Megatron requirement)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  exec "${cmd[@]}"
}
