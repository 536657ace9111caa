#!/usr/bin/env python3
"""Why notebook 05 crashed at 7B on a GPU: a second ``Trainer`` built in the process re-points the first.

transformers resets accelerate's process-wide state whenever a ``TrainingArguments`` object picks its
device, which building any ``Trainer`` does. Notebook 05 used to build a tiny CPU-only trainer (to
show the optimizer groups of an untied model) between building the real trainer and training it;
the real trainer then trained with a CPU accelerator, and unsloth's forward failed with "Expected all
tensors to be on the same device". This replays that order on the profile's model (2 steps), then
the fixed order, and prints what each trainer's accelerator says:

    CPT_PROFILE=gpu-mistral7b CPT_RANDOM_WEIGHTS=1 python benchmarks/second_trainer.py   # a CUDA machine

It prints ``RESULT {json}`` with ``"workload": "second_trainer"``. On a CPU the device cannot
change (both trainers are on the CPU); ``tests/unit/test_trainer_state.py`` checks the precision
side there.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def devices_of(model) -> dict[str, int]:
    """Return how many parameters sit on each device (device name -> parameter count)."""
    counts = Counter()
    for param in model.parameters():
        counts[str(param.device)] += param.numel()
    return dict(counts)


def embedding_copy_device(model) -> str:
    """Return the device of the trainable embed_tokens copy (or of the input embeddings)."""
    embedding = model.get_input_embeddings()
    copy = getattr(embedding, "modules_to_save", None)
    weight = copy["default"].weight if copy is not None else embedding.weight
    return str(weight.device)


def main() -> int:
    from helpers.profiles import select_profile

    profile = select_profile()[0]
    if profile.uses_unsloth:
        import unsloth  # noqa: F401  (before transformers)
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.handoff import training_data
    from helpers.modeling import load_model_and_tokenizer
    from helpers.training import add_lora, build_trainer, trainer_state_problem

    result = {"workload": "second_trainer", "profile": profile.name}
    model, tokenizer = load_model_and_tokenizer(profile)
    rows, text = training_data(profile, tokenizer)
    model = add_lora(model, profile)
    short = profile.replace(max_steps=2)
    work = Path(tempfile.mkdtemp(prefix="second-trainer-"))

    def report(label: str, trainer) -> dict:
        facts = {"accelerator_device": str(trainer.accelerator.device), "args_device": str(trainer.args.device),
                 "mixed_precision": str(trainer.accelerator.state.mixed_precision),
                 "embedding_copy": embedding_copy_device(model), "problem": trainer_state_problem(trainer)}
        print(f"{label}: {json.dumps(facts)}", flush=True)
        return facts

    trainer = build_trainer(short, model, tokenizer, rows, output_dir=str(work / "a"), text_dataset=text)
    result["built"] = report("real trainer built", trainer)
    # the former notebook 05 cell: a tiny untied Llama on the CPU, its own trainer, its optimizer
    tiny_profile = profile.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                                   use_gradient_checkpointing=False, optim="adamw_torch", lora_r=8)
    tiny = add_lora(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)), tiny_profile)
    tiny_trainer = build_trainer(tiny_profile, tiny, tokenizer, Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4}),
                                 output_dir=str(work / "tiny"))
    tiny_trainer.create_optimizer()
    result["after_second_trainer"] = report("after a second (CPU) trainer", trainer)
    try:
        trainer.train()
        result["old_order"] = "trained"
    except Exception as err:  # the crash of the issue, expected here
        result["old_order"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    print(f"old order, train(): {result['old_order']}", flush=True)
    result["parameters_by_device_after"] = devices_of(model)
    print(f"parameters by device afterwards: {result['parameters_by_device_after']}", flush=True)
    trainer = build_trainer(short, model, tokenizer, rows, output_dir=str(work / "b"), text_dataset=text)
    result["rebuilt"] = report("real trainer built again, last", trainer)
    try:
        output = trainer.train()
        result["new_order"] = f"trained {output.global_step} steps, loss {output.training_loss:.3f}"
    except Exception as err:
        result["new_order"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    print(f"new order, train(): {result['new_order']}", flush=True)
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if result["new_order"].startswith("trained") else 1


if __name__ == "__main__":
    sys.exit(main())
