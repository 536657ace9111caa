"""environment.yml (conda, GPU path) and pyproject.toml must pin the same versions.

One set of pins serves the CPU and the GPU path; this test fails as soon as the two files disagree,
or when a package the series is built on is missing from environment.yml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CARD_PACKAGES = ["unsloth", "transformers", "trl", "peft", "datasets", "bitsandbytes", "torch", "jupyterlab", "nbval",
                 "matplotlib"]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(requirements: list[str]) -> dict[str, str]:
    parsed = {}
    for requirement in requirements:
        requirement = requirement.split(";")[0].split("#")[0].strip()
        if not requirement or requirement.startswith("-"):
            continue
        match = REQUIREMENT.match(requirement)
        parsed[_normalise(match.group(1))] = match.group(2).replace(" ", "")
    return parsed


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for name, spec in _parse(requirements).items():
        if name not in pins or spec.startswith("=="):  # the exact pin of an extra wins over a range
            pins[name] = spec
    return pins


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    requirements = []
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            requirements += dependency.get("pip", [])
        else:
            requirements.append(dependency.replace("=", "==", 1) if re.match(r"^[\w-]+=[^=]", dependency) else dependency)
    return _parse(requirements)


def test_environment_lists_every_card_package_as_its_own_entry():
    pins = _environment_pins()
    missing = [p for p in CARD_PACKAGES if _normalise(p) not in pins]
    assert not missing, f"environment.yml lacks {missing}"


def test_environment_and_pyproject_pin_the_same_versions():
    ours, env = _pyproject_pins(), _environment_pins()
    disagreements = {name: (ours[name], env[name]) for name in ours.keys() & env.keys() if ours[name] != env[name]}
    assert not disagreements, f"pyproject.toml vs environment.yml: {disagreements}"


def test_environment_pins_nothing_that_pyproject_lacks():
    ours, env = _pyproject_pins(), _environment_pins()
    extra = sorted(set(env) - set(ours) - {"python", "pip", "-e"})
    assert not extra, f"environment.yml pins packages pyproject.toml does not know: {extra}"


def test_the_parser_sees_a_disagreement():
    assert _parse(["torch==2.13.0"]) != _parse(["torch==2.14.1"])
