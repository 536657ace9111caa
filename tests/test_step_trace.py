"""helpers.step_trace: the busy/idle arithmetic and a profiled step of a real (tiny) Trainer."""

from __future__ import annotations

import pytest

from helpers.step_trace import StepTrace, busy_seconds, largest_gaps, summarize


def test_busy_time_counts_overlaps_once_and_gaps_are_what_is_left():
    spans = [(0, 10), (5, 12), (20, 25), (30, 31), (24, 26)]
    assert busy_seconds(spans) == 12 + 6 + 1
    assert largest_gaps(spans) == [8, 4]
    assert busy_seconds([]) == 0.0 and largest_gaps([]) == []


def test_summary_of_cpu_work_ranks_operations_by_self_time():
    import torch
    from torch.profiler import ProfilerActivity, profile

    a = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            a = torch.tanh(a @ a)
    summary = summarize(prof.events(), wall_s=1.0, top=3)
    assert summary["device_kernels"] == 0 and summary["device_busy_s"] is None  # no GPU here
    assert summary["top_by"] == "self cpu time" and len(summary["top"]) <= 3
    assert any(row["name"] in ("aten::mm", "aten::matmul", "aten::tanh") for row in summary["top"])
    assert summary["top"] == sorted(summary["top"], key=lambda row: row["ms"], reverse=True)


def test_step_zero_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="first optimizer step is 1"):
        StepTrace(0)
