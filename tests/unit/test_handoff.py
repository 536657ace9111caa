"""helpers.handoff: a notebook in a fresh runtime rebuilds the cheap inputs it lacks (05: notebook 02's
training rows, in seconds) and says so; the expensive ones stay required."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO_ROOT

from helpers.profiles import CPU_SMOLLM2


@pytest.fixture
def sample_root(tmp_path):
    """A project root holding the first 40 stories of the shipped sample (the loader reads it from the root)."""
    folder = tmp_path / "data" / "tinystories-sample"
    folder.mkdir(parents=True)
    lines = (REPO_ROOT / "data" / "tinystories-sample" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    return tmp_path


def notebook_02_rows(tokenizer, profile):
    """Notebook 02's own cells: load the sample, drop empty rows, append EOS, build the rows."""
    from datasets import load_dataset

    from helpers.data import build_train_dataset, local_sample_files

    dataset = load_dataset("json", data_files=str(local_sample_files(profile)["train"]), split="train")
    dataset = dataset.filter(lambda row: bool(row["text"].strip()))
    dataset = dataset.map(lambda batch: {"text": [t + tokenizer.eos_token for t in batch["text"]]}, batched=True)
    return build_train_dataset(dataset, tokenizer, profile)[0], dataset


def test_missing_dataset_is_rebuilt_as_notebook_02_builds_it_and_said_so(sample_root, tokenizer, capsys):
    from helpers.artifacts import read_manifest
    from helpers.handoff import training_data

    profile = CPU_SMOLLM2
    train, text = training_data(profile, tokenizer)
    said = capsys.readouterr().out
    assert "Notebook 02's 02_dataset, 02_text_dataset, 02_data_stats.json are not in outputs/" in said
    assert "Rebuilding them here with 02's steps" in said and "saved to outputs/02_dataset" in said
    expected_rows, expected_text = notebook_02_rows(tokenizer, profile)
    assert train["input_ids"] == expected_rows["input_ids"]
    assert text["text"] == expected_text["text"]
    manifest = read_manifest("dataset")
    assert manifest["notebook"] == "02_data_prep" and manifest["data"]["documents"] == 40
    assert manifest["data"]["source"] == "local sample: data/tinystories-sample/train.jsonl"

    again, _ = training_data(profile, tokenizer)  # present now: read, not rebuilt
    assert "Rebuilding" not in capsys.readouterr().out and again["input_ids"] == train["input_ids"]


def test_a_partly_missing_unit_is_rebuilt_whole(sample_root, tokenizer, capsys):
    from helpers.handoff import training_data

    training_data(CPU_SMOLLM2, tokenizer)
    shutil.rmtree(sample_root / "outputs" / "02_text_dataset")
    capsys.readouterr()
    training_data(CPU_SMOLLM2, tokenizer)
    assert "Notebook 02's 02_text_dataset is not in outputs/" in capsys.readouterr().out


def test_the_adapter_is_required_not_rebuilt(sample_root, monkeypatch):
    from helpers.artifacts import MissingArtifactError, require

    shared = sample_root / "drive-outputs"
    monkeypatch.setenv("CPT_OUTPUTS", str(shared))
    with pytest.raises(MissingArtifactError, match=r"05_adapter is missing from .*drive-outputs \(from CPT_OUTPUTS\)\. "
                                                   r"Run notebooks/05_training\.ipynb first"):
        require("adapter")
