"""Issue 40, "No silently wrong result, round 4": nothing overwritten. scripts/train_cpt.py's
``--result-json`` and ``--output-dir`` may not point into the notebooks' outputs, at a saved folder or
at a file that is not a RESULT unless ``--allow-overwrite`` says so, and ``--fresh`` (and
``train_resumable(resume=False)``) keeps every earlier run's checkpoints. Each case test fails on
ebb1ba7 (``own`` marks the cases found while fixing)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import load_train_script

RESULT = {"workload": "scale", "gpus": 1, "tokens_per_s": 1.0, "global_batch": 4, "losses": [1.0], "final_loss": 1.0}


def _refused_before_start(monkeypatch, flags: list[str], match: str) -> None:
    """main() must stop with ``match`` before any process starts or model loads."""
    script = load_train_script()

    def started(*args, **kwargs):
        raise AssertionError("the run started although its paths would overwrite something")

    monkeypatch.setattr(script, "start_processes", started)
    with pytest.raises(SystemExit, match=match):
        script.main(["--tiny", *flags])


# --- case 4: --result-json / --output-dir into the notebooks' outputs ------------------------------


@pytest.mark.parametrize("name", ["05_result.json", "05_train_result.json"])
def test_case04_result_json_into_the_notebooks_outputs_is_refused(isolated_root, monkeypatch, name):
    """--result-json outputs/05_result.json overwrote notebook 05's result with no warning; later notebooks
    then called the file cut off."""
    outputs = isolated_root / "outputs"
    outputs.mkdir()
    (outputs / name).write_text(json.dumps({"from": "notebook 05"}))
    _refused_before_start(monkeypatch, ["--result-json", str(outputs / name)],
                          rf"^train_cpt.py: --result-json .*outputs/{name}: that is (the results of notebook "
                          r"05_training|notebook 05_training's train_result).*this run would overwrite what a notebook "
                          r"wrote.*or pass --allow-overwrite if you mean it")
    assert json.loads((outputs / name).read_text()) == {"from": "notebook 05"}


def test_case04_output_dir_into_a_notebook_artifact_is_refused(isolated_root, monkeypatch):
    """--output-dir outputs/05_adapter would have put checkpoints/, adapter/ and result.json into
    notebook 05's adapter folder (and moved its files to earlier-runs/)."""
    _refused_before_start(monkeypatch, ["--output-dir", str(isolated_root / "outputs" / "05_adapter")],
                          r"--output-dir .*05_adapter: that is notebook 05_training's adapter \(05_adapter\)")
    _refused_before_start(monkeypatch, ["--output-dir", str(isolated_root / "outputs")],
                          r"--output-dir .*outputs: that is the notebooks' outputs folder itself")


def test_case04_allow_overwrite_lets_the_user_say_so(isolated_root):
    """The user may say so: --allow-overwrite passes these paths, and the default paths pass anyway."""
    script = load_train_script()
    outputs = isolated_root / "outputs"
    args = script.parse_args(["--tiny", "--result-json", str(outputs / "05_result.json"), "--allow-overwrite"])
    assert script.overwrite_problems(args, outputs / "05_adapter") == []
    args = script.parse_args(["--tiny"])
    assert script.overwrite_problems(args, isolated_root / args.output_dir) == []


# --- case 4: --fresh run twice after a killed run -------------------------------------------------------


def _checkpoint(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"step %d" % step)
    return path


def test_case04_fresh_twice_keeps_the_killed_runs_only_checkpoint(tmp_path, capsys):
    """--fresh run twice after a killed run deleted the killed run's only checkpoint; the message said
    only 'Moved ... to checkpoints.previous'."""
    from helpers.checkpoints import set_aside_run

    checkpoints = tmp_path / "train_cpt" / "checkpoints"
    _checkpoint(checkpoints, 3)  # the killed run's only checkpoint
    set_aside_run(checkpoints)  # first --fresh
    first = capsys.readouterr().out
    assert "To resume one of them later, move its checkpoint-* folders back into" in first
    time.sleep(0.01)
    _checkpoint(checkpoints, 2)  # the first fresh run's checkpoint
    previous = set_aside_run(checkpoints)  # second --fresh
    message = capsys.readouterr().out
    assert sorted(p.name for p in previous.iterdir()) == ["checkpoint-2"]
    kept = [p for p in checkpoints.parent.iterdir() if p.name.startswith("checkpoints.previous-")]
    assert len(kept) == 1 and (kept[0] / "checkpoint-3" / "adapter_model.safetensors").read_bytes() == b"step 3"
    assert f"The run set aside before it was kept, as train_cpt/{kept[0].name}." in message
    _checkpoint(checkpoints, 5)
    set_aside_run(checkpoints)  # a third: every run is still there
    assert sum(1 for p in checkpoints.parent.iterdir() if p.name.startswith("checkpoints.previous")) == 3


# --- own cases: overwritten files of the same class ---------------------------------------------------


def test_own_result_json_that_is_the_baseline_result_is_refused(tmp_path, monkeypatch):
    """Own case: --result-json r.json --baseline-result r.json replaced the baseline by the run compared
    with it, so the comparison could never be made again."""
    baseline = tmp_path / "one.json"
    baseline.write_text(json.dumps(RESULT))
    _refused_before_start(monkeypatch, ["--baseline-result", str(baseline), "--result-json", str(baseline),
                                        "--output-dir", str(tmp_path / "run")],
                          r"--result-json .*one.json: it is the --baseline-result this run compares with")
    assert json.loads(baseline.read_text()) == RESULT


def test_own_result_json_naming_a_file_that_is_not_a_result_is_refused(tmp_path, monkeypatch):
    """Own case: --result-json naming an existing file that is not a RESULT (a config, notes, a notebook's
    JSON kept elsewhere) replaced it without a word."""
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"my": "notes"}))
    _refused_before_start(monkeypatch, ["--result-json", str(notes), "--output-dir", str(tmp_path / "run")],
                          r"--result-json .*notes.json: that file exists and is not the RESULT of a train_cpt.py run")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(RESULT))  # an earlier RESULT may be replaced: that is what the flag is for
    script = load_train_script()
    assert script.overwrite_problems(script.parse_args(["--tiny", "--result-json", str(earlier)]), tmp_path / "r") == []


def test_own_output_dir_inside_a_saved_adapter_is_refused(tmp_path, monkeypatch):
    """Own case: --output-dir pointing into a saved adapter (train_cpt.py's adapter/, with its
    files.sha256.json) wrote checkpoints into it, and the adapter then failed its own check."""
    adapter = tmp_path / "train_cpt" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "files.sha256.json").write_text(json.dumps({"files": {}}))
    _refused_before_start(monkeypatch, ["--output-dir", str(adapter / "more")],
                          r"--output-dir .*adapter/more: that is inside .*adapter, a saved folder that records")
    assert sorted(os.listdir(adapter)) == ["files.sha256.json"]
