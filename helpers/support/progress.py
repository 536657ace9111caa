"""Progress bars: live for a person, absent from the saved notebooks.

Every bar the series shows goes through ``tqdm.auto``: a widget in JupyterLab and Colab (ipywidgets is a
dependency), text in a terminal. A notebook saved with its outputs would keep each bar as noise, so
``scripts/run_notebooks.py`` starts its kernels with :data:`QUIET_PROGRESS_ENV`, which switches off each
source of bars the series has:

* ``TQDM_DISABLE=1``: the project's own bars ("Perplexity"), drawn by :func:`progress_bar`, which reads
  it itself because ``tqdm.notebook`` passes ``disable=False`` explicitly and so ignores tqdm's own
  reading of that variable;
* ``HF_HUB_DISABLE_PROGRESS_BARS=1``: huggingface_hub's and transformers' bars ("Loading weights",
  "Writing model shards");
* ``HF_DATASETS_DISABLE_PROGRESS_BARS=1``: datasets' bars ("Map", "Saving the dataset").

Nothing else changes: a person who opens a notebook in JupyterLab still sees every bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

QUIET_PROGRESS_ENV: dict[str, str] = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def bars_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Return True when ``TQDM_DISABLE`` is set to anything but empty, ``0`` or ``false``."""
    value = (os.environ if environ is None else environ).get("TQDM_DISABLE", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True, **kwargs):
    """Return ``tqdm.auto.tqdm(iterable, desc=desc, ...)``, switched off when ``enabled`` is False or
    :func:`bars_disabled` says so (the iteration itself is unchanged either way)."""
    from tqdm.auto import tqdm  # deferred: heavy

    return tqdm(iterable, desc=desc, disable=not enabled or bars_disabled(), **kwargs)
