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
import sys
import time

from .support.files import read_json, write_json
from .support.paths import artifact_path

GIB = 1024**3


def torch_cuda_memory() -> dict | None:
    """Return PyTorch allocator figures in GiB (allocated, reserved, and their peaks), or None
    without CUDA."""
    try:
        import torch  # deferred: heavy
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


def driver_gpu_id(device_index: int = 0, env: dict | None = None) -> int | str:
    """Return how the driver (NVML, ``nvidia-smi --id``) names the GPU that torch calls
    ``cuda:<device_index>``: its UUID (``"GPU-..."``) once CUDA is initialised in this process, else
    the ``CUDA_VISIBLE_DEVICES`` entry at that position (an index or a UUID), else the index itself.

    The driver numbers every GPU of the machine; torch numbers only the visible ones. With
    ``CUDA_VISIBLE_DEVICES=1`` torch's ``cuda:0`` is the driver's GPU 1, and reading GPU 0 would
    report another process's memory (seen on a 2-GPU machine, 2026-11-28).
    """
    env = os.environ if env is None else env
    try:
        import torch  # deferred: heavy

        if env is os.environ and torch.cuda.is_available() and torch.cuda.is_initialized():
            uuid = str(torch.cuda.get_device_properties(device_index).uuid)
            return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    except Exception:
        pass  # no torch, or an older one without ``uuid``: fall back to the environment
    visible = [entry.strip() for entry in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if device_index < len(visible):
        entry = visible[device_index]
        return int(entry) if entry.isdigit() else entry
    return device_index


def nvml_memory(device_index: int = 0) -> dict | None:
    """Return driver-level GPU memory through NVML in GiB (used, total, and this process's share
    where NVML reports it) for torch's ``cuda:<device_index>`` (see :func:`driver_gpu_id`), or None
    when NVML or a GPU is unavailable."""
    try:
        import pynvml  # deferred: NVIDIA only
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        gpu = driver_gpu_id(device_index)
        if isinstance(gpu, int):
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu)
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
    """Return ``nvidia-smi``'s used/total memory in GiB for torch's ``cuda:<device_index>`` (see
    :func:`driver_gpu_id`), or None without the tool."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", f"--id={driver_gpu_id(device_index)}"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        used, total = (float(x) for x in out.split(","))
    except Exception:
        return None
    return {"used_gib": used / 1024, "total_gib": total / 1024}


def process_rss_gib() -> float:
    """Return this process's resident host memory in GiB."""
    import psutil  # deferred: optional

    return psutil.Process().memory_info().rss / GIB


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
    """Return a short, human-readable rendering of a :func:`snapshot`: the host's RSS, then the GPU's
    readings (torch's allocator, NVML, nvidia-smi), or one line saying that GPU memory is not measured
    when none of them is available (the CPU)."""
    lines = [f"process RSS (host): {snap['rss_gib']:.2f} GiB"]
    if not (snap["torch"] or snap["nvml"] or snap["nvidia_smi"]):
        return "\n".join(lines + ["GPU memory: not measured (no CUDA device)"])
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
    """Draw a bar chart of memory per stage (labelled with its notebook, since each notebook is its own
    process); return the matplotlib Axes."""
    import matplotlib.pyplot as plt  # deferred: heavy

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    values = [stage_value(s) for s in stages]
    labels = [f"{s['stage']} ({s['notebook']})" if s.get("notebook") else s["stage"] for s in stages]
    ax.bar(labels, [v for v, _ in values], color="tab:blue")
    ax.set_ylabel(values[0][1] if values else "GiB")
    ax.set_title("Memory by stage")
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return ax


# --- "memory used for training", the walkthrough's way -------------------------------------------


def peak_rss_gib() -> float:
    """Return the highest resident host memory this process has had so far, in GiB (Linux/macOS)."""
    import resource  # deferred: Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB  # bytes on macOS, KiB on Linux


def training_memory_start() -> dict:
    """Return the memory reading to take right before ``trainer.train()``.

    On a GPU it is the walkthrough's ``start_gpu_memory``: ``torch.cuda.max_memory_reserved()``. On the
    CPU, the analogue: this process's resident host memory (RSS) now.
    """
    cuda = torch_cuda_memory()
    if cuda:
        return {"device": "cuda", "start_gib": cuda["peak_reserved_gib"], "total_gib": cuda["total_gib"]}
    import psutil  # deferred: optional

    return {"device": "cpu", "start_gib": process_rss_gib(), "total_gib": psutil.virtual_memory().total / GIB}


def training_memory_end(start: dict) -> dict:
    """Return the walkthrough's four training-memory figures, given :func:`training_memory_start`'s reading.

    GPU: ``peak_gib`` = ``torch.cuda.max_memory_reserved()`` after training, ``training_gib`` = peak
    minus the start, and both as a percentage of the GPU's memory (the walkthrough's "Peak reserved
    memory", "... for training" and their "% of max memory"). CPU: the same arithmetic on host memory,
    with the process's peak RSS (``getrusage``) for the peak and the machine's RAM as the total.
    ``measure`` names what was read.
    """
    if start["device"] == "cuda":
        peak = torch_cuda_memory()["peak_reserved_gib"]
        measure = "torch.cuda.max_memory_reserved (GPU)"
    else:
        peak = max(peak_rss_gib(), start["start_gib"])
        measure = "process RSS, peak from getrusage (host memory; the CPU analogue)"
    training = peak - start["start_gib"]
    return {"device": start["device"], "measure": measure, "start_gib": start["start_gib"], "peak_gib": peak,
            "training_gib": training, "total_gib": start["total_gib"],
            "peak_pct": 100 * peak / start["total_gib"], "training_pct": 100 * training / start["total_gib"]}


# --- the walkthrough's figures beside this project's -------------------------------------------------

# What the walkthrough (Unsloth's raw-text notebook, Mistral-7B v0.3 in 4-bit on an A100-40GB, one
# Python process) printed. nvidia-smi figures are "GB" as nvidia-smi's MiB/1024; torch figures are
# GiB (bytes / 1024**3), printed as "GB". Its GPU total as torch reports it: 39.564.
# The walkthrough's readings, keyed by the stage of this series that matches each: nvidia-smi after loading
# (4.78), after its first generation (5.03, printed as "after forward pass"), after adding LoRA (6.17) and
# after training (9.85); PyTorch's peak reserved memory around training (9.332), minus its start reading
# (4.363, taken before that first generation) = 4.969 for training. Its "GB" are MiB / 1024, i.e. GiB.
WALKTHROUGH_MEMORY = {
    "gpu": "A100-40GB",
    "nvidia_smi_gb": {"model loaded": 4.78, "inference before training": 5.03, "LoRA added": 6.17,
                      "after training": 9.85},
    "peak_reserved_gb": 9.332,
    "training_gb": 4.969,
    "total_gb": 39.564,
}


def stage_reading(entry: dict) -> tuple[float | None, str]:
    """Return ``(GiB, what)`` for the figure of one recorded stage that compares with the
    walkthrough's nvidia-smi reading: nvidia-smi (else NVML) on a GPU, process RSS on the CPU."""
    for key, what in (("nvidia_smi", "nvidia-smi used"), ("nvml", "NVML used")):
        if entry.get(key):
            return entry[key]["used_gib"], what
    return entry.get("rss_gib"), "process RSS (host)"


def comparison_rows(stages: list[dict], training: dict | None, walkthrough: dict = WALKTHROUGH_MEMORY) -> list[dict]:
    """Return the rows of the "walkthrough vs this run" memory table.

    One row per walkthrough stage (nvidia-smi) with this run's reading of the same stage
    (:func:`stage_reading`; None when the stage was not recorded), then peak reserved, memory for
    training and both as a percentage of the device's memory (from :func:`training_memory_end`'s
    result; None when ``training`` is None). Each row: ``{"figure", "walkthrough", "this_run",
    "measures"}``; numbers in GiB (percent for the ``%`` rows).
    """
    by_stage = {s["stage"]: s for s in stages}
    rows = []
    for stage, value in walkthrough["nvidia_smi_gb"].items():
        reading, what = stage_reading(by_stage[stage]) if stage in by_stage else (None, "not recorded")
        notebook = by_stage[stage]["notebook"] if stage in by_stage else "-"
        rows.append({"figure": f"{stage} (notebook {notebook})", "walkthrough": value, "this_run": reading,
                     "measures": f"walkthrough: nvidia-smi; this run: {what}"})
    t = training or {}
    what = t.get("measure", "not measured")
    total = walkthrough["total_gb"]
    rows += [
        {"figure": "peak memory during training", "walkthrough": walkthrough["peak_reserved_gb"],
         "this_run": t.get("peak_gib"), "measures": f"walkthrough: torch max_memory_reserved; this run: {what}"},
        {"figure": "memory used for training (peak - start)", "walkthrough": walkthrough["training_gb"],
         "this_run": t.get("training_gib"), "measures": "the same difference, taken around trainer.train()"},
        {"figure": "peak, % of the device's memory", "walkthrough": 100 * walkthrough["peak_reserved_gb"] / total,
         "this_run": t.get("peak_pct"), "measures": f"walkthrough: of {total} GB ({walkthrough['gpu']}); this run: "
         + ("of the GPU" if t.get("device") == "cuda" else "of the machine's RAM")},
        {"figure": "training, % of the device's memory", "walkthrough": 100 * walkthrough["training_gb"] / total,
         "this_run": t.get("training_pct"), "measures": "the same ratio for the training share"},
    ]
    return rows


def format_comparison(rows: list[dict], this_run_label: str = "this run") -> str:
    """Return :func:`comparison_rows` as a fixed-width text table ("-" where a figure is missing)."""
    def cell(value, figure):
        if value is None:
            return "-"
        return f"{value:.1f} %" if "%" in figure else f"{value:.2f}"

    header = f"{'figure':<44}{'walkthrough':>13}{this_run_label:>16}   measures"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['figure']:<44}{cell(row['walkthrough'], row['figure']):>13}"
                     f"{cell(row['this_run'], row['figure']):>16}   {row['measures']}")
    return "\n".join(lines)
