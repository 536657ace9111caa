#!/usr/bin/env bash
# Run bench_cpt.py on a CUDA machine that lacks unsloth & co. (the project's device machine), from the
# repo root. Needs the offline bundle built by this repo's own scripts/build_gpu_bundle.sh (run it
# where PyPI is reachable: it writes .gpu-bundle/site.tgz; carry .gpu-bundle with the call), and, for
# the default profile gpu-mistral7b without network, the fake hub of
# ../shared/tools/device-fake-hub-mistral7b.sh (carry .fakehub; built here on first use).
# Extra arguments go to bench_cpt.py. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.).
set -euo pipefail
[ -f .gpu-bundle/site.tgz ] || { echo "missing .gpu-bundle/site.tgz: run scripts/build_gpu_bundle.sh first and carry .gpu-bundle" >&2; exit 2; }
mkdir -p .gpu-site && tar xzf .gpu-bundle/site.tgz -C .gpu-site
export PYTHONPATH=$PWD/.gpu-site/site:$PWD PATH=$PWD/.gpu-site/site/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -f .fakehub/build.py ]; then python3 .fakehub/build.py .fakehub/tokenizer.model; fi
OUT_DIR=${OUT:-/tmp/bench-out}
python3 benchmarks/bench_cpt.py --out-dir "$OUT_DIR" "$@"
