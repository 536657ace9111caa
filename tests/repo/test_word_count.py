"""The lesson's prose stays within its limits: scripts/word_count.py over notebooks 00-06."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("word_count", ROOT / "scripts" / "word_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_words_ignores_links_images_and_tags():
    words = _script().words
    assert words("[![Open In Colab](https://x/badge.svg)](https://colab/...)") == 0
    assert words("See [the notes](docs/notes.md), <b>twice</b> - and `x = 1`.") == 7  # "-" and "=" carry no letter


def test_notebooks_00_06_are_within_the_word_limits():
    script = _script()
    table = script.counts()
    assert len(table) == 7
    assert script.problems(table) == [], script.problems(table)
