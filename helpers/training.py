"""LoRA and training: the unsloth calls and their plain transformers + PEFT twins.

Notebook ``04_lora`` teaches :func:`add_lora`; ``05_training`` teaches :func:`build_trainer`, the
embedding learning-rate parameter groups and the collator. Both branches are here so that the
script form and the tests share one implementation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from .data import PackedRowsCollator, text_for_unsloth
from .modeling import cpu_computes_bf16, input_device  # notebook 05 imports cpu_computes_bf16 from here
from .profiles import EMBEDDING_MODULES, LORA_PROJECTIONS, Profile
from .support.varlen_attention import enable_torch_varlen_for_unsloth, unsloth_attention_route

EMBEDDING_GROUP = "embeddings (embed_tokens, lm_head)"
ADAPTER_GROUP = "LoRA adapters"


def split_target_modules(target_modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split the walkthrough's ``target_modules`` into ``(lora_targets, full_modules)``.

    LoRA is a low-rank update for linear projections. ``embed_tokens`` and ``lm_head`` are instead
    trained as full matrices ("modules to save"); unsloth moves them there itself, the plain PEFT
    twin has to be told. Returns the two lists.
    """
    targets = list(target_modules)
    full = [m for m in targets if m in EMBEDDING_MODULES]
    return [m for m in targets if m not in EMBEDDING_MODULES], full


class TargetModulesNotFound(ValueError):
    """The model's linear layers or embeddings could not be found; the message says what to do."""


def find_target_modules(model) -> tuple[list[str], list[str]]:
    """Read the LoRA targets from the model itself: ``(linear_layers, embeddings)``.

    ``linear_layers``: the distinct leaf names of every linear layer inside the repeated transformer
    blocks (attention and MLP: ``q_proj``, ``k_proj``, ..., ``down_proj`` on Llama, Mistral, Qwen2 and
    Gemma; ``c_attn``, ``c_fc``, ... on GPT-2), in the order they first appear. ``embeddings``: the
    names of the input and output embedding modules (``embed_tokens``, ``lm_head``), the output one
    included even when it is tied to the input one. Raises :class:`TargetModulesNotFound` for a model
    without input embeddings or without linear layers in numbered blocks.
    """
    import torch  # deferred: heavy
    from transformers.pytorch_utils import Conv1D  # deferred: heavy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = {id(module): name for name, module in base.named_modules(remove_duplicate=False)}
    embeddings = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(base, getter)()
        if module is None and getter == "get_output_embeddings":
            continue
        if module is None or id(module) not in names:
            raise TargetModulesNotFound(
                f"{type(base).__name__} has no input embedding module that transformers can report "
                "(get_input_embeddings()); set the profile's target_modules by hand (print(model) shows the names).")
        embeddings.append(names[id(module)].split(".")[-1])
    output = base.get_output_embeddings()
    linear = []
    for name, module in base.named_modules():
        parts = name.split(".")
        in_block = any(part.isdigit() for part in parts)  # inside model.layers.N / transformer.h.N
        if in_block and isinstance(module, torch.nn.Linear | Conv1D) and module is not output:
            if parts[-1] not in linear and parts[-1] not in embeddings:
                linear.append(parts[-1])
    if not linear:
        raise TargetModulesNotFound(
            f"{type(base).__name__}: no linear layers found inside numbered transformer blocks, so the LoRA targets "
            "cannot be chosen automatically. Set the profile's target_modules by hand (print(model) shows the "
            "module names), e.g. profile.replace(target_modules=(...names..., 'embed_tokens', 'lm_head')).")
    return linear, list(dict.fromkeys(embeddings))


def uses_walkthrough_targets(profile: Profile) -> bool:
    """True when the profile keeps the walkthrough's ``target_modules`` (every projection plus both
    embeddings), which then means "the model's own linear layers and embeddings"; a profile with a
    hand-made list gets exactly that list."""
    return tuple(profile.target_modules) == LORA_PROJECTIONS + EMBEDDING_MODULES


def target_modules_for(profile: Profile, model=None) -> tuple[list[str], list[str]]:
    """Return ``(lora_targets, full_modules)`` for ``model`` under ``profile``: read from the model
    (:func:`find_target_modules`) when a model is given and the profile keeps the walkthrough's
    targets, else the profile's own list split by :func:`split_target_modules`."""
    if model is not None and uses_walkthrough_targets(profile):
        return find_target_modules(model)
    return split_target_modules(profile.target_modules)


def lora_config(profile: Profile, tie_embeddings: bool = False, model=None):
    """Return the PEFT ``LoraConfig`` equivalent to the profile's unsloth ``get_peft_model`` call.

    ``tie_embeddings``: for models whose input and output embeddings share one matrix (SmolLM2),
    keep them shared while training (one trainable copy) instead of silently untying them.
    ``model``: read the target modules from it (see :func:`target_modules_for`).
    """
    from peft import LoraConfig  # deferred: heavy

    lora_targets, full = target_modules_for(profile, model)
    return LoraConfig(
        r=profile.lora_r,
        lora_alpha=profile.lora_alpha,
        use_rslora=profile.use_rslora,
        lora_dropout=profile.lora_dropout,
        bias=profile.bias,
        target_modules=lora_targets,
        modules_to_save=full,
        ensure_weight_tying=tie_embeddings and bool(full),
        task_type="CAUSAL_LM",
    )


UNSLOTH_OFFLOAD_DIR = "_unsloth_temporary_saved_buffers"  # unsloth's own default


def unsloth_offload_dir(env: dict | None = None) -> str:
    """Return the folder where unsloth's ``get_peft_model`` should write the embeddings it offloads.

    With gradient checkpointing ``"unsloth"`` and ``embed_tokens`` / ``lm_head`` trained in full,
    unsloth saves the original embeddings to a file and memory-maps it back. One process: unsloth's
    own folder. Under a launcher (``RANK`` / ``LOCAL_RANK`` set, ``WORLD_SIZE`` > 1): a folder per
    rank, because with one shared path the second rank rewrites the file the first has mapped, and
    the first dies with SIGBUS (seen on 2 H200s with unsloth 2026.10.9, 2026-11-28).
    """
    env = os.environ if env is None else env
    rank = env.get("RANK") or env.get("LOCAL_RANK")
    if rank is None or int(env.get("WORLD_SIZE") or 1) <= 1:
        return UNSLOTH_OFFLOAD_DIR
    return f"{UNSLOTH_OFFLOAD_DIR}/rank{int(rank)}"


def add_lora(model, profile: Profile):
    """Wrap ``model`` with LoRA adapters (plus full embed_tokens / lm_head) the profile's way.

    The targets are read from the model (:func:`target_modules_for`): its attention and MLP linear
    layers get LoRA, its input and output embeddings are trained in full; tied embeddings stay tied.
    Gradient checkpointing follows the profile (``"auto"``: :func:`choose_gradient_checkpointing`,
    which prints its choice), and with ``profile.embedding_dtype`` the trainable embedding copies are
    stored in that dtype (:func:`cast_embedding_copies`). Returns the PEFT model. unsloth's
    ``FastLanguageModel.get_peft_model`` on the GPU; PEFT's ``get_peft_model`` plus transformers'
    gradient checkpointing elsewhere.
    """
    lora_targets, full_modules = target_modules_for(profile, model)
    checkpointing, why = choose_gradient_checkpointing(profile, model)
    if profile.use_gradient_checkpointing == "auto":
        print(f"Gradient checkpointing: {checkpointing!r} ({why})")
    if profile.uses_unsloth:
        from unsloth import FastLanguageModel  # deferred: needs a GPU

        peft_model = FastLanguageModel.get_peft_model(
            model,
            r=profile.lora_r,
            target_modules=lora_targets + full_modules,
            lora_alpha=profile.lora_alpha,
            lora_dropout=profile.lora_dropout,
            bias=profile.bias,
            use_gradient_checkpointing=checkpointing,
            random_state=profile.seed,
            use_rslora=profile.use_rslora,
            loftq_config=None,
            temporary_location=unsloth_offload_dir(),  # one folder per rank under a launcher
        )
    else:
        from peft import get_peft_model, prepare_model_for_kbit_training  # deferred: heavy

        if profile.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        peft_model = get_peft_model(model, lora_config(profile, tie_embeddings=tied, model=model))
    if profile.embedding_dtype:
        cast_embedding_copies(peft_model, profile.embedding_dtype)
    return peft_model


# Activation memory of one training step without gradient checkpointing, in bytes per token, per
# decoder layer and per unit of hidden size: measured at 7B (Mistral, bf16, packed 2 x 2,048 tokens,
# H200, 2026-12-04): 21.99 GiB peak reserved without checkpointing vs 10.25 GiB recomputing on the GPU,
# 11.7 GiB for 4,096 tokens x 32 layers x 4,096 = 23.5 bytes.
ACTIVATION_BYTES = 24
# fp32 weight + fp32 gradient + 8-bit Adam's two states, per trainable parameter, plus slack.
TRAINABLE_BYTES = 12
CHECKPOINTING_MARGIN = 1.25  # the estimate must fit free memory with 25% to spare


def estimate_trainable_parameters(model, profile: Profile) -> int:
    """Return how many parameters :func:`add_lora` will train on ``model`` (before it is wrapped): r x
    (in + out) for every LoRA target, plus each embedding matrix trained in full (a tied pair once)."""
    lora_targets, full_modules = target_modules_for(profile, model)
    total, seen = 0, set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in lora_targets and hasattr(module, "in_features"):
            total += profile.lora_r * (module.in_features + module.out_features)
        elif leaf in full_modules and getattr(module, "weight", None) is not None:
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                total += module.weight.numel()
    return total


def choose_gradient_checkpointing(profile: Profile, model, free_bytes: int | None = None) -> tuple[bool | str, str]:
    """Return ``(setting, reason)``: the gradient checkpointing this run uses and why.

    A profile's explicit setting (``"unsloth"``, True, False) is kept. ``"auto"`` is decided by the
    GPU's free memory now (``free_bytes``, read from CUDA when None): off when the activations of
    one micro-batch (:data:`ACTIVATION_BYTES` x tokens x layers x hidden size) plus the trainable
    state (:data:`TRAINABLE_BYTES` per trainable parameter) fit with :data:`CHECKPOINTING_MARGIN` to
    spare, since recomputing costs about a third of the step; unsloth's offloaded recomputation when
    they do not. Off without CUDA (the CPU profiles keep every activation)."""
    setting = profile.use_gradient_checkpointing
    if setting != "auto":
        return setting, "the profile's setting"
    if free_bytes is None:
        import torch

        if profile.device != "cuda" or not torch.cuda.is_available():
            return False, "no CUDA device: activations are kept"
        free_bytes = torch.cuda.mem_get_info()[0]
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    tokens = profile.per_device_train_batch_size * profile.max_seq_length
    activations = ACTIVATION_BYTES * tokens * layers * hidden
    state = TRAINABLE_BYTES * estimate_trainable_parameters(model, profile)
    needed = CHECKPOINTING_MARGIN * (activations + state)
    gib = 2**30
    sizes = (f"activations of {tokens:,} tokens about {activations / gib:.1f} GiB + trainable state "
             f"{state / gib:.1f} GiB, x{CHECKPOINTING_MARGIN} = {needed / gib:.1f} GiB; {free_bytes / gib:.1f} GiB free")
    if free_bytes >= needed:
        return False, f"off: it fits ({sizes})"
    return "unsloth", f"unsloth's offloaded recomputation: it does not fit without ({sizes})"


def embedding_copies_of(model) -> dict:
    """Return ``{name: module}`` for the trainable copies of embed_tokens / lm_head that PEFT keeps in
    ``modules_to_save`` (empty for a model without them)."""
    copies = {}
    for name, module in model.named_modules():
        saved = getattr(module, "modules_to_save", None)
        if saved is None or not hasattr(module, "original_module"):
            continue
        for adapter, copy in saved.items():
            copies[f"{name}.modules_to_save.{adapter}"] = copy
    return copies


def cast_embedding_copies(model, dtype: str) -> dict[str, str]:
    """Store the trainable embed_tokens / lm_head copies of ``model`` in ``dtype`` ("float32" keeps
    updates of about the embedding learning rate, which bf16 rounds away) and return
    ``{name: dtype before}`` of every copy. The frozen originals are left as they are; tied copies
    stay tied (the shared parameter is changed in place). Under bf16 autocast the forward pass still
    runs in bf16; only the stored weights and their updates are fp32."""
    import torch

    target = getattr(torch, dtype)
    before = {}
    for name, copy in embedding_copies_of(model).items():
        weight = getattr(copy, "weight", None)
        if weight is None:
            continue
        before[name] = str(weight.dtype).replace("torch.", "")
        if weight.dtype != target:
            copy.to(dtype=target)
    return before


LORA_DTYPES = ("float32", "bfloat16", "float16")


def is_lora_matrix(name: str) -> bool:
    """Return True for the parameter name of a LoRA matrix (``lora_A`` / ``lora_B``)."""
    return "lora_A" in name or "lora_B" in name


def cast_lora_weights(model, dtype: str) -> int:
    """Store every trainable LoRA matrix (``lora_A`` / ``lora_B``) of ``model`` in ``dtype`` (one of
    :data:`LORA_DTYPES`) and return how many tensors were cast.

    unsloth and PEFT keep the adapters in fp32 under bf16 autocast; in 16 bits their weights,
    gradients and optimizer inputs take half the memory (for the walkthrough's r=128 on Mistral-7B:
    335.5 M parameters, 1.34 GB of fp32 weights and as much again in gradients), at the price of
    updates rounded to 16 bits. A memory lever of issue 17, measured by ``benchmarks/bench_cpt.py
    --lora-dtype``; the embedding copies are left as they are. Raises ``ValueError`` for another
    dtype, or when the model has no trainable LoRA matrices.
    """
    import torch  # deferred: heavy

    if dtype not in LORA_DTYPES:
        raise ValueError(f"LoRA dtype {dtype!r}: choose one of {', '.join(LORA_DTYPES)}")
    target = getattr(torch, dtype)
    cast = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and is_lora_matrix(name):
            if parameter.dtype != target:
                parameter.data = parameter.data.to(target)
            cast += 1
    if not cast:
        raise ValueError("the model has no trainable LoRA matrices (lora_A / lora_B): add LoRA first")
    return cast


def is_embedding_parameter(name: str, modules: Iterable[str] = EMBEDDING_MODULES) -> bool:
    """Return True for the trainable copies of embed_tokens / lm_head (the embedding LR applies);
    ``modules`` names the embedding modules when a model calls them otherwise (e.g. GPT-2's ``wte``)."""
    return any(module in name.split(".") for module in modules)


def embedding_modules_of(model) -> tuple[str, ...]:
    """Return the names of the modules trained in full (the embedding LR applies): the PEFT model's
    ``modules_to_save``, or ``embed_tokens`` and ``lm_head`` for a model without them."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    saved = tuple(getattr(config, "modules_to_save", None) or ())
    return saved or EMBEDDING_MODULES


def embedding_param_groups(model, learning_rate: float, embedding_learning_rate: float, weight_decay: float):
    """Return optimizer parameter groups: the adapters at ``learning_rate``, the full embedding
    matrices (embed_tokens and lm_head) at ``embedding_learning_rate``.

    This is what ``UnslothTrainer`` does when ``embedding_learning_rate`` is set. Each group carries
    a ``name`` key so it can be printed and asserted.
    """
    adapters, embeddings = [], []
    modules = embedding_modules_of(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (embeddings if is_embedding_parameter(name, modules) else adapters).append(param)
    groups = [{"name": ADAPTER_GROUP, "params": adapters, "lr": learning_rate, "weight_decay": weight_decay}]
    if embeddings:
        groups.append(
            {"name": EMBEDDING_GROUP, "params": embeddings, "lr": embedding_learning_rate, "weight_decay": weight_decay}
        )
    return groups


def describe_param_groups(optimizer, model) -> list[dict]:
    """Return one dict per optimizer group: its learning rate, tensor and parameter counts, and the
    names of the modules it holds (shortened), for printing and for asserts."""
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for index, group in enumerate(optimizer.param_groups):
        params = group["params"]
        modules = sorted({parameter_kind(names.get(id(p), "?")) for p in params})
        rows.append(
            {
                "group": group.get("name", f"group {index}"),
                "lr": group.get("initial_lr", group["lr"]),
                "weight_decay": group.get("weight_decay", 0.0),
                "tensors": len(params),
                "parameters": sum(p.numel() for p in params),
                "modules": modules,
            }
        )
    return rows


def parameter_kind(name: str) -> str:
    """Return the kind of module a parameter belongs to, e.g. 'lora_A of q_proj' or 'embed_tokens'."""
    for module in EMBEDDING_MODULES:
        if module in name:
            return module
    parts = name.split(".")
    kind = next((p for p in parts if p.startswith("lora_")), parts[-1])
    projection = next((p for p in parts if p.endswith("_proj")), "")
    return f"{kind} of {projection}" if projection else kind


def trainable_breakdown(model) -> dict[str, dict]:
    """Return the trainable parameters grouped by kind: ``{"q_proj (LoRA A+B)": {"parameters": n,
    "dtypes": [...]}, "embed_tokens (full copy)": {...}, ...}``, largest first."""
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = parameter_kind(name)
        key = f"{kind.split(' of ')[1]} (LoRA A+B)" if " of " in kind else f"{kind} (full copy)"
        entry = groups.setdefault(key, {"parameters": 0, "dtypes": []})
        entry["parameters"] += param.numel()
        if str(param.dtype) not in entry["dtypes"]:
            entry["dtypes"].append(str(param.dtype))
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["parameters"]))


def embedding_lr_trainer_class():
    """Return :class:`EmbeddingLRTrainer`, the plain twin of ``UnslothTrainer``; built lazily so that
    importing helpers does not import transformers."""
    from transformers import Trainer  # deferred: heavy

    class EmbeddingLRTrainer(Trainer):
        """``transformers.Trainer`` with a separate learning rate for embed_tokens and lm_head.

        The plain twin of ``UnslothTrainer`` (which subclasses TRL's ``SFTTrainer``, itself a
        ``Trainer``): only the optimizer's parameter groups differ from the stock Trainer.
        """

        def __init__(self, *args, embedding_learning_rate: float | None = None, **kwargs):
            self.embedding_learning_rate = embedding_learning_rate
            super().__init__(*args, **kwargs)

        def train(self, *args, **kwargs):
            """``Trainer.train``, after which the model computes as before: with mixed precision,
            accelerate wraps ``model.forward`` in autocast for training and leaves it wrapped, so a
            perplexity measured afterwards in the same process would be computed in bf16. Only a run
            that ends is unwrapped: after an interruption the wrapper stays, and a second ``train()``
            in the same session (resuming) goes on computing as the first did."""
            from accelerate.utils import extract_model_from_parallel  # deferred: heavy

            result = super().train(*args, **kwargs)
            extract_model_from_parallel(self.model, keep_fp32_wrapper=False)  # restores model.forward
            return result

        def create_optimizer(self, model=None):
            if self.embedding_learning_rate is None or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            groups = embedding_param_groups(
                opt_model, self.args.learning_rate, self.embedding_learning_rate, self.args.weight_decay
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

    return EmbeddingLRTrainer


def fit_warmup(profile: Profile) -> Profile:
    """Return ``profile``, or a copy whose ``warmup_ratio`` leaves at least one step after the warm-up.

    transformers rounds ``warmup_ratio * max_steps`` up to whole steps, and a linear warm-up's first
    step has learning rate 0: a 1-step run (``max_steps=1``, ``train_cpt.py --max-steps 1``) warmed
    up for its one step, trained nothing and then failed "unchanged after training". There the ratio
    becomes ``(max_steps - 1) / max_steps`` (0 for one step: it runs at the full learning rate).
    :func:`build_trainer` applies it; runs of more steps are unchanged."""
    import math

    steps = profile.max_steps
    if profile.warmup_ratio and steps and steps > 0 and math.ceil(profile.warmup_ratio * steps) >= steps:
        return profile.replace(warmup_ratio=(steps - 1) / steps)
    return profile


def training_arguments(profile: Profile, output_dir: str, **overrides):
    """Return the training arguments of the profile: ``UnslothTrainingArguments`` on the unsloth
    branch, ``transformers.TrainingArguments`` otherwise. ``overrides`` replace single fields.
    Mixed precision: bf16 on a GPU that has it, else fp16; on a CPU bf16 when the profile allows it
    (``cpu_bf16``) and the CPU computes bf16 in hardware (:func:`cpu_computes_bf16`), else fp32."""
    import torch  # deferred: heavy

    if profile.device == "cuda":  # a profile in float16 (a T4's) trains in fp16 on any GPU
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and profile.dtype != "float16"
    else:  # the weights, their updates and Adam's state stay fp32; autocast computes in bf16
        bf16 = profile.cpu_bf16 and cpu_computes_bf16()
    fp16 = profile.device == "cuda" and torch.cuda.is_available() and not bf16
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=profile.per_device_train_batch_size,
        gradient_accumulation_steps=profile.gradient_accumulation_steps,
        num_train_epochs=profile.num_train_epochs,
        max_steps=profile.max_steps,
        learning_rate=profile.learning_rate,
        # transformers 5 dropped `warmup_ratio`: a float below 1 in `warmup_steps` is now the ratio.
        warmup_steps=profile.warmup_ratio,
        lr_scheduler_type=profile.lr_scheduler_type,
        optim=profile.optim,
        weight_decay=profile.weight_decay,
        seed=profile.seed,
        logging_steps=profile.logging_steps,
        bf16=bf16,
        fp16=fp16,
        use_cpu=profile.device == "cpu",
        report_to="none",
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kwargs.update(overrides)
    if profile.uses_unsloth:
        from unsloth import UnslothTrainingArguments  # deferred: needs a GPU

        return UnslothTrainingArguments(embedding_learning_rate=profile.embedding_learning_rate, **kwargs)
    from transformers import TrainingArguments  # deferred: heavy

    return TrainingArguments(**kwargs)


def build_trainer(profile: Profile, model, tokenizer, train_dataset, output_dir: str, text_dataset=None,
                  **overrides):
    """Return a ready-to-run trainer for the profile.

    unsloth branch: ``UnslothTrainer`` (TRL ``SFTTrainer`` underneath). Given ``text_dataset`` (the
    stories with EOS appended) it tokenizes, packs or pads itself, as in the walkthrough, which lets
    unsloth choose packing / padding-free batching; otherwise it trains on the ``input_ids`` rows.
    When it packs (``profile.packing`` with ``text_dataset``), unsloth's packed attention is given
    torch's variable-length flash kernel (:func:`use_torch_varlen`), the fastest way measured to keep
    each document's attention to itself; the route taken is in ``trainer.cpt_attention_route``.
    Plain branch: :class:`EmbeddingLRTrainer` on the ``input_ids`` rows, the way Hugging Face's own
    ``run_clm`` example does continued pre-training: packed rows (``profile.packing``) go through
    :class:`helpers.data.PackedRowsCollator`, which keeps each document's attention to itself unless
    ``profile.isolate_documents`` is False; padded rows through transformers' causal-LM collator.
    A warm-up that would take every step is shortened (:func:`fit_warmup`).
    """
    profile = fit_warmup(profile)
    if profile.uses_unsloth:
        from unsloth import UnslothTrainer  # deferred: needs a GPU

        route = None
        text_dataset = text_for_unsloth(text_dataset, tokenizer) if text_dataset is not None else None
        if text_dataset is not None:
            overrides = {"dataset_text_field": "text", "max_length": profile.max_seq_length,
                         "packing": profile.packing, **overrides}
            train_dataset = text_dataset
            if overrides["packing"]:
                route = use_torch_varlen()
        args = training_arguments(profile, output_dir, **overrides)
        trainer = UnslothTrainer(model=model, processing_class=tokenizer, train_dataset=train_dataset, args=args)
        trainer.cpt_attention_route = route
        return trainer
    args = training_arguments(profile, output_dir, **overrides)
    if profile.packing:
        collator = PackedRowsCollator(tokenizer.eos_token_id, isolate_documents=profile.isolate_documents)
    else:
        from transformers import DataCollatorForLanguageModeling  # deferred: heavy

        collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    trainer_cls = embedding_lr_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        embedding_learning_rate=profile.embedding_learning_rate,
    )
    trainer.cpt_attention_route = ("each document attends only to itself (block-diagonal causal mask)"
                                   if profile.packing and profile.isolate_documents else
                                   "documents attend across their EOS" if profile.packing else "padded rows")
    return trainer


class TrainerStateReplaced(RuntimeError):
    """The process-wide accelerate state under a trainer no longer matches the trainer's arguments."""


def trainer_state_problem(trainer) -> str | None:
    """Return why ``trainer`` would not train as its arguments say, or None when it would.

    accelerate keeps one state per process (device, mixed precision), and transformers resets it
    every time a ``TrainingArguments`` object picks its device, which building any ``Trainer`` does.
    So a second trainer built after this one (a demonstration, a short run) silently re-points this
    one: on a GPU a CPU-only second trainer moved the first one's work to the CPU (notebook 05 crashed
    at 7B with "Expected all tensors to be on the same device"), on any machine a second trainer with
    other precision settings changes the first one's autocast."""
    accelerator = getattr(trainer, "accelerator", None)
    args = getattr(trainer, "args", None)
    if accelerator is None or args is None:
        return None
    wanted_device, device = args.device, accelerator.device
    wanted_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    precision = str(accelerator.state.mixed_precision)
    changes = []
    if wanted_device.type != device.type:
        changes.append(f"device {device} instead of {wanted_device}")
    if precision != wanted_precision:
        changes.append(f"mixed precision {precision!r} instead of {wanted_precision!r}")
    if not changes:
        return None
    return ("this trainer would train with " + " and ".join(changes) + ": another Trainer or TrainingArguments "
            "was built in this process after it, and transformers resets accelerate's process-wide state each "
            "time. Build this trainer again (re-run the cell that builds it), after the other one, right before "
            "training.")


def check_trainer_state(trainer) -> None:
    """Raise :class:`TrainerStateReplaced` when :func:`trainer_state_problem` finds one; return None."""
    problem = trainer_state_problem(trainer)
    if problem:
        raise TrainerStateReplaced(problem[0].upper() + problem[1:])


def use_torch_varlen() -> str:
    """Give unsloth's packed attention torch's variable-length flash kernel for the rest of the
    process (:func:`helpers.support.varlen_attention.enable_torch_varlen_for_unsloth`; ``CPT_TORCH_VARLEN=0``
    keeps unsloth's own route) and return the one-line route unsloth now takes. Where the swap is not
    needed or not possible the route says why and unsloth's own choice stays."""
    outcome = enable_torch_varlen_for_unsloth()
    route = unsloth_attention_route()
    return route if outcome.startswith(("enabled", "already enabled")) else f"{route} ({outcome})"


# --- after training: did the embeddings really train? -----------------------------------------


class EmbeddingsNotTrained(AssertionError):
    """embed_tokens / lm_head did not train as configured (frozen, missing from the optimizer, at the
    wrong learning rate, or unchanged); the message lists every problem found."""


def _embedding_copies(model) -> dict:
    """Return ``{name: parameter}`` for the embed_tokens / lm_head matrices that should train: PEFT's
    ``modules_to_save`` copies, or the plain matrices of a model without them (never PEFT's frozen
    ``original_module``). Tied matrices appear under both names."""
    found = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if is_embedding_parameter(name) and "original_module" not in name:
            found[name] = param
    if any("modules_to_save" in name for name in found):
        found = {name: param for name, param in found.items() if "modules_to_save" in name}
    return found


def snapshot_embeddings(model) -> dict:
    """Return a float32 copy of the embed_tokens / lm_head matrices that should train, by name; take
    it before training and pass it to :func:`assert_embeddings_trained` afterwards."""
    return {name: param.detach().float().clone() for name, param in _embedding_copies(model).items()}


def change_shares(before, after) -> dict:
    """Return how much of a matrix an update moved: ``changed_share`` (entries that differ),
    ``rows_touched_share`` (rows with at least one entry changed) and ``changed_in_touched_rows``
    (entries that differ among the touched rows; 0.0 when no row was touched), plus ``max_change``.
    ``before`` / ``after`` are tensors of one shape; ``after`` is compared in its own dtype's values."""
    changed = after.detach().float() != before.to(after.device)
    rows = changed.reshape(changed.shape[0], -1).any(dim=1)
    touched = int(rows.sum())
    in_touched = changed.reshape(changed.shape[0], -1)[rows]
    return {
        "changed_share": changed.float().mean().item(),
        "rows_touched_share": touched / max(1, rows.numel()),
        "changed_in_touched_rows": in_touched.float().mean().item() if touched else 0.0,
        "max_change": (after.detach().float() - before.to(after.device)).abs().max().item(),
    }


def embedding_change_report(model, before: dict) -> dict[str, dict]:
    """Return, for each trainable embedding matrix of ``model`` snapshotted in ``before``
    (:func:`snapshot_embeddings`): its stored ``dtype`` and :func:`change_shares` since the snapshot.
    On 16-bit copies most small updates round away, which this makes visible."""
    current = _embedding_copies(model)
    report = {}
    for name, old in before.items():
        param = current.get(name)
        if param is not None:
            report[name] = {"dtype": str(param.dtype).replace("torch.", ""), **change_shares(old, param)}
    return report


def rounding_survival(weight, step: float, dtype: str = "bfloat16", seed: int = 3407) -> float:
    """Return the share of entries of ``weight`` that change when an update of size ``step`` (with a
    random sign, as Adam's first steps move every entry by about the learning rate) is applied to a
    copy stored in ``dtype``. In fp32 almost all survive; in bf16 only the entries smaller than about
    256 x ``step`` do, since bf16 keeps 8 bits of mantissa."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    stored = weight.detach().to("cpu", getattr(torch, dtype))
    signs = torch.randint(0, 2, stored.shape, generator=generator).float() * 2 - 1
    updated = (stored.float() + step * signs).to(stored.dtype)
    return (updated != stored).float().mean().item()


MIN_CHANGED_SHARE = 0.5


def assert_embeddings_trained(model, before: dict, optimizer, embedding_learning_rate: float,
                              modules: Iterable[str] = EMBEDDING_MODULES,
                              min_changed_share: float = MIN_CHANGED_SHARE) -> dict[str, dict]:
    """Check that embed_tokens and lm_head really trained, the way the recipe says.

    For each of ``modules``: its trainable copy requires gradients, sits in an optimizer group whose
    (initial) learning rate is ``embedding_learning_rate``, differs from the ``before`` snapshot
    (:func:`snapshot_embeddings`), and in the rows that changed at all at least ``min_changed_share``
    of the entries changed. That last check catches updates rounded away: every entry of a row that
    takes part in a step gets a gradient, and Adam moves each by about the learning rate, which a
    16-bit copy cannot hold for most weights (fp32: ~100% change; unsloth's bf16 copies: ~1%).
    unsloth shipped silent failures of the first kinds too: the embedding learning rate accepted and
    then ignored (#4492), the embeddings dropped from training (#9326).
    Returns ``{name: {"lr", "dtype", "max_change", "changed_share", "rows_touched_share",
    "changed_in_touched_rows"}}``; raises :class:`EmbeddingsNotTrained` listing every failed check.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    current = _embedding_copies(model)
    problems, report = [], {}
    for module in modules:
        names = [name for name in before if module in name]
        if not names:
            problems.append(f"{module}: no trainable copy found (is it in target_modules / modules_to_save?)")
    for name, old in before.items():
        param = current.get(name)
        if param is None:
            problems.append(f"{name}: no longer in the model")
            continue
        group = group_of.get(id(param))
        lr = None if group is None else group.get("initial_lr", group["lr"])
        shares = change_shares(old, param)
        dtype = str(param.dtype).replace("torch.", "")
        report[name] = {"lr": lr, "dtype": dtype, **shares}
        short = parameter_kind(name)
        if not param.requires_grad:
            problems.append(f"{short}: frozen (requires_grad=False), so it was never trained (cf. unsloth #9326)")
        if group is None:
            problems.append(f"{short}: not in any optimizer group, so no update can reach it (cf. unsloth #9326)")
        elif not math.isclose(lr, embedding_learning_rate, rel_tol=1e-6):
            problems.append(f"{short}: trained at lr {lr:.3g}, not the embedding learning rate "
                            f"{embedding_learning_rate:.3g} (cf. unsloth #4492)")
        if shares["max_change"] == 0:
            problems.append(f"{short}: unchanged after training")
        elif shares["changed_in_touched_rows"] < min_changed_share:
            problems.append(
                f"{short}: only {shares['changed_in_touched_rows']:.1%} of the entries in the rows that trained "
                f"changed (at least {min_changed_share:.0%} expected). Its trainable copy is stored in {dtype}, "
                f"where an update of about the embedding learning rate ({embedding_learning_rate:.3g}) is smaller "
                "than half a step between neighbouring values and rounds away. Keep the copies in float32: "
                "CPT_EMBEDDING_DTYPE=float32, or profile.replace(embedding_dtype=\"float32\") before add_lora.")
    if problems:
        raise EmbeddingsNotTrained("The embeddings did not train as configured:\n  " + "\n  ".join(problems))
    return report


def embedding_gradient_rows(model, input_ids, labels=None) -> dict:
    """Return how many rows of the input and the output embedding get a non-zero gradient from one
    batch: ``{"embed_tokens": n, "lm_head": n, "vocabulary": V, "distinct_input_tokens": n}``.

    One forward and backward pass on ``input_ids`` (labels = the inputs, as in CPT). The input side's
    gradient is measured at the embedding layer's output and scattered back to the rows of the tokens
    that were looked up, which is exactly the gradient ``embed_tokens`` receives; the output side is
    the gradient of the ``lm_head`` weight, minus the input side's share when the two matrices are tied
    (one tensor). Gradients are zeroed afterwards, so a trainer can start from this model unchanged.
    """
    import torch  # deferred: heavy

    embedding = model.get_input_embeddings()
    copies = _embedding_copies(model)
    head = next((p for n, p in copies.items() if "lm_head" in n), None)
    embed = next((p for n, p in copies.items() if "embed_tokens" in n), None)
    # the input embeddings' device (helpers.modeling.input_device), not ``model.device``: unsloth may
    # have moved the frozen original embeddings to the CPU while the lookups run on the GPU copy
    device = input_device(model)
    input_ids = input_ids.to(device)
    labels = None if labels is None else labels.to(device)
    captured = {}

    def keep_output(module, args, output):
        output.retain_grad()
        captured["output"] = output

    model.zero_grad(set_to_none=True)
    hook = embedding.register_forward_hook(keep_output)
    try:
        loss = model(input_ids=input_ids, labels=input_ids if labels is None else labels).loss
        loss.backward()
    finally:
        hook.remove()
    out_grad = captured["output"].grad.float()
    if head is None or embed is None or head.grad is None:
        model.zero_grad(set_to_none=True)
        raise ValueError("embed_tokens and lm_head must both be trainable (target_modules / modules_to_save)")
    vocab, hidden = head.shape
    input_side = torch.zeros(vocab, hidden, device=out_grad.device)
    input_side.index_add_(0, input_ids.reshape(-1).to(out_grad.device), out_grad.reshape(-1, hidden))
    head_grad = head.grad.float()
    if head is embed:  # tied: one matrix collects both gradients
        head_grad = head_grad - input_side
    result = {
        "embed_tokens": int((input_side.abs().sum(dim=1) > 0).sum().item()),
        "lm_head": int((head_grad.abs().sum(dim=1) > 0).sum().item()),
        "vocabulary": int(vocab),
        "distinct_input_tokens": int(input_ids.unique().numel()),
        "tied": head is embed,
    }
    model.zero_grad(set_to_none=True)
    return result
