#!/usr/bin/env bash
# Run the whole notebook series on one CUDA GPU in less wall time than scripts/gpu_nbval.sh, with the
# same checks: notebooks 00-06 in order in one nbval process (each reads what the one before wrote),
# then 07-10, which read only 00-06's outputs (see the `require(...)` calls), as parallel nbval
# processes, each in its own copy of the project so that no two share an outputs/ folder.
#
#   CPT_PROFILE=gpu-mistral7b scripts/gpu_series.sh OUT_DIR [GROUP ...]
#
# GROUP: notebooks of one later process, comma-separated numbers (default: "07" "08" "09" "10").
# Writes OUT_DIR/first/ (00-06) and OUT_DIR/group-<numbers>/ (env.txt, nbval.log, executed/ each, from
# scripts/gpu_nbval.sh), then OUT_DIR/executed/ with every executed notebook and OUT_DIR/summary.txt
# with each process's pytest summary line and wall time. Exits non-zero if any process failed.
# Timing-sensitive cells (09's packing speed-up) share the GPU with the other groups: their numbers
# are a lower bound, the asserts only compare settings measured side by side in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:?usage: scripts/gpu_series.sh OUT_DIR [GROUP ...]}" && cd "$1" && pwd)
shift
GROUPS_=("$@")
[ ${#GROUPS_[@]} -gt 0 ] || GROUPS_=("07" "08" "09" "10")
export CPT_COMMIT=${CPT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

notebooks_for() {  # "07,08" -> notebooks/07_*.ipynb notebooks/08_*.ipynb
  local n
  for n in ${1//,/ }; do ls notebooks/${n}_*.ipynb; done
}

status=0
start=$(date +%s)
bash scripts/gpu_nbval.sh "$OUT_DIR/first" $(notebooks_for 00,01,02,03,04,05,06) || status=$?
echo "00-06: $(tail -n 2 "$OUT_DIR/first/nbval.log" | head -n 1) ($(( $(date +%s) - start )) s)" | tee "$OUT_DIR/summary.txt"
[ "$status" = 0 ] || { echo "00-06 failed: the later notebooks need their outputs" | tee -a "$OUT_DIR/summary.txt"; exit "$status"; }

copies=$(mktemp -d)
pids=()
for group in "${GROUPS_[@]}"; do
  copy="$copies/$group"
  mkdir -p "$copy"
  # the project with 00-06's outputs/, a real copy (hard links would let one group change another's
  # files), without git and notebook 05's checkpoints, which no later notebook reads
  tar -c --exclude=./.git --exclude=./outputs/05_trainer . | tar -x -C "$copy"
  (
    cd "$copy"
    t0=$(date +%s)
    CPT_KEEP_OUTPUTS=1 bash scripts/gpu_nbval.sh "$OUT_DIR/group-$group" $(notebooks_for "$group") >/dev/null 2>&1 || rc=$?
    echo "$group: $(tail -n 2 "$OUT_DIR/group-$group/nbval.log" | head -n 1) ($(( $(date +%s) - t0 )) s)" >>"$OUT_DIR/summary.txt"
    exit "${rc:-0}"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
rm -rf "$copies"

mkdir -p "$OUT_DIR/executed"
cp "$OUT_DIR"/first/executed/*.ipynb "$OUT_DIR"/group-*/executed/*.ipynb "$OUT_DIR/executed/" 2>/dev/null || true
echo "series: $(( $(date +%s) - start )) s wall (exit $status)" | tee -a "$OUT_DIR/summary.txt"
exit "$status"
