"""Inputs a notebook takes from an earlier one, when that notebook ran in another runtime (or not at all).

On Colab every notebook gets a fresh runtime, so what an earlier notebook wrote is there only when the
notebooks share an outputs folder that outlives a runtime (``CPT_OUTPUTS``, e.g. on Google Drive).
Without it, the rule is:

- **cheap inputs are rebuilt where they are needed**, and the notebook says so: notebook 05's training
  rows are notebook 02's steps (load the text, append EOS, tokenize, pack), which take seconds, so
  :func:`training_data` runs them and saves the result where 02 saves it, with the same manifest;
- **expensive inputs are required**: 05's adapter (minutes of training on a GPU) is read through
  :func:`helpers.artifacts.require`, whose message names the notebook to run and the folder it looked in.
"""

from __future__ import annotations

from .artifacts import recover_commits, require, save_outputs
from .data import append_eos, build_train_dataset, length_summary, load_raw_dataset, tokenize
from .profiles import Profile
from .support.files import text_sha256
from .support.paths import ARTIFACTS, artifact_path, outputs_shown, relative

DATASET_ARTIFACTS = ("dataset", "text_dataset", "data_stats")  # what notebook 02 writes, as one unit


def rebuild_dataset(profile: Profile, tokenizer) -> dict:
    """Run notebook 02's steps and save its three artifacts as 02 does (one unit, same manifest):
    the packed (or truncated) training rows, the stories with EOS as text, and the counts. Returns
    the counts (``data_stats``)."""
    raw, source = load_raw_dataset(profile, split="train")
    with_eos = append_eos(raw, tokenizer.eos_token)
    train_dataset, stats = build_train_dataset(with_eos, tokenizer, profile)
    lengths = [len(ids) for ids in tokenize(with_eos, tokenizer)["input_ids"]]
    stats = {**stats, "length_summary": length_summary(lengths)}
    save_outputs(profile, {
        "dataset": lambda folder: train_dataset.save_to_disk(str(folder)),
        "text_dataset": lambda folder: with_eos.save_to_disk(str(folder)),
        "data_stats": stats,
    }, data={"source": source, "documents": len(with_eos), "text_sha256": text_sha256(with_eos["text"])})
    return stats


def training_data(profile: Profile, tokenizer):
    """Return ``(train_dataset, text_dataset)``: notebook 02's training rows and its stories with EOS.

    When 02's outputs are missing (a fresh runtime that does not share 02's outputs folder), they are
    rebuilt here with 02's steps (:func:`rebuild_dataset`, seconds) and a note says so. Outputs that
    exist are read through :func:`helpers.artifacts.require`, so one made for another run still stops
    with a message naming the notebook to re-run."""
    from datasets import load_from_disk  # deferred: heavy

    recover_commits()
    missing = [name for name in DATASET_ARTIFACTS if not artifact_path(name).exists()]
    if missing:
        names = ", ".join(ARTIFACTS[name][0] for name in missing)
        print(f"Notebook 02's {names} {'is' if len(missing) == 1 else 'are'} not in {outputs_shown()} (02 ran in another "
              "runtime, or not yet). Rebuilding them here with 02's steps (load the text, append EOS, tokenize, "
              "pack), which takes seconds ...")
        stats = rebuild_dataset(profile, tokenizer)
        print(f"rebuilt: {stats['documents']} documents, {stats['tokens']:,} tokens -> {stats['rows']} rows, saved to "
              f"{relative(artifact_path('dataset'))} as notebook 02 saves them")
    return load_from_disk(str(require("dataset"))), load_from_disk(str(require("text_dataset")))
