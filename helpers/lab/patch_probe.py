"""Does unsloth patch transformers? A probe that fingerprints library functions before and after.

Nothing here patches anything: it only *records* what names point at, so that what unsloth replaced
can be listed.

unsloth speeds training up by replacing pieces of other libraries at run time: attention and RMSNorm
forwards, the causal-LM forward (fused cross-entropy), TRL's trainer classes, gradient checkpointing.
Whether and what it replaced can be *measured*: record what a dotted name such as
``transformers.Trainer.train`` points at (its ``id``, ``__module__``, ``__qualname__`` and the file and
line that define it) in a process that never imports unsloth, and again in a process that imports
unsloth first and loads a model through it. Python object ids mean nothing across processes, so the
comparison between processes uses module, qualname and source location; ids are compared only
within one process (after ``import unsloth`` vs after ``from_pretrained``).

The probe runs in a subprocess (``python -c``) so the import order is exactly the one asked for:
importing unsloth *after* transformers, as a notebook kernel that already imported transformers
would, is not the same experiment.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..support.paths import project_root

# What the walkthrough's run touches: the trainer, TRL's SFT trainer class, the Llama/Mistral
# attention and causal-LM forwards, the norm, and torch's checkpoint function.
PATCH_TARGETS = (
    "transformers.Trainer.train",
    "transformers.Trainer.training_step",
    "trl.SFTTrainer",
    "transformers.models.llama.modeling_llama.LlamaAttention.forward",
    "transformers.models.llama.modeling_llama.LlamaRMSNorm.forward",
    "transformers.models.llama.modeling_llama.LlamaForCausalLM.forward",
    "transformers.models.mistral.modeling_mistral.MistralForCausalLM.forward",
    "torch.utils.checkpoint.checkpoint",
)
COMPARED = ("module", "qualname", "source")  # the fields that mean the same thing in two processes


def resolve(dotted: str):
    """Return the object a dotted name points at: the longest importable module prefix, then
    attributes. Raises ``ImportError`` / ``AttributeError`` when it does not resolve."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no importable module in {dotted!r}")


def _short_path(file: str) -> str:
    """Return a file path from its package folder on (``transformers/trainer.py``), never absolute."""
    parts = Path(file).parts
    anchors = [i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")]
    return "/".join(parts[anchors[-1] + 1:]) if anchors else Path(file).name


def _source(obj, unwrap: bool) -> str | None:
    """Return ``file:line`` where ``obj``'s code is defined. Without ``unwrap``, a function's own code
    object decides (a wrapper defined elsewhere shows up as elsewhere, even when ``functools.wraps``
    copied the original's name); with it, the innermost wrapped function."""
    target = inspect.unwrap(obj) if unwrap and callable(obj) else obj
    code = getattr(target, "__code__", None)
    if code is not None:
        return f"{_short_path(code.co_filename)}:{code.co_firstlineno}"
    try:
        file = inspect.getsourcefile(target)
        _, line = inspect.getsourcelines(target)
    except (TypeError, OSError):
        return None
    return f"{_short_path(file)}:{line}" if file else None


def fingerprint(dotted: str) -> dict:
    """Return what ``dotted`` points at now: ``{"id", "module", "qualname", "source", "defined"}``
    (``source``: the object's own code; ``defined``: that of the function it wraps, if any), or
    ``{"error": ...}`` when it does not resolve."""
    try:
        obj = resolve(dotted)
    except (ImportError, AttributeError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return {
        "id": id(obj),
        "module": getattr(obj, "__module__", None),
        "qualname": getattr(obj, "__qualname__", None),
        "source": _source(obj, unwrap=False),
        "defined": _source(obj, unwrap=True),
    }


def fingerprint_all(targets=PATCH_TARGETS) -> dict[str, dict]:
    """Return ``{dotted name: fingerprint}`` for every target (one record of what they point at)."""
    return {name: fingerprint(name) for name in targets}


def changes(before: dict[str, dict], after: dict[str, dict], fields=COMPARED) -> dict[str, dict]:
    """Return the targets whose fingerprint differs between two :func:`fingerprint_all` records, as
    ``{name: {"before": {...}, "after": {...}}}`` restricted to ``fields``. Pass ``fields=("id", ...)``
    only for two records of the same process."""
    changed = {}
    for name in before.keys() | after.keys():
        a = {k: before.get(name, {}).get(k) for k in (*fields, "error")}
        b = {k: after.get(name, {}).get(k) for k in (*fields, "error")}
        if a != b:
            changed[name] = {"before": a, "after": b}
    return dict(sorted(changed.items()))


def probe_main(argv: list[str] | None = None) -> None:
    """Entry point of the subprocess (see :func:`run_probe`); prints one JSON object.

    ``plain``: import torch, transformers and trl without unsloth, fingerprint every target. ``unsloth MODEL
    MAX_SEQ_LENGTH LOAD_IN_4BIT``: ``import unsloth`` first, fingerprint, load the model with
    ``FastLanguageModel.from_pretrained``, fingerprint again.
    """
    argv = sys.argv[1:] if argv is None else argv
    mode = argv[0]
    result = {"mode": mode}
    if mode == "plain":
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401

        result["records"] = {"without unsloth": fingerprint_all()}
    elif mode == "unsloth":
        model_name, max_seq_length, load_in_4bit = argv[1], int(argv[2]), argv[3] == "1"
        import unsloth  # noqa: F401  (first: this is the import order the notebooks use)

        after_import = fingerprint_all()
        from unsloth import FastLanguageModel  # deferred: needs a GPU

        FastLanguageModel.from_pretrained(model_name=model_name, max_seq_length=max_seq_length,
                                          dtype=None, load_in_4bit=load_in_4bit)
        result["records"] = {"after import unsloth": after_import, "after from_pretrained": fingerprint_all()}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("PROBE-RESULT " + json.dumps(result))


def run_probe(*args: str, timeout: float = 600) -> dict:
    """Run :func:`probe_main` with ``args`` in a fresh Python process; return its records
    (``{label: fingerprint_all()}``).

    The subprocess runs in a temporary folder with the project root on ``PYTHONPATH``, so ``helpers``
    imports the same code. Raises ``RuntimeError`` with the last lines of its error output on failure.
    """

    root = str(project_root())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="patch-probe-") as cwd:  # unsloth writes a compiled cache into the cwd
        result = subprocess.run(
            [sys.executable, "-c", "from helpers.lab.patch_probe import probe_main; probe_main()", *args],
            capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"the patch probe ({' '.join(args[:1])}) failed:\n{tail}")
    return json.loads(lines[-1][len("PROBE-RESULT "):])["records"]
