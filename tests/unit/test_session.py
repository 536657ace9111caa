"""Tests for helpers.session: the runnable check, library versions, seeding, the header."""

from __future__ import annotations

import importlib.metadata

import pytest

from helpers import session
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B
from helpers.session import LIBRARIES, ProfileNotRunnable, check_runnable, library_versions


def test_cuda_profile_without_cuda_is_not_runnable():
    with pytest.raises(ProfileNotRunnable) as info:
        check_runnable(GPU_MISTRAL7B, cuda=False, unsloth_installed=True)
    message = str(info.value)
    assert "gpu-mistral7b" in message
    assert "CUDA" in message
    assert "CPT_PROFILE=cpu-smollm2" in message


def test_unsloth_profile_without_unsloth_is_not_runnable():
    with pytest.raises(ProfileNotRunnable) as info:
        check_runnable(GPU_MISTRAL7B, cuda=True, unsloth_installed=False)
    message = str(info.value)
    assert "unsloth" in message
    assert "cpu-smollm2" in message and "CPT_PROFILE" in message
    assert "pip install" in message


def test_unsloth_profile_on_a_cpu_device_still_needs_unsloth():
    odd = CPU_SMOLLM2.replace(name="cpu-unsloth", backend="unsloth")
    with pytest.raises(ProfileNotRunnable, match="unsloth"):
        check_runnable(odd, cuda=False, unsloth_installed=False)


def test_gpu_profile_runnable_with_cuda_and_unsloth():
    assert check_runnable(GPU_MISTRAL7B, cuda=True, unsloth_installed=True) is None


@pytest.mark.parametrize("cuda", [True, False])
@pytest.mark.parametrize("unsloth", [True, False])
def test_cpu_profile_always_runnable(cuda, unsloth):
    assert check_runnable(CPU_SMOLLM2, cuda=cuda, unsloth_installed=unsloth) is None


def test_profile_not_runnable_is_a_runtime_error():
    assert issubclass(ProfileNotRunnable, RuntimeError)


def test_check_runnable_detects_unsloth_by_itself(monkeypatch):
    monkeypatch.setattr(session.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ProfileNotRunnable, match="not installed"):
        check_runnable(GPU_MISTRAL7B, cuda=True)


def test_library_versions_are_strings():
    versions = library_versions()
    assert set(versions) == {"python", *LIBRARIES}
    assert all(isinstance(v, str) and v for v in versions.values())
    assert versions["transformers"] == importlib.metadata.version("transformers")


def test_library_versions_reports_missing_packages(monkeypatch):
    real_version = importlib.metadata.version

    def fake_version(name):
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name) if name != "unsloth" else "2026.10.9"

    monkeypatch.setattr(session.importlib.metadata, "version", fake_version)
    versions = library_versions()
    assert versions["bitsandbytes"] == "not installed"
    assert versions["unsloth"] == "2026.10.9"


def test_seed_everything_is_reproducible(torch_one_thread):
    torch = torch_one_thread
    import random

    session.seed_everything(3407)
    first = (torch.rand(3), random.random())
    session.seed_everything(3407)
    second = (torch.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and first[1] == second[1]


def test_start_prints_the_header_and_returns_the_profile(monkeypatch, capsys, torch_one_thread):
    monkeypatch.setenv("CPT_PROFILE", "cpu-smollm2")
    profile = session.start("00_test")
    out = capsys.readouterr().out
    assert profile is CPU_SMOLLM2
    assert "notebook : 00_test" in out
    assert "profile  : cpu-smollm2 (CPT_PROFILE=cpu-smollm2 is set)" in out
    assert "device   : cpu:" in out
    assert "versions : python" in out


def test_start_refuses_a_profile_this_machine_cannot_run(monkeypatch):
    monkeypatch.setenv("CPT_PROFILE", "gpu-mistral7b")
    monkeypatch.setattr(session, "cuda_available", lambda: False)
    monkeypatch.setattr("helpers.profiles.cuda_available", lambda: False)
    with pytest.raises(ProfileNotRunnable, match="cpu-smollm2"):
        session.start("00_test")
