"""The committed notebooks: paired with their text sources, and carrying a clean, real run.

Like nbdev's "clean notebooks" check: a reviewer reads notebooks/py/*.py (jupytext percent format);
this test fails when a notebook and its text source disagree, when a notebook's outputs are not a
top-to-bottom run (execution counts out of order, errors), or when outputs leak local paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(root|home|tmp|work|Users|content)/")
# The whole series, in order. The README's series table and notebook 00's table list every one.
SERIES = [
    "00_setup", "01_load_quantized_model", "02_data_prep", "03_inference_before_training",
    "04_lora", "05_training", "06_inference_after_training", "07_learning_and_forgetting",
    "08_save_merge_export", "09_your_own_text", "10_learning_rate_and_rank",
]
PENDING: set[str] = set()  # notebooks of the agreed series not written yet (none now)


def _sources(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_the_series_is_complete():
    present = [p.stem for p in NOTEBOOKS]
    unknown = [name for name in present if name not in SERIES]
    assert not unknown, f"notebooks not in the series list (add them to SERIES and the README): {unknown}"
    missing = [name for name in SERIES if name not in present and name not in PENDING]
    assert not missing, f"notebooks of the series are missing: {missing}"


@pytest.mark.parametrize("listing", ["README.md", "notebooks/py/00_setup.py"])
def test_every_notebook_is_listed_in_the_series_tables(listing):
    text = (NOTEBOOKS_DIR.parent / listing).read_text(encoding="utf-8")
    for name in SERIES:
        number, title = name.split("_", 1)
        listed = name in text or f"| {number} {title.replace('_', ' ')} |".lower() in text.lower()
        assert listed, f"{listing} does not list {name} in its series table"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_text_source(path):
    text_source = NOTEBOOKS_DIR / "py" / f"{path.stem}.py"
    assert text_source.is_file(), f"{path.name} has no paired text source {text_source.name}; run `make notebooks`"
    notebook = jupytext.read(path)
    script = jupytext.read(text_source)
    assert _sources(notebook) == _sources(script), (
        f"{path.name} and py/{text_source.name} differ: edit the .py and run `make notebooks`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_a_clean_top_to_bottom_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts} are not 1..n in order"
    for cell in code:
        assert "execution" not in cell.metadata, f"{path.name}: volatile execution metadata committed"
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name}: committed an error output"
            text = output.get("text", "") + "".join(str(v) for v in output.get("data", {}).values())
            match = ABSOLUTE_PATH.search(text)
            assert not match, f"{path.name}: output shows an absolute local path near {text[max(0, match.start() - 40):match.end() + 40]!r}"
    header = "".join(o.get("text", "") for o in code[0].outputs)
    for field in ("profile", "model", "device", "versions"):
        assert re.search(rf"^{field}\s*:", header, re.M), f"{path.name}: first cell does not print {field!r}"


def test_colab_badge_and_install_cell_are_current():
    """scripts/colab_cells.py owns the badge and the Colab-only install block of every notebook."""
    import subprocess
    import sys

    root = NOTEBOOKS_DIR.parent
    result = subprocess.run([sys.executable, str(root / "scripts" / "colab_cells.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert "colab.research.google.com/github/" in nb.cells[0].source and f"notebooks/{path.name}" in nb.cells[0].source
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert 'if "google.colab" in sys.modules:' in first_code.source, f"{path.name}: no Colab-only install block"
