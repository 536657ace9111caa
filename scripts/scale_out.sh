#!/usr/bin/env bash
# The scale-out check of docs/multi-gpu.md on one machine with 2 GPUs, in one go:
#   1. one GPU, bs 2 x GA 8 (the recipe), no checkpoints        -> OUT_DIR/one.json
#   2. two GPUs (DDP through accelerate), bs 2 x GA 4 per GPU   -> OUT_DIR/two.json (speedup, loss match)
#   3. two GPUs again, checkpoints every SAVE steps, killed (SIGKILL to every process) as soon as the
#      first checkpoint is complete, then relaunched with the same command: it resumes
#                                                                -> OUT_DIR/two-resumed.json
# Every run passes --check-sync (trainable weights bit-identical on every rank after steps 1, 2 and at
# the end). Logs: OUT_DIR/*.log. Needs the bundle and the model (see docs/multi-gpu.md); NVLink
# multicast stays off.
#
#   CPT_RANDOM_WEIGHTS=1 scripts/scale_out.sh OUT_DIR [PROFILE] [MAX_STEPS] [SAVE]
#   (defaults: gpu-mistral7b, 24 steps, a checkpoint every 8)
# Rows are the profile's: gpu-mistral7b packs 2,048-token rows since 2026-11-28 (late); the speed-ups
# recorded before that were measured on padded rows, which CPT_PACKING=0 gives back.
# TRACE_STEP=N profiles optimizer step N of the 1-GPU and the 2-GPU run (every rank; summaries in the
# RESULTs, traces under outputs/scale-out/*/step-trace/). SKIP_RESUME=1 stops after the 2-GPU run.
# For a CPU check of this script: EXTRA_ARGS=--tiny LAUNCH2="torchrun --standalone --nproc_per_node 2"
# KILL_AFTER_S=0 (a 2-process gloo run of the tiny model; checked that way before the GPU run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:?usage: scripts/scale_out.sh OUT_DIR [PROFILE] [MAX_STEPS] [SAVE]}" && cd "$1" && pwd)
PROFILE=${2:-gpu-mistral7b}
STEPS=${3:-24}
SAVE=${4:-8}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
A=(--profile "$PROFILE" --per-device-batch 2 --grad-accum 8 --max-steps "$STEPS" --eval-stories 0 --check-sync ${EXTRA_ARGS:-})
TRACE=()
[ "${TRACE_STEP:-0}" = 0 ] || TRACE=(--trace-step "$TRACE_STEP")
read -r -a TWO <<<"${LAUNCH2:-accelerate launch --config_file configs/ddp.yaml --num_processes 2}"
TWO+=(scripts/train_cpt.py)
runs=outputs/scale-out

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT_DIR/steps.log"; }

if [ -f "$OUT_DIR/one.json" ]; then  # a one-GPU result of the same settings, kept from an earlier call
  say "1 GPU: kept $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['date'], r['steps'], 'steps')" "$OUT_DIR/one.json")"
else
  say "1 GPU"
  CUDA_VISIBLE_DEVICES=0 python3 scripts/train_cpt.py "${A[@]}" --fresh --save-steps 100000 --output-dir $runs/one "${TRACE[@]}" \
    --result-json "$OUT_DIR/one.json" >"$OUT_DIR/one.log" 2>&1
fi
say "2 GPUs"
"${TWO[@]}" "${A[@]}" --fresh --save-steps 100000 --output-dir $runs/two "${TRACE[@]}" --baseline-result "$OUT_DIR/one.json" \
  --result-json "$OUT_DIR/two.json" >"$OUT_DIR/two.log" 2>&1

if [ "${SKIP_RESUME:-0}" = 1 ]; then
  say "done (SKIP_RESUME=1: no kill-and-resume run)"
  grep -h "^RESULT" "$OUT_DIR"/one.log "$OUT_DIR"/two.log >"$OUT_DIR/results.txt" 2>/dev/null || true
  exit 0
fi
say "2 GPUs, to be killed after checkpoint-$SAVE"
ckpt=$runs/killed/checkpoints/checkpoint-$SAVE
setsid "${TWO[@]}" "${A[@]}" --fresh --save-steps "$SAVE" --output-dir $runs/killed >"$OUT_DIR/killed.log" 2>&1 &
leader=$!
# The Trainer writes trainer_state.json near the end of a checkpoint; a few seconds later the run is
# training again, so the kill lands mid-run after a complete checkpoint (a later checkpoint cut off
# by the kill is set aside on resume, which is part of what this checks).
until [ -f "$ckpt/trainer_state.json" ]; do
  kill -0 "$leader" 2>/dev/null || { say "the run ended before checkpoint-$SAVE"; exit 1; }
  sleep 1
done
sleep "${KILL_AFTER_S:-10}"
# torchrun (under accelerate launch) starts each worker in a session of its own, so killing the
# launcher's process group would leave the workers training: kill every process of this run by its
# command line (the launcher and each worker carry the same arguments)
pkill -9 -f -- "--fresh --save-steps $SAVE --output-dir $runs/killed" || true
wait "$leader" 2>/dev/null || true
while pgrep -f -- "--output-dir $runs/killed" >/dev/null; do sleep 1; done
sleep 5  # let the driver release both GPUs
say "killed: $(ls $runs/killed/checkpoints | tr '\n' ' ')"
# the relaunch is the same command without --fresh, which would discard the checkpoint
"${TWO[@]}" "${A[@]}" --save-steps "$SAVE" --output-dir $runs/killed --baseline-result "$OUT_DIR/two.json" \
  --result-json "$OUT_DIR/two-resumed.json" >"$OUT_DIR/resumed.log" 2>&1
say "done"
grep -h "^RESULT" "$OUT_DIR"/one.log "$OUT_DIR"/two.log 2>/dev/null "$OUT_DIR"/resumed.log >"$OUT_DIR/results.txt" || true
