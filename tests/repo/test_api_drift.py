"""API drift: every keyword the notebooks and helpers pass to transformers / TRL / PEFT / datasets /
unsloth must exist in the pinned versions.

Tutorial series rot when a library renames an argument (transformers 5 dropped `warmup_ratio`,
TRL renamed `max_seq_length` to `max_length`): the notebook still parses, and fails only when
someone runs it. This test reads the code cells of notebooks/py/*.py and the helpers with `ast`,
finds calls to the library functions below, and checks each keyword against the installed
signature. unsloth cannot be imported without a GPU, so its signatures are read from its source
(installed with `--no-deps` into .venv/unsloth-src by the Makefile); without that source the unsloth
checks are skipped with the reason printed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "notebooks" / "py").glob("*.py")) + sorted((ROOT / "helpers").rglob("*.py"))
UNSLOTH_SRC = Path(os.environ.get("UNSLOTH_SRC", ROOT / ".venv" / "unsloth-src"))


def _resolve(dotted: str):
    module_name, _, attr_path = dotted.partition(":")
    obj = __import__(module_name, fromlist=["_"])
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


# call as written in our code -> the object whose signature must accept its keywords
LIBRARY_CALLS = {
    "BitsAndBytesConfig": "transformers:BitsAndBytesConfig",
    "TrainingArguments": "transformers:TrainingArguments",
    "DataCollatorForLanguageModeling": "transformers:DataCollatorForLanguageModeling",
    "TextIteratorStreamer": "transformers:TextIteratorStreamer",
    "GPT2Config": "transformers:GPT2Config",
    "LlamaConfig": "transformers:LlamaConfig",
    "get_scheduler": "transformers:get_scheduler",
    "LoraConfig": "peft:LoraConfig",
    "get_peft_model": "peft:get_peft_model",
    "prepare_model_for_kbit_training": "peft:prepare_model_for_kbit_training",
    "PeftModel.from_pretrained": "peft:PeftModel.from_pretrained",
    "load_dataset": "datasets:load_dataset",
    "UnslothTrainer": "trl:SFTTrainer",  # UnslothTrainer subclasses TRL's SFTTrainer without new arguments
}
UNSLOTH_CALLS = {
    "FastLanguageModel.from_pretrained": ("unsloth/models/loader.py", "FastLanguageModel", "from_pretrained"),
    "FastLanguageModel.get_peft_model": ("unsloth/models/llama.py", "FastLlamaModel", "get_peft_model"),
}


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def _calls() -> list[tuple[str, str, list[str]]]:
    """Return (where, call name, keyword names) for every call in the notebooks and helpers."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                keywords = [kw.arg for kw in node.keywords if kw.arg is not None]
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", _call_name(node), keywords))
    return found


def _accepted(obj) -> tuple[set[str], bool]:
    """Return (explicit parameter names, whether **kwargs is accepted) of a callable or class."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def _config_attributes(obj) -> set[str]:
    """For a transformers config class (which takes **kwargs), the attributes a default instance has."""
    from transformers import PreTrainedConfig

    if inspect.isclass(obj) and issubclass(obj, PreTrainedConfig):
        return set(vars(obj())) | set(dir(obj))
    return set()


def test_the_scan_finds_the_library_calls():
    names = {name for _, name, _ in _calls()}
    for expected in ("LoraConfig", "TrainingArguments", "TextIteratorStreamer", "FastLanguageModel.from_pretrained"):
        assert expected in names, f"no call to {expected} found: the scan is broken"


@pytest.mark.parametrize("call", sorted(LIBRARY_CALLS))
def test_library_keywords_exist(call):
    target = _resolve(LIBRARY_CALLS[call])
    accepted, var_kw = _accepted(target)
    accepted |= _config_attributes(target)
    uses = [(where, kws) for where, name, kws in _calls() if name == call]
    for where, keywords in uses:
        unknown = [k for k in keywords if k not in accepted]
        if var_kw and not _config_attributes(target) and not dataclasses.is_dataclass(target):
            continue  # a plain **kwargs pass-through cannot be checked statically
        assert not unknown, f"{where}: {call} does not accept {unknown} in the installed version"


def _recorded_training_kwargs(monkeypatch, profile) -> dict:
    """Run helpers.training.training_arguments with the argument classes replaced by recorders, so
    the GPU profiles' keywords can be checked on a CPU machine without constructing anything."""
    import transformers

    from helpers import training

    seen: dict = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(transformers, "TrainingArguments", Recorder)
    fake_unsloth = types.ModuleType("unsloth")
    fake_unsloth.UnslothTrainingArguments = Recorder
    monkeypatch.setitem(sys.modules, "unsloth", fake_unsloth)
    training.training_arguments(profile, "out", **({"dataset_text_field": "text", "max_length": 8, "packing": True}
                                                  if profile.uses_unsloth else {}))
    return seen


@pytest.mark.parametrize("profile_name", ["cpu-smollm2", "gpu-mistral7b", "gpu-smollm2", "gpu-smoke"])
def test_training_argument_keywords_exist(monkeypatch, profile_name):
    import transformers
    import trl

    from helpers.profiles import PROFILES

    profile = PROFILES[profile_name]
    # unsloth's arguments class extends TRL's SFTConfig (itself a TrainingArguments) by these:
    valid = {f.name for f in dataclasses.fields(trl.SFTConfig if profile.uses_unsloth else transformers.TrainingArguments)}
    kwargs = _recorded_training_kwargs(monkeypatch, profile)
    if profile.uses_unsloth:
        valid |= {"embedding_learning_rate"}
    unknown = sorted(set(kwargs) - valid)
    assert not unknown, f"{profile_name}: training arguments not accepted by the installed versions: {unknown}"
    assert "warmup_ratio" not in kwargs, "transformers 5 removed warmup_ratio; pass the ratio as warmup_steps"


def _unsloth_parameters(relative: str, class_name: str, method: str) -> set[str]:
    tree = ast.parse((UNSLOTH_SRC / relative).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    raise AssertionError(f"{class_name}.{method} not found in {relative}: unsloth's layout changed")


@pytest.mark.parametrize("call", sorted(UNSLOTH_CALLS))
def test_unsloth_keywords_exist(call):
    if not (UNSLOTH_SRC / "unsloth").is_dir():
        pytest.skip(f"unsloth source not found at {UNSLOTH_SRC.name} (unsloth cannot be imported without a GPU; "
                    "`make setup` installs its source with --no-deps for this check)")
    accepted = _unsloth_parameters(*UNSLOTH_CALLS[call])
    uses = [(where, kws) for where, name, kws in _calls() if name == call]
    assert uses, f"no call to {call} found"
    for where, keywords in uses:
        unknown = [k for k in keywords if k not in accepted]
        assert not unknown, f"{where}: unsloth's {call} has no parameter(s) {unknown}"


def test_unsloth_training_arguments_take_the_embedding_learning_rate():
    if not (UNSLOTH_SRC / "unsloth").is_dir():
        pytest.skip("unsloth source not installed; see test_unsloth_keywords_exist")
    assert "embedding_learning_rate" in _unsloth_parameters("unsloth/trainer.py", "UnslothTrainingArguments", "__init__")
