"""The teaching copies stay true to the helpers they teach.

Notebooks 01, 04 and 06 show the loading, LoRA and reloading code in full, and later notebooks call
the helper that does the same (``load_model_and_tokenizer``, ``add_lora``, ``load_trained_model``).
These tests run the notebook's own cell (read from ``notebooks/py``) on the plain transformers branch
with a tiny model and check that it gives the same model as the helper; for the unsloth branch, which
needs a GPU, they check that the notebook and the helper pass unsloth the same arguments.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks" / "py"


def notebook_cell(stem: str, marker: str) -> str:
    """Return the source of the one code cell of ``notebooks/py/<stem>.py`` that contains ``marker``."""
    import jupytext

    cells = [c.source for c in jupytext.read(NOTEBOOKS / f"{stem}.py").cells
             if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"{stem}: expected one code cell containing {marker!r}, found {len(cells)}"
    return cells[0]


def unsloth_call(source: str, attribute: str) -> ast.Call:
    """Return the ``FastLanguageModel.<attribute>(...)`` call in ``source``."""
    calls = [node for node in ast.walk(ast.parse(inspect.cleandoc(source) if source.startswith(" ") else source))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == attribute and getattr(node.func.value, "id", None) == "FastLanguageModel"]
    assert len(calls) == 1, f"expected one FastLanguageModel.{attribute} call, found {len(calls)}"
    return calls[0]


def keywords(call: ast.Call) -> dict[str, str]:
    return {k.arg: ast.unparse(k.value) for k in call.keywords}


def run_cell(source: str, namespace: dict) -> dict:
    exec(compile(source, "<notebook cell>", "exec"), namespace)  # noqa: S102  (the repository's own notebook)
    return namespace


def same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny_profile(tmp_path, tiny_llama_factory):
    """A CPU profile whose model is a tiny random Llama saved with a word tokenizer in tmp_path."""
    from conftest import build_word_tokenizer

    from helpers.profiles import CPU_SMOLLM2

    tokenizer = build_word_tokenizer(specials=("</s>", "<pad>"), eos_token="</s>", pad_token="<pad>")
    folder = tmp_path / "tiny-base"
    tiny_llama_factory(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return CPU_SMOLLM2.replace(name="cpu-tiny", model_name=str(folder), lora_r=4)


def test_notebook_01_loading_cell_loads_what_the_helper_loads(tiny_profile):
    from helpers.modeling import load_model_and_tokenizer, resolve_dtype

    cell = notebook_cell("01_load_quantized_model", "AutoModelForCausalLM.from_pretrained(")
    ns = run_cell(cell, {"profile": tiny_profile, "resolve_dtype": resolve_dtype})
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    assert type(ns["model"]) is type(model) and ns["model"].dtype == model.dtype
    assert same_weights(ns["model"], model)
    assert ns["tokenizer"].get_vocab() == tokenizer.get_vocab() and ns["tokenizer"].pad_token == tokenizer.pad_token


def test_notebook_01_and_the_helper_pass_unsloth_the_same_arguments():
    from helpers.modeling import load_model_and_tokenizer

    notebook = keywords(unsloth_call(notebook_cell("01_load_quantized_model", "AutoModelForCausalLM"),
                                     "from_pretrained"))
    helper = keywords(unsloth_call(inspect.getsource(load_model_and_tokenizer), "from_pretrained"))
    assert notebook.keys() == helper.keys()
    # the helper honours a profile's fixed dtype; with the walkthrough's dtype=None both pass None
    assert {k: v for k, v in notebook.items() if k != "dtype"} == {k: v for k, v in helper.items() if k != "dtype"}
    assert notebook["dtype"] == "None" and helper["dtype"].startswith("None if profile.dtype is None")


def test_notebook_04_lora_cell_builds_what_add_lora_builds(tiny_profile, torch_one_thread):
    torch = torch_one_thread
    from helpers.modeling import load_model_and_tokenizer
    from helpers.training import add_lora

    cell = notebook_cell("04_lora", "get_peft_model(")
    base_a, _ = load_model_and_tokenizer(tiny_profile)
    base_b, _ = load_model_and_tokenizer(tiny_profile)
    torch.manual_seed(0)
    notebook_model = run_cell(cell, {"profile": tiny_profile, "model": base_a})["model"]
    torch.manual_seed(0)
    helper_model = add_lora(base_b, tiny_profile)
    assert notebook_model.peft_config["default"].to_dict() == helper_model.peft_config["default"].to_dict()
    trainable = {n for n, p in notebook_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in helper_model.named_parameters() if p.requires_grad}
    assert same_weights(notebook_model, helper_model)  # same seed, so the same LoRA initialisation


def test_notebook_04_and_add_lora_pass_unsloth_the_same_arguments():
    from helpers.training import add_lora

    notebook = keywords(unsloth_call(notebook_cell("04_lora", "get_peft_model("), "get_peft_model"))
    helper = keywords(unsloth_call(inspect.getsource(add_lora), "get_peft_model"))
    # the one addition: a folder per process for unsloth's offloaded embeddings under a multi-GPU
    # launcher (scripts/train_cpt.py); in one process it is unsloth's own default, as in the notebook
    helper_only = {"temporary_location": "unsloth_offload_dir()"}
    assert {key: helper[key] for key in helper_only} == helper_only
    assert {key: value for key, value in helper.items() if key not in helper_only} == notebook


def test_notebook_06_reload_cell_gives_what_load_trained_model_gives(tiny_profile, tmp_path, torch_one_thread):
    torch = torch_one_thread
    from helpers.modeling import load_model_and_tokenizer, load_trained_model
    from helpers.training import add_lora

    trained = add_lora(load_model_and_tokenizer(tiny_profile)[0], tiny_profile)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)  # a non-zero adapter
    trained.save_pretrained(tmp_path / "adapter")

    cell = notebook_cell("06_inference_after_training", "PeftModel.from_pretrained(")
    ns = run_cell(cell, {"profile": tiny_profile, "adapter_dir": tmp_path / "adapter"})
    model, _ = load_trained_model(tiny_profile, tmp_path / "adapter")
    assert not ns["model"].training and not model.training
    assert same_weights(ns["model"], model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {n for n, p in ns["model"].named_parameters() if not p.requires_grad} == frozen  # loaded for inference


def test_notebook_06_and_load_trained_model_pass_unsloth_the_same_arguments():
    from helpers.modeling import load_trained_model

    cell = notebook_cell("06_inference_after_training", "PeftModel.from_pretrained(")
    notebook = keywords(unsloth_call(cell, "from_pretrained"))
    helper = keywords(unsloth_call(inspect.getsource(load_trained_model), "from_pretrained"))
    assert notebook == helper
    assert "FastLanguageModel.for_inference(model)" in cell


# --- notebook 05: the training call ---------------------------------------------------------------


def dict_keywords(source: str, name: str) -> dict[str, str]:
    """Return the keywords of the ``<name> = dict(...)`` assignment in ``source`` (``**x`` as ``**x``)."""
    tree = ast.parse(inspect.cleandoc(source) if source.startswith(" ") else source)
    calls = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == name for t in node.targets) and isinstance(node.value, ast.Call)
             and getattr(node.value.func, "id", None) == "dict"]
    assert len(calls) == 1, f"expected one `{name} = dict(...)`, found {len(calls)}"
    return {(k.arg or f"**{ast.unparse(k.value)}"): ast.unparse(k.value) for k in calls[0].keywords}


def named_call(source: str, name: str) -> ast.Call:
    tree = ast.parse(inspect.cleandoc(source) if source.startswith(" ") else source)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name]
    assert len(calls) == 1, f"expected one {name}(...) call, found {len(calls)}"
    return calls[0]


def test_notebook_05s_plain_branch_is_the_helper_that_later_notebooks_call():
    """On the CPU 05's training call is one line, helpers.checkpoints.build_resumable_trainer, the
    trainer of notebooks 07-10 and scripts/train_cpt.py; the unsloth branch is compared as code below."""
    cell = notebook_cell("05_training", "UnslothTrainingArguments(")
    tree = ast.parse(cell)
    branch = next(node for node in ast.walk(tree) if isinstance(node, ast.If)
                  and ast.unparse(node.test).startswith("profile.uses_unsloth"))
    assert [ast.unparse(n) for n in branch.orelse] == [
        "trainer = build_resumable_trainer(profile, model, tokenizer, train_dataset)"]


def test_notebook_05_and_the_helpers_pass_unsloth_the_same_settings():
    """The unsloth branch needs a GPU: its settings are compared as code. UnslothTrainingArguments gets
    helpers.training.training_arguments' keywords (the checkpoint settings give output_dir and
    save_strategy; the CPU-only ones are left out) and what build_trainer adds for the text."""
    from helpers.training import build_trainer, training_arguments

    cell = notebook_cell("05_training", "UnslothTrainingArguments(")
    notebook = {(k.arg or f"**{ast.unparse(k.value)}"): ast.unparse(k.value)
                for k in named_call(cell, "UnslothTrainingArguments").keywords}
    helper = dict_keywords(inspect.getsource(training_arguments), "kwargs")
    checkpoints = notebook.pop("**checkpoint_settings(profile, train_dataset, text_dataset)")
    assert checkpoints == "checkpoint_settings(profile, train_dataset, text_dataset)"
    for key in ("output_dir", "save_strategy", "use_cpu", "dataloader_num_workers", "disable_tqdm", "bf16", "fp16"):
        helper.pop(key)  # the checkpoint settings; the CPU's; the precision (below)
    assert notebook.pop("report_to") == helper.pop("report_to")
    for key in ("dataset_text_field", "max_length", "packing", "embedding_learning_rate", "bf16", "fp16"):
        notebook.pop(key)
    assert notebook == helper
    precision = {k.arg: ast.unparse(k.value) for k in named_call(cell, "UnslothTrainingArguments").keywords if k.arg}
    assert precision["bf16"] == "is_bfloat16_supported() and profile.dtype != 'float16'"
    assert precision["fp16"] == "not is_bfloat16_supported() or profile.dtype == 'float16'"
    assert 'profile.dtype != "float16"' in inspect.getsource(training_arguments)  # the helper's same rule
    helper_source = inspect.getsource(build_trainer)
    for fragment in ('"dataset_text_field": "text"', '"max_length": profile.max_seq_length', '"packing": profile.packing',
                     "UnslothTrainer(model=model, processing_class=tokenizer, train_dataset=train_dataset"):
        assert fragment in helper_source, fragment
    assert "embedding_learning_rate=profile.embedding_learning_rate" in inspect.getsource(training_arguments)
    trainer_call = {k.arg: ast.unparse(k.value) for k in named_call(cell, "UnslothTrainer").keywords}
    assert trainer_call["processing_class"] == "tokenizer" and trainer_call["train_dataset"] == "text_dataset"
