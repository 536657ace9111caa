"""``CPT_OUTPUTS``: the artifacts' folder may live outside the project (Google Drive on Colab, where
every notebook gets a runtime of its own), with manifests and ``require`` working unchanged there."""

from __future__ import annotations

import pytest

from helpers.artifacts import MissingArtifactError, read_manifest, require, save_outputs
from helpers.profiles import CPU_SMOLLM2
from helpers.support.paths import artifact_path, cache_dir, outputs_dir, outputs_location, relative


def test_default_is_outputs_under_the_root(tmp_path):
    assert outputs_location() == tmp_path / "outputs"
    assert outputs_dir() == tmp_path / "outputs"


def test_cpt_outputs_moves_every_artifact_manifest_and_cache(tmp_path, monkeypatch):
    shared = tmp_path / "drive" / "MyDrive" / "cpt-raw-text" / "outputs"
    monkeypatch.setenv("CPT_OUTPUTS", str(shared))
    assert outputs_dir() == shared and shared.is_dir()
    assert artifact_path("adapter") == shared / "05_adapter"
    assert cache_dir() == shared / "cache"
    save_outputs(CPU_SMOLLM2, {"before": {"perplexity": 9.0}})
    assert (shared / "03_before.json").is_file() and (shared / "manifests" / "before.json").is_file()
    assert read_manifest("before")["notebook"] == "03_inference_before_training"
    assert require("before") == shared / "03_before.json"
    assert not (tmp_path / "outputs").exists()  # nothing written under the project


def test_a_relative_cpt_outputs_is_taken_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where the kernels run
    monkeypatch.setenv("CPT_OUTPUTS", "shared-outputs")
    assert outputs_location() == tmp_path / "shared-outputs"


def test_paths_in_cpt_outputs_print_without_the_absolute_folder(tmp_path, monkeypatch):
    shared = tmp_path.parent / f"{tmp_path.name}-shared"
    monkeypatch.setenv("CPT_OUTPUTS", str(shared))
    assert relative(shared / "05_adapter") == "$CPT_OUTPUTS/05_adapter"
    assert relative(shared) == "$CPT_OUTPUTS"
    assert relative(tmp_path / "notebooks" / "x.ipynb") == "notebooks/x.ipynb"


def test_missing_in_cpt_outputs_names_the_notebook_and_the_folder(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("CPT_OUTPUTS", str(shared))
    with pytest.raises(MissingArtifactError) as info:
        require("adapter")
    message = str(info.value)
    assert "notebooks/05_training.ipynb" in message
    assert f"05_adapter is missing from {shared} (from CPT_OUTPUTS)" in message


def test_missing_in_the_default_folder_says_how_separate_runtimes_share_it(tmp_path):
    with pytest.raises(MissingArtifactError) as info:
        require("adapter")
    message = str(info.value)
    assert message.startswith("outputs/05_adapter is missing. Run notebooks/05_training.ipynb first")
    assert "CPT_OUTPUTS" in message and "Google Drive" in message
    assert str(tmp_path) not in message
