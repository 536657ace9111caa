"""Tests for helpers.memory: probes on a CPU machine, the stage recorder, and the chart."""

from __future__ import annotations

import json

import pytest

from helpers import memory
from helpers.memory import format_snapshot, load_stages, plot_stages, record_stage, snapshot, stage_value


@pytest.fixture
def no_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this test describes a machine without CUDA")


@pytest.fixture
def close_figures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def fake_snapshot(rss=1.5, torch=None, nvml=None, nvidia_smi=None, time=1000.0):
    return {"time": time, "rss_gib": rss, "torch": torch, "nvml": nvml, "nvidia_smi": nvidia_smi}


TORCH_FIGURES = {
    "allocated_gib": 1.0,
    "reserved_gib": 2.0,
    "peak_allocated_gib": 3.0,
    "peak_reserved_gib": 4.5,
    "total_gib": 80.0,
}


# --- probes ------------------------------------------------------------------------------------


def test_snapshot_on_cpu(no_cuda):
    snap = snapshot()
    assert set(snap) == {"time", "rss_gib", "torch", "nvml", "nvidia_smi"}
    assert snap["rss_gib"] > 0
    assert snap["rss_gib"] < 1024  # in GiB, not bytes
    assert snap["torch"] is None
    assert isinstance(snap["time"], float)
    json.dumps(snap)  # storable as JSON as it is


def test_torch_cuda_memory_is_none_without_cuda(no_cuda):
    assert memory.torch_cuda_memory() is None


def test_process_rss_is_in_gib():
    import psutil

    rss_bytes = psutil.Process().memory_info().rss
    assert memory.process_rss_gib() == pytest.approx(rss_bytes / 1024**3, rel=0.2)


def test_nvidia_smi_missing_gives_none(monkeypatch):
    monkeypatch.setattr(memory.shutil, "which", lambda name: None)
    assert memory.nvidia_smi_memory() is None


def test_nvidia_smi_output_is_parsed(monkeypatch):
    class Done:
        stdout = "2048, 81920\n"

    monkeypatch.setattr(memory.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(memory.subprocess, "run", lambda *a, **k: Done())
    assert memory.nvidia_smi_memory() == {"used_gib": 2.0, "total_gib": 80.0}


def test_nvidia_smi_garbage_gives_none(monkeypatch):
    class Done:
        stdout = "No devices were found"

    monkeypatch.setattr(memory.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(memory.subprocess, "run", lambda *a, **k: Done())
    assert memory.nvidia_smi_memory() is None


def test_format_snapshot_without_gpu_says_so_once():
    text = format_snapshot(fake_snapshot(rss=1.234))
    assert text == "process RSS (host): 1.23 GiB\nGPU memory: not measured (no CUDA device)"


def test_format_snapshot_real_cpu_snapshot_says_gpu_memory_is_not_measured(no_cuda):
    assert format_snapshot(snapshot()).endswith("GPU memory: not measured (no CUDA device)")


def test_format_snapshot_names_each_missing_gpu_reading():
    text = format_snapshot(fake_snapshot(torch=TORCH_FIGURES))
    assert "NVML: not available" in text and "nvidia-smi: not available" in text


def test_format_snapshot_with_gpu_figures():
    snap = fake_snapshot(
        torch=TORCH_FIGURES,
        nvml={"used_gib": 6.25, "total_gib": 80.0, "process_gib": None},
        nvidia_smi={"used_gib": 6.5, "total_gib": 80.0},
    )
    text = format_snapshot(snap)
    assert "torch allocated 1.00 GiB, reserved 2.00 GiB (peak reserved 4.50 of 80.00 GiB)" in text
    assert "NVML used: 6.25 GiB" in text
    assert "nvidia-smi used: 6.50 GiB" in text
    assert "not available" not in text


# --- stage recorder ----------------------------------------------------------------------------


def test_record_stage_writes_memory_stages_json(tmp_path):
    entry = record_stage("model loaded", "01_load_quantized_model")
    path = tmp_path / "outputs" / "memory_stages.json"
    assert path.is_file()
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored == [entry]
    assert entry["stage"] == "model loaded"
    assert entry["notebook"] == "01_load_quantized_model"
    assert entry["rss_gib"] > 0
    assert [p.name for p in path.parent.iterdir()] == ["memory_stages.json"]  # no temp files


def test_record_stage_replaces_a_stage_with_the_same_name(tmp_path, monkeypatch):
    clock = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(memory, "snapshot", lambda: fake_snapshot(time=next(clock)))
    record_stage("loaded", "01")
    record_stage("trained", "05")
    record_stage("loaded", "06")  # re-running a notebook replaces its stage
    stages = json.loads((tmp_path / "outputs" / "memory_stages.json").read_text(encoding="utf-8"))
    assert [(s["stage"], s["notebook"]) for s in stages] == [("trained", "05"), ("loaded", "06")]
    assert [s["time"] for s in load_stages()] == [2.0, 3.0]


def test_load_stages_sorted_by_time_and_empty_when_missing(tmp_path):
    assert load_stages() == []
    path = tmp_path / "outputs" / "memory_stages.json"
    path.parent.mkdir(parents=True, exist_ok=True)  # load_stages() already created outputs/
    path.write_text(
        json.dumps([fake_snapshot(time=5.0) | {"stage": "b"}, fake_snapshot(time=1.0) | {"stage": "a"}]),
        encoding="utf-8",
    )
    assert [s["stage"] for s in load_stages()] == ["a", "b"]


def test_stage_value_prefers_torch_peak_reserved():
    value, label = stage_value(fake_snapshot(rss=2.0, torch=TORCH_FIGURES))
    assert value == 4.5 and "peak reserved" in label
    value, label = stage_value(fake_snapshot(rss=2.0))
    assert value == 2.0 and "RSS" in label


# --- plot_stages -------------------------------------------------------------------------------


def test_plot_stages_returns_axes_with_one_bar_per_stage(close_figures):
    from matplotlib.axes import Axes

    stages = [
        fake_snapshot(rss=1.0) | {"stage": "start"},
        fake_snapshot(rss=2.5) | {"stage": "model loaded"},
        fake_snapshot(rss=3.0) | {"stage": "trained"},
    ]
    ax = plot_stages(stages)
    assert isinstance(ax, Axes)
    assert [round(bar.get_height(), 6) for bar in ax.patches] == [1.0, 2.5, 3.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["start", "model loaded", "trained"]
    assert ax.get_ylabel() == "host memory, process RSS (GiB)"
    assert ax.get_title() == "Memory by stage"


def test_plot_stages_draws_into_a_given_axes(close_figures):
    plt = close_figures
    _, ax = plt.subplots()
    returned = plot_stages([fake_snapshot(torch=TORCH_FIGURES) | {"stage": "gpu"}], ax=ax)
    assert returned is ax
    assert ax.patches[0].get_height() == 4.5
    assert "GPU memory" in ax.get_ylabel()


def test_plot_stages_with_no_stages(close_figures):
    ax = plot_stages([])
    assert len(ax.patches) == 0
    assert ax.get_ylabel() == "GiB"


def test_driver_gpu_id_follows_cuda_visible_devices():
    # torch's cuda:0 is the driver's GPU 1 when only GPU 1 is visible; UUIDs pass through
    assert memory.driver_gpu_id(0, env={}) == 0
    assert memory.driver_gpu_id(0, env={"CUDA_VISIBLE_DEVICES": "1"}) == 1
    assert memory.driver_gpu_id(1, env={"CUDA_VISIBLE_DEVICES": "3, 2"}) == 2
    assert memory.driver_gpu_id(0, env={"CUDA_VISIBLE_DEVICES": "GPU-8f1c"}) == "GPU-8f1c"
    assert memory.driver_gpu_id(1, env={"CUDA_VISIBLE_DEVICES": "0"}) == 1  # beyond the list: the index


def test_nvidia_smi_asks_for_the_gpu_torch_uses(monkeypatch):
    seen = []

    class Done:
        stdout = "1024, 81920\n"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(memory.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(memory.subprocess, "run", lambda cmd, **k: seen.append(cmd) or Done())
    assert memory.nvidia_smi_memory() == {"used_gib": 1.0, "total_gib": 80.0}
    assert "--id=1" in seen[0]
