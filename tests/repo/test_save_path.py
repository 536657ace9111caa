"""One way to save: every artifact a notebook writes goes through ``helpers.artifacts.save_outputs``,
so it has a manifest (no notebook writes a registered artifact with ``write_json`` or
``save_directory_atomically`` directly)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.artifacts import CHECKED_PRODUCERS
from helpers.support.paths import ARTIFACTS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks" / "py").glob("[0-9][0-9]_*.py"))
DIRECT_WRITE = re.compile(r"(write_json|save_directory_atomically|save_merged)\(\s*artifact_path\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_writes_its_artifacts_through_save_outputs(path):
    text = path.read_text(encoding="utf-8")
    assert not DIRECT_WRITE.search(text), f"{path.name} writes an artifact without a manifest: use save_outputs"
    writes = {name for name, (_, producer) in ARTIFACTS.items() if producer == path.stem}
    if writes:
        # save_adapter (helpers.checkpoints) saves through save_outputs too
        assert "save_outputs(" in text or "save_adapter(" in text, (
            f"{path.name} writes {sorted(writes)} but never calls save_outputs")


def test_every_producing_notebook_is_checked():
    producers = {producer for _, producer in ARTIFACTS.values() if producer != "any notebook"}
    assert producers == set(CHECKED_PRODUCERS)
