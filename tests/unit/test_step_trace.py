"""helpers.lab.step_trace: the busy/idle arithmetic and a profiled step of a real (tiny) Trainer."""

from __future__ import annotations

import pytest

from helpers.lab.step_trace import StepTrace, busy_seconds, largest_gaps, summarize


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


def test_user_annotations_on_the_device_do_not_count_as_busy():
    """DDP's forward and NCCL's all-reduce are record_function ranges that the profiler also reports on
    the GPU; counting them made a 2-GPU step of 2026-11-28 look 1.55 s busy."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, start, end, annotation=False):
        return SimpleNamespace(name=name, device_type=DeviceType.CUDA, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end), self_device_time_total=end - start)

    events = [event("DistributedDataParallel.forward", 0, 900_000, annotation=True),
              event("gemm", 100_000, 200_000), event("ncclDevKernel_AllReduce", 800_000, 850_000)]
    summary = summarize(events, wall_s=1.0)
    assert summary["device_kernels"] == 2 and summary["device_busy_s"] == 0.15
    assert [row["name"] for row in summary["top"]] == ["gemm", "ncclDevKernel_AllReduce"]


def test_writing_the_trace_is_charged_to_no_step(tmp_path, monkeypatch):
    """The 7B scale-out of 2026-11-28 spent 55 s writing one step's trace, and that time went into the
    next step's reading (and into tokens/s). With the clock given, it is left out."""
    import time
    from types import SimpleNamespace

    import helpers.lab.step_trace as step_trace
    from helpers.lab.throughput import StepClock

    real_summarize = step_trace.summarize

    def slow_summarize(*args, **kwargs):
        time.sleep(0.5)
        return real_summarize(*args, **kwargs)

    monkeypatch.setattr(step_trace, "summarize", slow_summarize)
    clock = StepClock()
    tracer = StepTrace(1, tmp_path, clock=clock)
    timer, traced = clock.callback(), tracer.callback()  # the order train_cpt.py adds them in
    state = SimpleNamespace(global_step=0)
    timer.on_train_begin(None, state, None)
    for step in (1, 2):
        traced.on_step_begin(None, state, None)
        state.global_step = step
        timer.on_step_end(None, state, None)
        traced.on_step_end(None, state, None)
    assert tracer.summary["step"] == 1 and tracer.overhead_s >= 0.5 and tracer.summary["overhead_s"] >= 0.5
    assert (tmp_path / "trace.json").is_file() and (tmp_path / "step_trace.json").is_file()
    assert max(clock.step_seconds()) < 0.4  # neither step carries the half second


def test_a_negative_exclusion_is_refused():
    from helpers.lab.throughput import StepClock

    with pytest.raises(ValueError, match="negative"):
        StepClock().exclude(-1.0)
