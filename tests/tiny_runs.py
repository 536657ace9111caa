"""Support for the resume and fault tests: a tiny LoRA + embeddings training run on the CPU.

Heavy libraries are imported inside the functions: importing this module at collection time must
not import huggingface_hub before conftest has switched it to offline mode.
"""

from __future__ import annotations

from conftest import build_tiny_llama

from helpers.profiles import CPU_SMOLLM2

# 6 optimizer steps of 2 rows; learning rates 10x the CPU profile's so that every step moves the
# weights visibly (a resumed run that skipped the optimizer state would then show up in the losses).
PROFILE = CPU_SMOLLM2.replace(
    max_steps=6,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    logging_steps=1,
    learning_rate=5e-3,
    embedding_learning_rate=5e-4,
)


def tiny_dataset(tokenizer, rows: int = 16, length: int = 16, seed: int = 0):
    """Return a ``datasets.Dataset`` of random ``input_ids`` rows over the tokenizer's words."""
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tokenizer), (rows, length), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids})


def tiny_peft_model(tokenizer, profile=PROFILE, freeze_embedding_copies: bool = False, seed: int = 0):
    """Return a tiny random Llama with LoRA on every projection and trainable embed_tokens / lm_head
    copies (``modules_to_save``), built by :func:`helpers.training.add_lora`.

    ``freeze_embedding_copies`` reproduces unsloth #3108: the copies come back frozen.
    """
    from helpers.training import add_lora

    model = add_lora(build_tiny_llama(len(tokenizer), tied=False, seed=seed), profile)
    if freeze_embedding_copies:
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.requires_grad_(False)
    return model


def interrupt_at(step: int):
    """Return a callback that raises KeyboardInterrupt (once) when ``step`` optimizer steps are done,
    like Ctrl-C in the middle of the run."""
    from transformers import TrainerCallback

    class InterruptAt(TrainerCallback):
        def __init__(self):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if self.step is not None and state.global_step == self.step:
                self.step = None
                raise KeyboardInterrupt

    return InterruptAt()


def step_recorder():
    """Return a callback whose ``steps`` lists the optimizer steps this trainer actually ran."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    return StepRecorder()


def logged_losses(trainer) -> dict[int, float]:
    """Return ``{step: loss}`` from the trainer's log history."""
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def trainable_state(model) -> dict:
    """Return a copy of every trainable tensor, by name."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
