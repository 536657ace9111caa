"""Memory probes and a stage recorder (the walkthrough's memory appendix, measured).

Four different numbers answer "how much memory does this use?", and they disagree on purpose:

* ``torch.cuda.memory_allocated`` - bytes in live tensors;
* ``torch.cuda.memory_reserved`` - bytes PyTorch's caching allocator holds from the driver
  (allocated + cached free blocks kept for reuse);
* NVML / ``nvidia-smi`` - everything the driver gave the process: reserved memory plus the CUDA
  context (kernels, cuBLAS/cuDNN workspaces), typically several hundred MiB more;
* process RSS - host memory, the only meaningful number on a CPU run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .paths import artifact_path
from .storage import read_json, write_json

GIB = 1024**3


def torch_cuda_memory() -> dict | None:
    """Return PyTorch allocator figures in GiB (allocated, reserved, and their peaks), or None
    without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {
        "allocated_gib": torch.cuda.memory_allocated() / GIB,
        "reserved_gib": torch.cuda.memory_reserved() / GIB,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "total_gib": torch.cuda.get_device_properties(0).total_memory / GIB,
    }


def nvml_memory(device_index: int = 0) -> dict | None:
    """Return driver-level GPU memory through NVML in GiB (used, total, and this process's share
    where NVML reports it), or None when NVML or a GPU is unavailable."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        result = {"used_gib": info.used / GIB, "total_gib": info.total / GIB, "process_gib": None}
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    result["process_gib"] = proc.usedGpuMemory / GIB
        except Exception:
            pass  # containers often hide per-process figures
        return result
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvidia_smi_memory(device_index: int = 0) -> dict | None:
    """Return ``nvidia-smi``'s used/total memory for one GPU in GiB, or None without the tool."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", f"--id={device_index}"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        used, total = (float(x) for x in out.split(","))
    except Exception:
        return None
    return {"used_gib": used / 1024, "total_gib": total / 1024}


def process_rss_gib() -> float:
    """Return this process's resident host memory in GiB."""
    import psutil

    return psutil.Process().memory_info().rss / GIB


def gpu_used_gib() -> float | None:
    """Return the GPU memory in use as the driver sees it (NVML, else nvidia-smi), or None."""
    for probe in (nvml_memory, nvidia_smi_memory):
        reading = probe()
        if reading:
            return reading["used_gib"]
    return None


def snapshot() -> dict:
    """Return every available memory figure at this moment (unavailable probes are None)."""
    return {
        "time": time.time(),
        "rss_gib": process_rss_gib(),
        "torch": torch_cuda_memory(),
        "nvml": nvml_memory(),
        "nvidia_smi": nvidia_smi_memory(),
    }


def format_snapshot(snap: dict) -> str:
    """Return a one-paragraph, human-readable rendering of a :func:`snapshot`."""
    lines = [f"process RSS (host): {snap['rss_gib']:.2f} GiB"]
    if snap["torch"]:
        t = snap["torch"]
        lines.append(
            f"torch allocated {t['allocated_gib']:.2f} GiB, reserved {t['reserved_gib']:.2f} GiB "
            f"(peak reserved {t['peak_reserved_gib']:.2f} of {t['total_gib']:.2f} GiB)"
        )
    else:
        lines.append("torch CUDA allocator: not available (no CUDA device)")
    lines.append(f"NVML used: {snap['nvml']['used_gib']:.2f} GiB" if snap["nvml"] else "NVML: not available")
    lines.append(
        f"nvidia-smi used: {snap['nvidia_smi']['used_gib']:.2f} GiB" if snap["nvidia_smi"] else "nvidia-smi: not available"
    )
    return "\n".join(lines)


def record_stage(stage: str, notebook: str) -> dict:
    """Take a :func:`snapshot`, label it, append it to ``outputs/memory_stages.json`` (replacing an
    earlier record of the same stage), and return it."""
    path = artifact_path("memory_stages")
    stages = read_json(path) if path.exists() else []
    stages = [s for s in stages if s["stage"] != stage]
    entry = {"stage": stage, "notebook": notebook, **snapshot()}
    stages.append(entry)
    write_json(path, stages)
    return entry


def load_stages() -> list[dict]:
    """Return the recorded stages in the order they were taken (empty list if none)."""
    path = artifact_path("memory_stages")
    return sorted(read_json(path), key=lambda s: s["time"]) if path.exists() else []


def stage_value(entry: dict) -> tuple[float, str]:
    """Return ``(GiB, label)`` for one stage: torch peak reserved on a GPU, else process RSS."""
    if entry.get("torch"):
        return entry["torch"]["peak_reserved_gib"], "GPU memory, torch peak reserved (GiB)"
    return entry["rss_gib"], "host memory, process RSS (GiB)"


def plot_stages(stages: list[dict], ax=None):
    """Draw a bar chart of memory per stage; return the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    values = [stage_value(s) for s in stages]
    ax.bar([s["stage"] for s in stages], [v for v, _ in values], color="tab:blue")
    ax.set_ylabel(values[0][1] if values else "GiB")
    ax.set_title("Memory by stage")
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return ax
