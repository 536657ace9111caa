"""One optimizer step under ``torch.profiler``: where a training step's time goes.

A step's wall time splits into time the accelerator computes and time it waits: for the host to
launch the next kernel (Python, the Trainer's bookkeeping, unsloth's and PEFT's wrappers), for data,
for a synchronisation. :class:`StepTrace` profiles exactly one optimizer step of a ``Trainer`` and
:func:`summarize` turns the events into those numbers and the most expensive operations.
``benchmarks/bench_cpt.py --trace-step N`` uses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .throughput import synchronize_cuda


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Return the length of the union of ``(start, end)`` intervals (overlapping kernels of several
    streams count once), in the intervals' unit."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def largest_gaps(intervals: list[tuple[float, float]], count: int = 5) -> list[float]:
    """Return the ``count`` longest idle stretches between the merged intervals, longest first."""
    gaps, current_end = [], None
    for start, end in sorted(intervals):
        if current_end is not None and start > current_end:
            gaps.append(start - current_end)
        current_end = end if current_end is None else max(current_end, end)
    return sorted(gaps, reverse=True)[:count]


def summarize(events, wall_s: float, top: int = 15) -> dict:
    """Return what one profiled step spent its time on.

    ``events``: the profiler's ``events()`` (``FunctionEvent`` objects; user annotations, which the
    profiler also reports on the device, are left out). Returns ``wall_s``;
    ``device_kernels`` (count), ``device_busy_s`` and ``device_idle_s`` (``wall_s`` minus the union of
    kernel intervals: the host gaps), ``largest_gaps_ms``; and ``top``: the operations with the most
    self time on the device (CUDA) or, without device events, on the CPU, each with its calls, total
    milliseconds and share of the wall time.
    """
    from torch.autograd import DeviceType  # deferred: heavy

    # device activity only: the GPU-side copies of ``record_function`` ranges ("gpu_user_annotation",
    # e.g. DistributedDataParallel.forward, nccl:all_reduce) span many kernels and would count as busy
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    result = {"wall_s": round(wall_s, 4), "device_kernels": len(kernels)}
    if kernels:
        spans = [(e.time_range.start, e.time_range.end) for e in kernels]  # microseconds
        busy = busy_seconds(spans) / 1e6
        result.update(device_busy_s=round(busy, 4), device_idle_s=round(max(wall_s - busy, 0.0), 4),
                      largest_gaps_ms=[round(g / 1e3, 2) for g in largest_gaps(spans)])
        key, by = "self_device_time_total", "device"
    else:
        result.update(device_busy_s=None, device_idle_s=None, largest_gaps_ms=[])
        key, by = "self_cpu_time_total", "cpu"
    totals: dict[str, list] = {}
    for e in (kernels or [e for e in events if getattr(e, "device_type", None) == DeviceType.CPU]):
        spent = getattr(e, key, None)
        if spent is None and by == "device":
            spent = e.time_range.end - e.time_range.start
        entry = totals.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += spent or 0.0
    ranked = sorted(totals.items(), key=lambda item: item[1][1], reverse=True)[:top]
    result["top_by"] = f"self {by} time"
    result["top"] = [{"name": name[:120], "calls": calls, "ms": round(us / 1e3, 3),
                      "share_of_wall": round(us / 1e6 / wall_s, 4) if wall_s else None}
                     for name, (calls, us) in ranked]
    return result


class StepTrace:
    """Profile optimizer step ``step`` (1-based) of a Trainer; :meth:`callback` returns the callback.

    After training, :attr:`summary` holds :func:`summarize`'s dict (None if the run ended before the
    step), and ``out_dir`` (when given) ``step_trace.json`` with it and ``trace.json``, the Chrome /
    Perfetto trace of the step. Stopping the profiler and writing the trace happen after the step, in
    ``overhead_s`` seconds (tens of seconds for a 7B step); given the run's
    :class:`helpers.lab.throughput.StepClock` as ``clock``, that time is left out of its step timings.
    The traced step itself runs under the profiler and is slower than the others.
    """

    def __init__(self, step: int, out_dir: Path | str | None = None, top: int = 15, clock=None):
        if step < 1:
            raise ValueError(f"step {step}: the first optimizer step is 1 (pick one after the warm-up, e.g. 3)")
        self.step, self.top, self.clock = step, top, clock
        self.overhead_s = 0.0  # stopping the profiler, summarizing and writing the trace, after the step
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.summary: dict | None = None
        self._profiler = None
        self._begin = 0.0

    def callback(self):
        """Return the ``transformers.TrainerCallback`` that starts and stops the profiler."""
        from torch.profiler import ProfilerActivity, profile  # deferred: heavy
        from transformers import TrainerCallback  # deferred: heavy

        trace = self

        class StepTraceCallback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step + 1 == trace.step and trace._profiler is None:
                    import torch  # deferred: heavy

                    activities = [ProfilerActivity.CPU]
                    if torch.cuda.is_available() and torch.cuda.is_initialized():
                        activities.append(ProfilerActivity.CUDA)
                    synchronize_cuda()
                    trace._profiler = profile(activities=activities)
                    trace._profiler.__enter__()
                    trace._begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if trace._profiler is not None and trace.summary is None and state.global_step == trace.step:
                    synchronize_cuda()
                    ended = time.perf_counter()
                    wall = ended - trace._begin
                    trace._profiler.__exit__(None, None, None)
                    trace.summary = {"step": trace.step, **summarize(trace._profiler.events(), wall, trace.top)}
                    if trace.out_dir is not None:
                        trace.out_dir.mkdir(parents=True, exist_ok=True)
                        trace._profiler.export_chrome_trace(str(trace.out_dir / "trace.json"))
                    trace.overhead_s = time.perf_counter() - ended
                    trace.summary["overhead_s"] = round(trace.overhead_s, 3)
                    if trace.out_dir is not None:
                        (trace.out_dir / "step_trace.json").write_text(json.dumps(trace.summary, indent=1))
                    if trace.clock is not None:  # a 7B step's trace takes tens of seconds to write
                        trace.clock.exclude(trace.overhead_s)

        return StepTraceCallback()
