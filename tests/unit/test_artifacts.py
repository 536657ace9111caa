"""Tests for helpers.artifacts: artifacts carry a manifest, require() checks it, a notebook's outputs
are committed as one unit (issue 12, "No silently wrong result").

Each test reproduces a case that used to give a silently wrong result or a raw error; the artifacts
here are small JSON files and folders, written through the same save_outputs the notebooks call.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import artifacts
from helpers.artifacts import (
    CorruptArtifactError,
    ProvenanceError,
    manifest_path,
    read_manifest,
    recover_commits,
    require,
    save_outputs,
)
from helpers.profiles import CPU_SMOLLM2
from helpers.support.files import read_json
from helpers.support.paths import artifact_path, outputs_dir

PROFILE = CPU_SMOLLM2


def forget_inputs() -> None:
    """Forget the artifacts read so far in this process, as a new kernel would."""
    artifacts._seen.clear()


@pytest.fixture(autouse=True)
def fresh_inputs():
    """Each test starts as a fresh kernel: no artifact read yet."""
    forget_inputs()
    yield
    forget_inputs()


def own_text(tmp_path, documents=10):
    folder = tmp_path / "my_text"
    folder.mkdir(exist_ok=True)
    for i in range(documents):
        (folder / f"doc{i}.txt").write_text(f"Document {i}: a few words of my own.", encoding="utf-8")
    return PROFILE.replace(text_dir=str(folder))


def write_folder(content: dict):
    def write(folder):
        for name, text in content.items():
            (folder / name).write_text(text, encoding="utf-8")
    return write


def save_02(profile, rows="A"):
    return save_outputs(profile, {
        "dataset": write_folder({"data.arrow": f"rows {rows}", "state.json": json.dumps({"rows": rows})}),
        "text_dataset": write_folder({"data.arrow": f"text {rows}"}),
        "data_stats": {"rows": rows},
    }, data={"source": f"test {rows}"})


def test_saved_artifacts_have_manifests_and_pass_require(tmp_path):
    paths = save_02(PROFILE)
    assert paths["dataset"] == tmp_path / "outputs" / "02_dataset"
    manifest = read_manifest("dataset")
    assert manifest["notebook"] == "02_data_prep" and manifest["data"] == {"source": "test A"}
    assert set(manifest["files"]) == {"data.arrow", "state.json"}
    assert manifest["run"]["settings"]["max_seq_length"] == PROFILE.max_seq_length
    assert manifest["run"]["data"]["kind"] == "TinyStories"
    assert require("dataset", PROFILE) == paths["dataset"]
    assert require("data_stats", PROFILE) == paths["data_stats"]
    assert str(tmp_path) not in manifest_path("dataset").read_text()  # no absolute local paths
    assert sorted(p.name for p in outputs_dir().iterdir()) == ["02_data_stats.json", "02_dataset", "02_text_dataset",
                                                               "manifests"]


def test_an_artifact_of_other_data_is_refused_naming_the_notebook(tmp_path):
    """Issue 12: TinyStories series, then 02/05/06 with CPT_TEXT_DIR: 06 compared a 'before' measured on
    TinyStories with an 'after' on the new text and blamed memorisation. Now 03's result is refused."""
    save_outputs(PROFILE, {"before": {"perplexity": 7.69}})
    with pytest.raises(ProvenanceError) as info:
        require("before", own_text(tmp_path))
    message = str(info.value)
    assert "outputs/03_before.json belongs to another run" in message
    assert "data: then roneneldan/TinyStories train[:2500], now text folder 'my_text' (10 .txt files" in message
    assert "Re-run notebooks/03_inference_before_training.ipynb" in message


def test_a_dataset_of_another_text_folder_content_is_refused(tmp_path):
    """Notebook 05 trained on whatever 02_dataset existed. The text folder's content is part of the run."""
    profile = own_text(tmp_path)
    save_02(profile)
    (tmp_path / "my_text" / "doc0.txt").write_text("Edited since notebook 02 ran.", encoding="utf-8")
    with pytest.raises(ProvenanceError, match=r"data: then text folder 'my_text' .* sha256 \w+\), now text folder"):
        require("dataset", profile)


@pytest.mark.parametrize("change, expected", [
    (dict(max_seq_length=128), "max_seq_length: then 256, now 128"),
    (dict(model_name="smoke:random-llama"), "model: then"),
    (dict(name="gpu-smollm2"), "name: then 'cpu-smollm2', now 'gpu-smollm2'"),
])
def test_settings_that_shape_an_artifact_are_checked(tmp_path, change, expected):
    save_02(PROFILE)
    with pytest.raises(ProvenanceError, match=expected):
        require("dataset", PROFILE.replace(**change))


def test_settings_that_do_not_shape_an_artifact_are_not_checked(tmp_path):
    save_02(PROFILE)
    assert require("dataset", PROFILE.replace(learning_rate=1e-3, prompt="Another prompt"))


def test_an_artifact_made_from_an_earlier_input_is_refused(tmp_path):
    """02 re-ran (new data) after 05: the adapter was trained on the old dataset."""
    save_02(PROFILE, rows="A")
    require("dataset", PROFILE)
    save_outputs(PROFILE, {"train_result": {"steps": 12}})
    forget_inputs()  # a new kernel
    save_02(PROFILE, rows="B")
    forget_inputs()
    with pytest.raises(ProvenanceError, match=r"made from an earlier 02_dataset .* Re-run notebooks/05_training"):
        require("train_result", PROFILE)


def test_a_cut_off_file_is_named(tmp_path):
    paths = save_02(PROFILE)
    arrow = paths["dataset"] / "data.arrow"
    arrow.write_text("rows", encoding="utf-8")
    with pytest.raises(CorruptArtifactError, match=r"outputs/02_dataset/data.arrow is cut off: 4 bytes, 6 when"):
        require("dataset", PROFILE)


def test_a_changed_or_deleted_file_is_named(tmp_path):
    paths = save_02(PROFILE)
    (paths["dataset"] / "data.arrow").write_text("rows Z", encoding="utf-8")  # same size, other bytes
    with pytest.raises(CorruptArtifactError, match=r"data.arrow has changed since it was written"):
        require("dataset", PROFILE)
    (paths["dataset"] / "state.json").unlink()
    with pytest.raises(CorruptArtifactError, match=r"state.json is missing"):
        require("dataset", PROFILE)


def test_files_added_later_are_allowed(tmp_path):
    """datasets writes cache-*.arrow files into a dataset folder loaded from disk."""
    paths = save_02(PROFILE)
    (paths["dataset"] / "cache-1234.arrow").write_text("cache", encoding="utf-8")
    assert require("dataset", PROFILE)


def test_an_artifact_without_manifest_is_refused(tmp_path):
    target = artifact_path("before")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{}", encoding="utf-8")
    with pytest.raises(ProvenanceError, match=r"has no manifest .* Re-run notebooks/03_inference_before_training"):
        require("before", PROFILE)


def test_an_interrupted_unit_save_keeps_the_previous_set(tmp_path):
    """Ctrl-C in 02's save cell left a new 02_dataset beside the old stats (each file was atomic, the
    set was not). Now nothing of the new set is visible until all of it is written."""
    save_02(PROFILE, rows="A")

    def interrupted(folder):
        (folder / "data.arrow").write_text("half", encoding="utf-8")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_outputs(PROFILE, {"dataset": write_folder({"data.arrow": "rows B"}), "text_dataset": interrupted,
                               "data_stats": {"rows": "B"}})
    assert read_json(artifact_path("data_stats")) == {"rows": "A"}
    assert (artifact_path("dataset") / "data.arrow").read_text(encoding="utf-8") == "rows A"
    assert require("dataset", PROFILE) and require("data_stats", PROFILE)
    assert [p.name for p in outputs_dir().iterdir() if p.name.startswith(".")] == []


def test_a_unit_committed_but_not_moved_into_place_is_rolled_forward(tmp_path, monkeypatch):
    """A process killed after the commit point (all files written) but before every artifact was
    moved into place: the next require finishes the move, so the set is the new one, whole."""
    import helpers.artifacts as provenance

    save_02(PROFILE, rows="A")
    calls = []
    real_replace = os.replace

    def killed_midway(src, dst):
        calls.append(dst)
        if str(dst).endswith("02_text_dataset") and ".ready" not in str(dst):
            raise KeyboardInterrupt  # killed after 02_dataset was moved, before 02_text_dataset
        return real_replace(src, dst)

    monkeypatch.setattr(provenance.os, "replace", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_02(PROFILE, rows="B")
    monkeypatch.setattr(provenance.os, "replace", real_replace)
    assert (outputs_dir() / ".commit-02_data_prep.ready").is_dir()
    assert require("data_stats", PROFILE)  # recovers first
    assert read_json(artifact_path("data_stats")) == {"rows": "B"}
    assert (artifact_path("text_dataset") / "data.arrow").read_text(encoding="utf-8") == "text B"
    assert not (outputs_dir() / ".commit-02_data_prep.ready").exists()
    assert recover_commits() == []


def test_an_empty_artifact_never_replaces_a_good_one(tmp_path):
    """A corpus smaller than one block used to replace the good 02_dataset with 0 rows."""
    save_02(PROFILE, rows="A")
    with pytest.raises(ValueError, match=r"Not saving 02_dataset: the folder is empty. The previous version"):
        save_outputs(PROFILE, {"dataset": lambda folder: None, "text_dataset": write_folder({"x": "y"}),
                               "data_stats": {"rows": 0}})
    with pytest.raises(ValueError, match=r"Not saving 02_data_stats.json: it holds no data"):
        save_outputs(PROFILE, {"dataset": write_folder({"x": "y"}), "text_dataset": write_folder({"x": "y"}),
                               "data_stats": {}})
    assert read_json(artifact_path("data_stats")) == {"rows": "A"}


def test_disk_full_in_notebook_02_is_a_disk_full_error(tmp_path):
    """Notebook 02 on a full disk gave a raw OSError [Errno 28]; the previous set survives."""
    import errno

    from helpers.errors import DiskFullError

    save_02(PROFILE, rows="A")

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"Disk full while saving the outputs of 02_data_prep to outputs"):
        save_outputs(PROFILE, {"dataset": full, "text_dataset": write_folder({"x": "y"}), "data_stats": {"rows": 1}})
    assert read_json(artifact_path("data_stats")) == {"rows": "A"}


def test_save_outputs_writes_one_notebook_at_a_time(tmp_path):
    with pytest.raises(ValueError, match="one notebook at a time"):
        save_outputs(PROFILE, {"before": {"a": 1}, "after": {"b": 2}})


def test_adapter_checks_in_require(tmp_path):
    """A half-cut adapter file gave a raw SafetensorError, a deleted one HFValidationError, an adapter
    of another rank 58 size-mismatch lines; require('adapter') names each."""
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    weights = struct.pack("<Q", len(header)) + header + b"\0" * 16

    def adapter(folder):
        (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}), encoding="utf-8")
        (folder / "adapter_model.safetensors").write_bytes(weights)

    save_outputs(PROFILE, {"adapter": adapter})
    assert require("adapter", PROFILE)
    with pytest.raises(ProvenanceError, match="lora_r: then 16, now 8"):
        require("adapter", PROFILE.replace(lora_r=8))
    file = artifact_path("adapter") / "adapter_model.safetensors"
    file.write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CorruptArtifactError, match="adapter_model.safetensors is cut off"):
        require("adapter", PROFILE)
    file.unlink()
    with pytest.raises(CorruptArtifactError, match="adapter_model.safetensors is missing"):
        require("adapter", PROFILE)
