"""The walkthrough's own calls are plain code on the main path of notebooks 00-06 (above each
notebook's "Going further"), in the walkthrough's order: a learner coming from the walkthrough finds
each of its steps where it expects it."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks" / "py"
GOING_FURTHER = re.compile(r"^#+\s*Going further", re.IGNORECASE | re.MULTILINE)

# (notebook, what the code cell must contain): the walkthrough's calls, in its order
SPINE = [
    ("01_load_quantized_model", "FastLanguageModel.from_pretrained("),
    ("02_data_prep", "load_dataset("),
    ("02_data_prep", "EOS_TOKEN = tokenizer.eos_token"),
    ("02_data_prep", ".map("),
    ("03_inference_before_training", "TextIteratorStreamer(tokenizer"),
    ("03_inference_before_training", "Thread(target=model.generate"),
    ("03_inference_before_training", "textwrap.wrap("),
    ("04_lora", "FastLanguageModel.get_peft_model("),
    ("05_training", "UnslothTrainer("),
    ("05_training", "args=UnslothTrainingArguments("),
    ("05_training", "trainer.train()"),
    ("06_inference_after_training", "model.generate("),
]


def main_path_code(stem: str) -> list[str]:
    """Return the code cells of ``notebooks/py/<stem>.py`` above its "Going further" heading."""
    cells = []
    for cell in jupytext.read(NOTEBOOKS / f"{stem}.py").cells:
        if cell.cell_type == "markdown" and GOING_FURTHER.search(cell.source):
            break
        if cell.cell_type == "code":
            cells.append(cell.source)
    return cells


@pytest.mark.parametrize("stem, call", SPINE, ids=[f"{s}:{c}" for s, c in SPINE])
def test_the_walkthroughs_call_is_on_the_main_path(stem, call):
    assert any(call in source for source in main_path_code(stem)), f"{stem}: no main-path code cell has {call!r}"


def test_no_spine_cell_is_longer_than_35_lines():
    for stem in sorted({stem for stem, _ in SPINE}):
        for source in main_path_code(stem):
            if any(call in source for s, call in SPINE if s == stem):
                lines = [line for line in source.splitlines() if line.strip()]
                assert len(lines) <= 35, f"{stem}: a spine cell of {len(lines)} lines"
