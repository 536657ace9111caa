#!/usr/bin/env bash
# Run bench_cpt.py on a CUDA machine that lacks unsloth & co. (the project's device machine), from the
# repo root. The packages come from the lead's offline bundle .gpu-bundle/site.tgz (built by
# ../shared/tools/gpu-bundle.sh; carry .gpu-bundle with the call). Extra arguments go to bench_cpt.py.
#   set -o pipefail; bash benchmarks/run_on_device.sh 2>&1 | tee $OUT/log
set -euo pipefail
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p .gpu-site "$OUT_DIR"
tar xzf .gpu-bundle/site.tgz -C .gpu-site
export PYTHONPATH=$PWD/.gpu-site/site PATH=$PWD/.gpu-site/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv || true
nproc; free -g | head -2; df -h /tmp | tail -1
python3 benchmarks/bench_cpt.py --deadline-s "${DEADLINE_S:-550}" --out-dir "$OUT_DIR" "$@"
