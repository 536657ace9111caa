"""Tests for helpers.support.paths: the project root, outputs/, artifacts and printable paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.artifacts import MissingArtifactError, ProvenanceError, require
from helpers.support import paths
from helpers.support.paths import ARTIFACTS, artifact_path, cache_dir, outputs_dir, project_root, relative


def test_project_root_follows_cpt_root(tmp_path):
    assert project_root() == tmp_path.resolve()


def test_project_root_resolves_a_relative_cpt_root(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CPT_ROOT", "proj")
    assert project_root() == (tmp_path / "proj").resolve()
    assert project_root().is_absolute()


def test_project_root_searches_upwards_from_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("CPT_ROOT")
    root = tmp_path / "repo"
    (root / "helpers").mkdir(parents=True)
    (root / "pyproject.toml").write_text("", encoding="utf-8")
    (root / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(root / "notebooks" / "deep")
    assert project_root() == root.resolve()


def test_project_root_falls_back_to_the_package_parent(tmp_path, monkeypatch):
    monkeypatch.delenv("CPT_ROOT")
    monkeypatch.chdir(tmp_path)  # no pyproject.toml + helpers/ anywhere above
    assert project_root() == Path(paths.__file__).resolve().parents[2]


def test_empty_cpt_root_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("CPT_ROOT", "")
    monkeypatch.chdir(tmp_path)
    assert project_root() == Path(paths.__file__).resolve().parents[2]


def test_outputs_dir_is_created(tmp_path):
    assert not (tmp_path / "outputs").exists()
    assert outputs_dir() == tmp_path / "outputs"
    assert (tmp_path / "outputs").is_dir()


def test_cache_dir_default_and_override(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "outputs" / "cache"
    assert cache_dir().is_dir()
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere").is_dir()


def test_artifact_path_for_every_registered_artifact(tmp_path):
    for name, (relpath, producer) in ARTIFACTS.items():
        assert artifact_path(name) == tmp_path / "outputs" / relpath
        assert producer


def test_artifact_path_unknown_name_lists_known_ones():
    with pytest.raises(KeyError) as info:
        artifact_path("nope")
    assert "nope" in str(info.value)
    assert "adapter" in str(info.value) and "train_result" in str(info.value)


@pytest.mark.parametrize(
    "name, notebook",
    [("adapter", "05_training"), ("dataset", "02_data_prep"), ("model_info", "01_load_quantized_model")],
)
def test_require_missing_names_the_producing_notebook(tmp_path, name, notebook):
    with pytest.raises(MissingArtifactError) as info:
        require(name)
    message = str(info.value)
    assert f"notebooks/{notebook}.ipynb" in message
    assert f"outputs/{ARTIFACTS[name][0]} is missing" in message
    assert str(tmp_path) not in message  # no absolute local paths in notebook output


def test_missing_artifact_error_is_a_file_not_found_error():
    with pytest.raises(FileNotFoundError):
        require("after")


def test_require_returns_existing_file_and_folder(tmp_path):
    from helpers.artifacts import save_outputs
    from helpers.profiles import CPU_SMOLLM2

    outputs = tmp_path / "outputs"
    save_outputs(CPU_SMOLLM2, {"dataset": lambda folder: (folder / "data.arrow").write_bytes(b"rows")})
    save_outputs(CPU_SMOLLM2, {"before": {"perplexity": 9.0}})
    assert require("dataset") == outputs / "02_dataset"
    assert require("before") == outputs / "03_before.json"


def test_require_passes_the_shared_memory_log_without_manifest_and_refuses_a_notebook_artifact(tmp_path, capsys):
    """Every notebook's artifact has a manifest: one without is refused, naming the notebook to re-run.
    Only the memory log that every notebook appends to is passed through, with a note."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "memory_stages.json").write_text("[]", encoding="utf-8")
    assert require("memory_stages") == tmp_path / "outputs" / "memory_stages.json"
    assert "has no manifest, so where it came from is not checked" in capsys.readouterr().out
    (tmp_path / "outputs" / "08_merged").mkdir()
    with pytest.raises(ProvenanceError, match=r"has no manifest .* Re-run notebooks/08_save_merge_export.ipynb"):
        require("merged")


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_outputs_that_is_not_a_folder_is_explained(tmp_path, kind):
    """`outputs` being a file gave a raw FileExistsError."""
    if kind == "file":
        (tmp_path / "outputs").write_text("not a folder", encoding="utf-8")
        expected = r"outputs is a file, not a folder.*Rename or remove that file.*CPT_ROOT"
    else:
        (tmp_path / "outputs").symlink_to(tmp_path / "nowhere")
        expected = r"outputs is a link to a folder that does not exist"
    with pytest.raises(paths.OutputsNotAFolderError, match=expected):
        outputs_dir()
    with pytest.raises(NotADirectoryError):
        artifact_path("before")


def test_outputs_dir_removes_what_a_killed_save_left_once_per_process(tmp_path, capsys):
    """A process killed while saving the adapter or converting the model left hidden .tmp-* folders of
    100-235 MB that were never cleaned."""
    stale = tmp_path / "outputs" / ".05_adapter.tmp-999999999-abcd"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    paths._cleaned.discard(str(tmp_path / "outputs"))
    outputs_dir()
    assert not stale.exists()
    assert "removed .05_adapter.tmp-999999999-abcd" in capsys.readouterr().out


def test_require_unknown_artifact_is_a_key_error():
    with pytest.raises(KeyError):
        require("nope")


@pytest.mark.parametrize(
    "make_path",
    [
        lambda root: root / "outputs" / "x.json",
        lambda root: root,
        lambda root: root / "a" / ".." / "b.txt",
        lambda root: Path("/"),
        lambda root: Path("/usr/lib/something.so"),
        lambda root: root.parent / "sibling" / "file.txt",
        lambda root: Path("relative/file.txt"),
        lambda root: str(root / "as-string.txt"),
    ],
)
def test_relative_never_returns_an_absolute_path(tmp_path, make_path):
    result = relative(make_path(tmp_path))
    assert isinstance(result, str)
    assert not os.path.isabs(result)
    assert str(tmp_path) not in result


def test_relative_inside_and_outside_the_root(tmp_path, monkeypatch):
    assert relative(tmp_path / "outputs" / "x.json") == os.path.join("outputs", "x.json")
    assert relative(tmp_path / "a" / ".." / "b.txt") == "b.txt"
    assert relative(tmp_path.parent / "elsewhere" / "file.txt") == ".../file.txt"
    monkeypatch.chdir(tmp_path)
    assert relative("data/train.jsonl") == os.path.join("data", "train.jsonl")


def test_relative_through_a_symlinked_root(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "outputs").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("CPT_ROOT", str(link))
    assert relative(real / "outputs" / "f.json") == os.path.join("outputs", "f.json")
    assert relative(link / "outputs" / "f.json") == os.path.join("outputs", "f.json")
