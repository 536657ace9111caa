"""scripts/gpu_series.sh, the GPU series runner, checked on the CPU with a stand-in for
scripts/gpu_nbval.sh that records what it was asked to run (the real one needs a CUDA machine)."""

from __future__ import annotations

import shutil
import subprocess

from conftest import REPO_ROOT

STUB = """#!/usr/bin/env bash
# stand-in for gpu_nbval.sh: copy the notebooks asked for, note what outputs/ held, pass or fail
cd "$(dirname "$0")/.."
OUT_DIR=$1; shift; mkdir -p "$OUT_DIR/executed"
for nb in "$@"; do cp "$nb" "$OUT_DIR/executed/"; done
ls outputs 2>/dev/null > "$OUT_DIR/outputs_seen.txt"
echo "keep=${CPT_KEEP_OUTPUTS:-0} commit=$CPT_COMMIT" > "$OUT_DIR/env_seen.txt"
if [ -n "${FAIL_ON:-}" ] && printf '%s\\n' "$@" | grep -q "$FAIL_ON"; then
  printf 'x\\n==== 1 failed, %s passed ====\\nnbval in 1 s (exit 1)\\n' "$#" > "$OUT_DIR/nbval.log"; exit 1
fi
mkdir -p outputs/made_by_$(basename "$OUT_DIR")
printf 'x\\n==== %s passed ====\\nnbval in 1 s (exit 0)\\n' "$#" > "$OUT_DIR/nbval.log"
"""


def make_project(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    (project / "notebooks").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "gpu_series.sh", project / "scripts")
    (project / "scripts" / "gpu_nbval.sh").write_text(STUB)
    for nb in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        (project / "notebooks" / nb.name).write_text("{}")
    (project / "outputs" / "05_trainer").mkdir(parents=True)  # checkpoints: not copied to the groups
    (project / "outputs" / "05_trainer" / "checkpoint-12").write_text("big")
    return project


def run(project, out, env_extra=None, *groups):
    env = {"PATH": "/usr/bin:/bin", "CPT_COMMIT": "abc1234", **(env_extra or {})}
    return subprocess.run(["bash", "scripts/gpu_series.sh", str(out), *groups], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_first_stage_then_parallel_groups_each_on_a_copy(tmp_path):
    project, out = make_project(tmp_path), tmp_path / "out"
    proc = run(project, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = sorted(p.name[:2] for p in (out / "first" / "executed").iterdir())
    assert first == ["00", "01", "02", "03", "04", "05", "06"]
    assert (out / "first" / "env_seen.txt").read_text().split() == ["keep=0", "commit=abc1234"]
    groups = {"07": 1, "08": 1, "09": 1, "10": 1}
    for group, count in groups.items():
        folder = out / f"group-{group}"
        assert len(list((folder / "executed").iterdir())) == count
        assert (folder / "env_seen.txt").read_text().split()[0] == "keep=1"  # later notebooks keep outputs/
        seen = (folder / "outputs_seen.txt").read_text().split()
        assert "made_by_first" in seen and "05_trainer" not in seen  # 00-06's outputs, not the checkpoints
        assert not [name for name in seen if name.startswith("made_by_group")]  # no group sees another's
    assert len(list((out / "executed").iterdir())) == 11
    summary = (out / "summary.txt").read_text()
    assert summary.count("passed") == 5 and "series:" in summary and "(exit 0)" in summary


def test_a_failing_first_stage_stops_before_the_groups(tmp_path):
    project, out = make_project(tmp_path), tmp_path / "out"
    proc = run(project, out, {"FAIL_ON": "05_training"})
    assert proc.returncode != 0
    assert "00-06 failed" in (out / "summary.txt").read_text()
    assert not list(out.glob("group-*"))


def test_a_failing_group_fails_the_series_but_the_others_finish(tmp_path):
    project, out = make_project(tmp_path), tmp_path / "out"
    proc = run(project, out, {"FAIL_ON": "10_learning"}, "07,08", "10")
    assert proc.returncode != 0
    assert len(list((out / "group-07,08" / "executed").iterdir())) == 2
    assert "1 failed" in (out / "summary.txt").read_text()
