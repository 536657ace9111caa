"""The Colab first cell (scripts/colab_cells.py), with the ``google.colab`` module simulated: what it
clones, installs and prints; Google Drive offered for the outputs; a T4 simulated (capability 7.5, no
bf16): fp16 and the fallback attention route."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
from conftest import REPO_ROOT

GIB = 2**30


def load_cells():
    spec = importlib.util.spec_from_file_location("colab_cells_under_test", REPO_ROOT / "scripts" / "colab_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeRun:
    """subprocess.run as the bootstrap calls it: records every command, answers git with a commit."""

    def __init__(self, commits=("1a2b3c4", "1a2b3c4")):
        self.commands, self.commits = [], list(commits)

    def __call__(self, command, **kwargs):
        self.commands.append(list(command))
        stdout = ""
        if command[:1] == ["git"] and "rev-parse" in command:
            stdout = self.commits.pop(0) if len(self.commits) > 1 else self.commits[0]
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A simulated Colab: ``google.colab`` (with ``drive.mount``) importable, a clone in tmp_path, the
    Drive mount point in tmp_path, Colab's torch 2.8.0+cu126."""
    cells = load_cells()
    clone = tmp_path / "content" / "cpt-raw-text"
    (clone / "notebooks").mkdir(parents=True)
    (clone / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    mounted = []

    def mount(point):
        mounted.append(point)
        (tmp_path / "content" / "drive" / "MyDrive").mkdir(parents=True)

    colab_module = types.ModuleType("google.colab")
    colab_module.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", colab_module)
    if "google" not in sys.modules:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setattr(cells, "DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    monkeypatch.setattr(cells, "installed_version", lambda package: "2.8.0+cu126")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(cells=cells, clone=str(clone), mounted=mounted, tmp=tmp_path)


def test_the_first_cell_is_short_and_clones_the_repository():
    cells = load_cells()
    block = cells.install_block()
    lines = [line for line in (block + "from helpers.session import start\n\nprofile = start('x')\n").splitlines()]
    assert len(lines) <= 11
    assert (f"git clone -q --depth 1 -b {cells.BRANCH} https://github.com/{cells.REPOSITORY}.git "
            f"{cells.CLONE_DIR}") in block
    assert 'run_name="colab_bootstrap"' in block
    assert 'run_name="colab_bootstrap_one_runtime"' in cells.install_block(one_runtime=True)


def test_bootstrap_updates_installs_with_pins_keeping_colabs_torch_and_offers_drive(colab, capsys):
    run = FakeRun()
    env = {}
    colab.cells.bootstrap(colab.clone, run=run, ask=lambda prompt: "", env=env)
    out = capsys.readouterr().out
    assert run.commands[:3] == [["git", "-C", colab.clone, "rev-parse", "--short", "HEAD"],
                                ["git", "-C", colab.clone, "pull", "-q", "--ff-only"],
                                ["git", "-C", colab.clone, "rev-parse", "--short", "HEAD"]]
    assert run.commands[3] == [sys.executable, "-m", "pip", "install", "-q", "-e", f"{colab.clone}[gpu]",
                               "torch==2.8.0+cu126"]
    assert f"{colab.clone} at 1a2b3c4 (up to date with main)" in out
    assert "keeping Colab's torch 2.8.0+cu126 (unsloth accepts torch>=2.4,<2.15)" in out
    assert "pins: transformers==5.17.0, trl==1.15.0" in out and "unsloth==2026.10.9" in out
    # Drive: offered, accepted (Enter), mounted, and the outputs folder set for this runtime
    assert colab.mounted == [colab.cells.DRIVE_MOUNT]
    assert env["CPT_OUTPUTS"] == f"{colab.cells.DRIVE_MOUNT}/MyDrive/cpt-raw-text/outputs"
    assert "on Google Drive (CPT_OUTPUTS)" in out
    # then helpers are importable from the clone, the kernel works in notebooks/, and the GPU is reported
    assert sys.path[0] == colab.clone and colab.tmp.joinpath("content", "cpt-raw-text", "notebooks").samefile(".")
    assert "gpu      : none. Choose Runtime > Change runtime type" in out  # this test machine has no GPU
    for line in out.splitlines():
        assert line.startswith("[") and " s] " in line  # every step with its elapsed time

    again = FakeRun()
    colab.cells.bootstrap(colab.clone, run=again, ask=lambda prompt: pytest.fail("asked twice"), env=env)
    assert not any("pip" in command for command in again.commands)
    assert "install  : done earlier in this runtime" in capsys.readouterr().out


def test_a_torch_outside_unsloths_range_is_replaced_and_said_so(colab, capsys):
    run = FakeRun()
    command = colab.cells.install(colab.clone, colab.cells.Steps(), run, torch_version="2.15.1")
    assert not any(part.startswith("torch==") for part in command)
    assert "Colab's torch 2.15.1 is outside unsloth's torch>=2.4,<2.15" in capsys.readouterr().out


def test_declining_drive_says_the_notebooks_must_share_one_runtime(colab, capsys):
    env = {}
    folder = colab.cells.choose_outputs(colab.clone, colab.cells.Steps(), env=env, ask=lambda prompt: "n")
    out = capsys.readouterr().out
    assert folder == f"{colab.clone}/outputs" and "CPT_OUTPUTS" not in env and not colab.mounted
    assert "in this runtime only. Without Drive the notebooks must share one runtime" in out
    assert "06 needs 05's adapter" in out and "walkthrough.ipynb" in out


def test_the_walkthrough_is_not_asked_and_cpt_outputs_wins(colab, capsys):
    steps = colab.cells.Steps()
    never = lambda prompt: pytest.fail("the walkthrough runs in one runtime: no question")  # noqa: E731
    assert colab.cells.choose_outputs(colab.clone, steps, one_runtime=True, env={}, ask=never) == f"{colab.clone}/outputs"
    assert colab.cells.choose_outputs(colab.clone, steps, env={"CPT_OUTPUTS": "/x/y"}, ask=never) == "/x/y"
    assert "CPT_OUTPUTS is set" in capsys.readouterr().out


def test_an_update_hands_over_to_the_new_bootstrap(colab, monkeypatch, capsys):
    handed = {}
    monkeypatch.setattr("runpy.run_path", lambda path, run_name: {"bootstrap": lambda *a, **k: handed.update(path=path, **k)})
    colab.cells.bootstrap(colab.clone, run=FakeRun(commits=("1a2b3c4", "5d6e7f8")), env={})
    assert "updated 1a2b3c4 -> 5d6e7f8" in capsys.readouterr().out
    assert handed["path"] == f"{colab.clone}/scripts/colab_cells.py" and handed["updated"] is True


def simulate_gpu(monkeypatch, name, capability, bf16, total_gib, free_gib):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (int(free_gib * GIB), int(total_gib * GIB)))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a, **k: types.SimpleNamespace(total_memory=int(total_gib * GIB)))


def test_a_t4_gets_the_lean_profile_fp16_and_the_fallback_route(colab, monkeypatch, capsys):
    """Free Colab's T4: compute capability 7.5, no bf16, 15 GB."""
    simulate_gpu(monkeypatch, "Tesla T4", (7, 5), bf16=False, total_gib=15.0, free_gib=14.6)
    env = {}
    lines = colab.cells.report_gpu(colab.cells.Steps(), env)
    out = capsys.readouterr().out
    assert env["CPT_PROFILE"] == "gpu-mistral7b-lean" and "gpu-mistral7b-lean, since this GPU has 15.0 GiB" in out
    assert "gpu      : Tesla T4, compute capability 7.5, 14.6 of 15.0 GiB free" in out
    assert "dtype    : float16 (auto: no bf16 on this GPU" in out
    assert lines[2].startswith("attention: fallback: unsloth's own route")
    assert "compute capability 7.5, older than Ampere (8.0)" in lines[2]


def test_the_profile_header_on_a_t4_prints_fp16_and_the_fallback_route(monkeypatch):
    """The same plan is what every notebook's header prints on a CUDA profile (helpers.session.start)."""
    from helpers.profiles import GPU_MISTRAL7B
    from helpers.session import gpu_plan

    simulate_gpu(monkeypatch, "Tesla T4", (7, 5), bf16=False, total_gib=15.0, free_gib=14.6)
    gpu, dtype, attention = gpu_plan(GPU_MISTRAL7B)
    assert dtype.startswith("dtype    : float16")
    assert attention.startswith("attention: fallback: unsloth's own route (xformers when installed, else one SDPA call")


def test_an_a100_keeps_the_faithful_profile_bf16_and_torchs_varlen_kernel(colab, monkeypatch, capsys):
    simulate_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), bf16=True, total_gib=39.5, free_gib=39.0)
    env = {}
    colab.cells.report_gpu(colab.cells.Steps(), env)
    out = capsys.readouterr().out
    assert "CPT_PROFILE" not in env and "profile  : gpu-mistral7b (automatic: CUDA is available" in out
    assert "dtype    : bfloat16 (auto: this GPU computes in bf16)" in out
    assert "attention: torch's varlen_attn" in out  # through the wrapper on torch 2.11, by unsloth from 2.12


@pytest.mark.parametrize("signature, expected", [
    ("q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)",
     "torch's varlen_attn via the GQA wrapper"),  # torch 2.11
    ("q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False",
     "torch's varlen_attn, which unsloth calls by itself"),  # torch 2.12 and later
    ("q, k, v, cu_q, cu_k, max_q, max_k", "fallback: unsloth's own route"),  # torch 2.10: no window_size
])
def test_the_planned_route_follows_the_torch_on_an_ampere_gpu(signature, expected):
    from helpers.support.varlen_attention import planned_route

    namespace = {}
    exec(f"def varlen_attn({signature}): pass", namespace)
    assert planned_route((8, 0), flash_attn_installed=False, varlen_attn=namespace["varlen_attn"]).startswith(expected)
    assert planned_route((7, 5), flash_attn_installed=False, varlen_attn=namespace["varlen_attn"]).startswith(
        "fallback: unsloth's own route")
