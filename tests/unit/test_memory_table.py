"""helpers.memory: "memory used for training" the walkthrough's way, and the walkthrough-vs-this-run table."""

from __future__ import annotations

import math

import pytest

from helpers.memory import (
    WALKTHROUGH_MEMORY,
    comparison_rows,
    format_comparison,
    peak_rss_gib,
    stage_reading,
    training_memory_end,
    training_memory_start,
)


def stage(name, notebook="01", rss=1.0, smi=None):
    return {"stage": name, "notebook": notebook, "time": 0.0, "rss_gib": rss, "torch": None, "nvml": None,
            "nvidia_smi": None if smi is None else {"used_gib": smi, "total_gib": 80.0}}


def test_training_memory_on_cpu_is_peak_rss_minus_start():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("describes a machine without CUDA")
    start = training_memory_start()
    assert start["device"] == "cpu" and start["start_gib"] > 0
    block = bytearray(64 * 1024**2)  # 64 MiB more resident memory
    block[::4096] = b"x" * len(block[::4096])
    end = training_memory_end(start)
    del block
    assert end["peak_gib"] >= start["start_gib"] and end["peak_gib"] <= peak_rss_gib() + 1e-9
    assert math.isclose(end["training_gib"], end["peak_gib"] - end["start_gib"])
    assert math.isclose(end["peak_pct"], 100 * end["peak_gib"] / end["total_gib"])
    assert "RSS" in end["measure"]


def test_stage_reading_prefers_nvidia_smi_and_falls_back_to_rss():
    assert stage_reading(stage("a", smi=4.6)) == (4.6, "nvidia-smi used")
    assert stage_reading(stage("a", rss=0.5)) == (0.5, "process RSS (host)")


def test_comparison_rows_put_the_walkthrough_beside_this_run():
    stages = [stage("model loaded", "01", smi=4.62), stage("after training", "05", smi=9.77)]
    training = {"device": "cuda", "measure": "torch", "peak_gib": 11.29, "training_gib": 5.0,
                "peak_pct": 8.0, "training_pct": 3.5}
    rows = comparison_rows(stages, training)
    by_figure = {r["figure"]: r for r in rows}
    assert by_figure["model loaded (notebook 01)"]["walkthrough"] == 4.78
    assert by_figure["model loaded (notebook 01)"]["this_run"] == 4.62
    assert by_figure["LoRA added (notebook -)"]["this_run"] is None  # not recorded
    # the walkthrough's 5.03 was read after its first generation, 6.17 after adding LoRA
    assert by_figure["inference before training (notebook -)"]["walkthrough"] == 5.03
    assert by_figure["LoRA added (notebook -)"]["walkthrough"] == 6.17
    assert by_figure["memory used for training (peak - start)"]["walkthrough"] == WALKTHROUGH_MEMORY["training_gb"]
    assert round(by_figure["peak, % of the device's memory"]["walkthrough"], 1) == 23.6
    assert round(by_figure["training, % of the device's memory"]["walkthrough"], 1) == 12.6
    table = format_comparison(rows, "H200")
    assert "H200" in table.splitlines()[0] and "11.29" in table and " - " in table
    # without a training reading the training rows are empty, not an error
    assert all(r["this_run"] is None for r in comparison_rows([], None))
