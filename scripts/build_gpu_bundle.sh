#!/usr/bin/env bash
# Build an offline bundle of the Python packages the GPU path needs on a CUDA machine that already
# has PyTorch, transformers, peft and accelerate (a CUDA container image, an air-gapped runner), as
# one tarball small enough to copy around (about 21 MB).
#
#   scripts/build_gpu_bundle.sh [OUT_DIR]          (default: .gpu-bundle, git-ignored)
#
# Run it on any machine that reaches PyPI; it downloads Linux x86_64 wheels for the target Python
# (GPU_PY_VERSION, default 3.12) without installing anything here. On the CUDA machine, from the repo
# root, scripts/gpu_nbval.sh unpacks it and runs the series; by hand:
#   mkdir -p .gpu-site && tar xzf .gpu-bundle/site.tgz -C .gpu-site
#   export PYTHONPATH=$PWD/.gpu-site/site:$PWD PATH=$PWD/.gpu-site/site/bin:$PATH HF_HUB_OFFLINE=1
# The pins are pyproject.toml's (unsloth 2026.10.9 and its bounds). The machine's own torch,
# transformers, peft, accelerate, numpy and pytest are used as they are: check their versions
# against pyproject.toml (scripts/gpu_nbval.sh prints them).
set -euo pipefail
OUT=${1:-.gpu-bundle}
PY=${GPU_PY_VERSION:-3.12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat="--only-binary=:all: --python-version $PY --implementation cp"
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  plat="$plat --platform $p"
done
pkgs=(
  # the GPU extra of pyproject.toml, and what unsloth needs beyond the CUDA image
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 bitsandbytes==0.50.2
  torchao cut_cross_entropy tyro msgspec "dill<0.4.2" "multiprocess<0.70.20" docstring-parser shtab typeguard
  # helpers' own needs (memory probes)
  nvidia-ml-py psutil
  # nbval and the Jupyter kernel stack
  nbval nbclient ipykernel ipython ipython_pygments_lexers jupyter_client jupyter_core nbformat fastjsonschema
  jsonschema jsonschema_specifications referencing rpds_py traitlets tornado pyzmq comm matplotlib_inline
  nest_asyncio2 parso pexpect ptyprocess prompt_toolkit wcwidth stack_data asttokens executing pure_eval platformdirs
  ${GPU_EXTRA_PKGS:-}
)
python3 -m pip download -q --no-deps $plat -d "$work/wheels" "${pkgs[@]}"
python3 -m pip install -q --no-deps --no-compile $plat --target "$work/site" "$work"/wheels/*.whl
# Drop what the GPU path never imports, to stay far below a 64 MiB transfer limit.
rm -rf "$work/site/studio" "$work/site/jedi" "$work"/site/jedi-* "$work/site/debugpy" "$work"/site/debugpy-*
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda13[02]*' -delete
mkdir -p "$OUT"
tar czf "$OUT/site.tgz" -C "$work" site
du -h "$OUT/site.tgz"
