"""Friendly errors: turn the raw exceptions of the hub, CUDA and the file system into messages that
say what happened and what to do.

Three kinds of failure are translated here, each into an exception whose message is the whole
explanation (no need to read the traceback underneath, which stays chained as ``__cause__``):

- :class:`ModelUnavailableError`: the model could not be fetched (gated, unknown, no token, offline).
- :class:`TrainingOutOfMemory`: the GPU ran out of memory during training; lists the knobs.
- :class:`DiskFullError`: a save ran out of disk space; names the folder and the free space.

A bad adapter is one message too (:class:`AdapterError`), and settings that cannot train are refused
before anything is loaded or written (:class:`SettingsError`, :func:`check_training_settings`,
:func:`check_prompt`). Without these checks, ``max_seq_length=1`` trains on rows with nothing to
predict and reports a loss of 0.0, ``max_steps=0`` trains one step and exits successfully, a batch
size of 0 fails deep inside the data loader, and an empty prompt fails inside ``generate`` with
"cannot reshape tensor of 0 elements". Each message gives the smallest value that works.

Nothing here imports torch, transformers or huggingface_hub at module level.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .profiles import CPU_SMOLLM2, MODEL_ENV_VAR, PROFILE_ENV_VAR, OwnModelError, Profile
from .support.files import FOLDER_MANIFEST, file_problem, folder_manifest_problem, zero_filled_problem
from .support.paths import ARTIFACTS, outputs_location, relative

OFFLINE_DEFAULT = f"{PROFILE_ENV_VAR}={CPU_SMOLLM2.name}"
OFFLINE_HINT = (
    f"Or run the whole series offline on the CPU default, which needs no hub and no token: "
    f"set {OFFLINE_DEFAULT}."
)


# --- model loading ------------------------------------------------------------------------------


class ModelUnavailableError(OSError):
    """The model (or its tokenizer/config) could not be loaded from the hub or the local cache.

    ``reason`` is one of ``"gated"``, ``"not_found"``, ``"unauthorized"``, ``"forbidden"``,
    ``"offline"`` (offline mode is on) or ``"no_network"`` (the hub could not be reached). It is an
    ``OSError``, like the error ``from_pretrained`` raises, so code catching that keeps working.
    """

    def __init__(self, message: str, model_name: str, reason: str):
        super().__init__(message)
        self.model_name = model_name
        self.reason = reason

    def __str__(self) -> str:  # OSError's own __str__ would prefix an errno
        return self.args[0]


def _exception_chain(err: BaseException) -> list[BaseException]:
    """Return ``err`` and every exception it was raised from or during (``__cause__``,
    ``__context__``), outermost first, each once (chains can loop)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        todo += [current.__cause__, current.__context__]
    return chain


def _status_code(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _hub_token_present() -> bool:
    try:
        from huggingface_hub import get_token  # deferred: heavy

        return get_token() is not None
    except Exception:  # no huggingface_hub, unreadable token file: treat as no token
        return False


def hub_offline_mode() -> bool:
    """Return True when the Hugging Face hub is switched off (``HF_HUB_OFFLINE``)."""
    try:
        from huggingface_hub import constants  # deferred: heavy

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def classify_model_error(err: BaseException) -> str | None:
    """Return why loading a model failed (see :class:`ModelUnavailableError`'s ``reason``), or None
    when ``err`` is not a hub / network problem (a broken local file, a bug: left as it is).

    Looks at the whole exception chain, by type first (huggingface_hub's ``GatedRepoError``,
    ``RepositoryNotFoundError``, ``HfHubHTTPError`` with status 401/403, ``LocalEntryNotFoundError``,
    ``OfflineModeIsEnabled``, connection errors), then by message (what transformers and unsloth
    write when they re-raise them as plain ``OSError`` / ``RuntimeError``).
    """
    chain = _exception_chain(err)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    codes = {_status_code(e) for e in chain} - {None}
    text = " ".join(str(e) for e in chain).lower()

    if "GatedRepoError" in names:  # a subclass of RepositoryNotFoundError: test it first
        return "gated"
    if "RepositoryNotFoundError" in names:
        return "not_found"
    if "cannot access gated repo" in text or "trying to access a gated repo" in text:
        return "gated"
    if "not a valid model identifier" in text:
        return "not_found"
    if 401 in codes or "401 unauthorized" in text or "401 client error" in text:
        return "unauthorized"
    if 403 in codes or "403 forbidden" in text:
        return "forbidden"
    if "OfflineModeIsEnabled" in names or "outgoing traffic has been disabled" in text:
        return "offline"
    network_types = {"LocalEntryNotFoundError", "ConnectionError", "ConnectError", "TimeoutException",
                     "ConnectTimeout", "ReadTimeout", "NetworkError"}
    network_words = ("couldn't connect", "connection refused", "connection error", "failed to resolve",
                     "name or service not known", "temporary failure in name resolution",
                     "network is unreachable", "offline mode", "check your internet connection")
    if names & network_types or any(word in text for word in network_words):
        return "offline" if hub_offline_mode() else "no_network"
    return None


def explain_model_error(err: BaseException, model_name: str, token_present: bool | None = None):
    """Return a :class:`ModelUnavailableError` explaining ``err`` for ``model_name``, or None when
    ``err`` is not about reaching the model (see :func:`classify_model_error`).

    ``token_present``: whether a Hugging Face token is configured (``HF_TOKEN`` or ``hf auth
    login``); looked up when None.
    """
    reason = classify_model_error(err)
    if reason is None:
        return None
    if token_present is None:
        token_present = _hub_token_present()
    page = f"https://huggingface.co/{model_name}"
    login = "log in with `hf auth login` (or set HF_TOKEN to a token from https://huggingface.co/settings/tokens)"
    token_state = (
        "A Hugging Face token is configured, so it lacks access to this model."
        if token_present
        else "No Hugging Face token is configured (no HF_TOKEN, no `hf auth login`)."
    )
    if reason == "gated":
        cause = (f"the model is gated: its license must be accepted on {page} before it can be downloaded. "
                 f"{token_state}")
        todo = f"open {page} while logged in, accept the license, then {login} with that account"
    elif reason == "not_found":
        cause = ("the hub has no public model of that name (a typo, a private model, or a gated one asked for "
                 f"without a token). {token_state}")
        todo = ("check the spelling (owner/name) and that the model exists on https://huggingface.co/models; "
                f"if it is private or gated, {login} with an account that has access")
        if model_name.startswith((".", "/", "~")) and not Path(model_name).expanduser().exists():
            cause = f"there is no local folder {model_name!r}, and it is not a model name on the hub either"
            todo = "check the path of the model folder"
    elif reason == "unauthorized":
        cause = f"the hub refused the request as unauthenticated (HTTP 401). {token_state}"
        todo = f"{login}; if a token is set, check that it is valid and not expired"
    elif reason == "forbidden":
        cause = "the hub refused access (HTTP 403): the token has no permission for this model"
        todo = f"use a token with read access, and accept the model's license on {page} if it is gated"
    elif reason == "offline":
        cause = ("offline mode is on (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) and the model is not in "
                 "the local Hugging Face cache")
        todo = "unset HF_HUB_OFFLINE to download it once, or copy the model folder and point the profile at it"
    else:
        cause = "the hub could not be reached (no network, a proxy, or a wrong HF_ENDPOINT) and the model is not in the local cache"
        todo = "check the connection, then run again; once downloaded, the model loads from the cache offline"
    message = f"Cannot load model {model_name!r}: {cause}.\nWhat to do: {todo}.\n{OFFLINE_HINT}"
    return ModelUnavailableError(message, model_name, reason)


@contextmanager
def model_errors_explained(model_name: str) -> Iterator[None]:
    """Re-raise hub / network errors of the ``with`` block as :class:`ModelUnavailableError`
    (chained to the original); other errors pass through unchanged."""
    try:
        yield
    except ModelUnavailableError:
        raise
    except Exception as err:
        explained = explain_model_error(err, model_name)
        if explained is None:
            raise
        raise explained from err


# --- out of memory ------------------------------------------------------------------------------


class TrainingOutOfMemory(RuntimeError):
    """The GPU ran out of memory during training; the message lists what to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """Return True for ``torch.cuda.OutOfMemoryError`` and for the ``RuntimeError`` some kernels
    raise instead ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")."""
    if type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "alloc_failed" in text)


def explain_oom(profile: Profile | None = None) -> str:
    """Return the out-of-memory explanation: the knobs that lower memory, most effective first, with
    the profile's current values when ``profile`` is given."""

    def now(field: str) -> str:
        return f" (now {getattr(profile, field)!r})" if profile is not None else ""

    effective = ""
    if profile is not None:
        batch = profile.per_device_train_batch_size * profile.gradient_accumulation_steps
        effective = f"; raise gradient_accumulation_steps to keep the effective batch of {batch}"
    embeddings = "" if profile is None else (
        " (this profile trains them)" if {"embed_tokens", "lm_head"} & set(profile.target_modules) else
        " (this profile does not train them)")
    lines = [
        "CUDA ran out of memory during training. Lower one of these, then restart the kernel (the failed "
        "step still holds memory) and run again; the training resumes from its last checkpoint:",
        f"  1. per_device_train_batch_size{now('per_device_train_batch_size')}: halve it{effective}.",
        f"  2. max_seq_length{now('max_seq_length')}: activation memory grows with it; 1024 or 512 fits far more.",
        f"  3. use_gradient_checkpointing{now('use_gradient_checkpointing')}: \"unsloth\" (or True) recomputes "
        "activations instead of storing them.",
        f"  4. training embeddings{embeddings}: embed_tokens and lm_head are trained as full copies, with "
        "optimizer state for every entry; drop them from target_modules (LoRA only) if memory is short.",
        f"  5. load_in_4bit{now('load_in_4bit')} and optim{now('optim')}: 4-bit weights and \"adamw_8bit\" "
        "shrink the model and the optimizer state.",
        "Change them with profile.replace(...) (see helpers/profiles.py), or pick a smaller model.",
    ]
    return "\n".join(lines)


@contextmanager
def out_of_memory_explained(profile: Profile | None = None) -> Iterator[None]:
    """Re-raise an out-of-memory error of the ``with`` block as :class:`TrainingOutOfMemory` with
    :func:`explain_oom`'s message (chained to the original), after freeing the CUDA cache."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        try:
            import torch  # deferred: heavy

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        raise TrainingOutOfMemory(explain_oom(profile)) from err


# --- disk full ----------------------------------------------------------------------------------


class DiskFullError(OSError):
    """A save ran out of disk space (or quota); the message names the folder and the free space.
    Its ``errno`` is ENOSPC, like the error it explains."""


def is_disk_full(err: BaseException) -> bool:
    """Return True for ``OSError`` ENOSPC (no space left) and EDQUOT (quota exceeded), also when
    they are the cause of another error (torch and safetensors wrap them in RuntimeError)."""
    for e in _exception_chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(e).lower()
        if "no space left on device" in text:
            return True
        # torch.save's zip writer loses the errno of a short write (issue 31, case 11):
        # "[enforce fail at inline_container.cc:…] . unexpected pos 123 vs 100" / "file write failed"
        if "inline_container.cc" in text and ("unexpected pos" in text or "file write failed" in text):
            return True
    return False


def free_space_text(folder: Path | str) -> str:
    """Return the free space of the file system holding ``folder`` (or its nearest existing
    parent), e.g. ``"0.2 GB free"``."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 1e9:.1f} GB free"
    except OSError:
        return "free space unknown"


def explain_disk_full(folder: Path | str, what: str = "the results", previous_kept: bool = True) -> DiskFullError:
    """Return a :class:`DiskFullError` for a save of ``what`` into ``folder`` that ran out of space."""
    kept = (" Nothing was half-written: the previous version of the folder, if there was one, is "
            "untouched." if previous_kept else "")
    message = (
        f"Disk full while saving {what} to {relative(folder)} ({free_space_text(folder)} on that file system).{kept}\n"
        "What to do: free some space (old checkpoints under outputs/*_trainer are the largest files; "
        "lower save_total_limit to keep fewer), or set CPT_ROOT / CPT_CACHE_DIR to a larger disk, then run again."
    )
    return DiskFullError(errno.ENOSPC, message)


@contextmanager
def disk_full_explained(folder: Path | str, what: str = "the results", previous_kept: bool = True) -> Iterator[None]:
    """Re-raise a disk-full error of the ``with`` block as :class:`DiskFullError` (chained)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise explain_disk_full(folder, what, previous_kept) from err


# --- adapters -----------------------------------------------------------------------------------


class AdapterError(OSError):
    """A saved adapter cannot be loaded: a file is missing or cut off, or it belongs to another
    model or LoRA rank. The message names the file or the mismatch and what to do."""

    def __str__(self) -> str:
        return self.args[0]


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_folder(folder: Path | str, profile: Profile | None = None) -> None:
    """Raise :class:`AdapterError` when ``folder`` is not a loadable PEFT adapter: no
    ``adapter_config.json``, no weights file, a cut-off ``adapter_model.safetensors``, or (with
    ``profile``) another LoRA rank than the profile's. (The manifest that
    :func:`helpers.artifacts.require` checks also compares the model and every LoRA setting.)"""

    folder = Path(folder)
    redo = "Re-run notebooks/05_training.ipynb to train and save it again."
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{relative(folder)} is not an adapter folder: it has no adapter_config.json. {redo}")
    weights = [folder / name for name in ADAPTER_WEIGHTS if (folder / name).exists()]
    if not weights:
        raise AdapterError(f"{relative(folder)} has no adapter weights ({ADAPTER_WEIGHTS[0]} is missing: deleted, or "
                           f"the save never finished). {redo}")
    if (problem := file_problem(weights[0])) is not None:
        raise AdapterError(f"{relative(weights[0])} is damaged: {problem}. {redo}")
    check_adapter_unchanged(folder)
    if profile is None:
        return
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{relative(config_file)} is not valid JSON ({err}). {redo}") from None
    if config.get("r") is not None and config["r"] != profile.lora_r:
        raise AdapterError(f"{relative(folder)} was trained with LoRA rank r={config['r']}, but profile "
                           f"{profile.name!r} uses r={profile.lora_r}: it belongs to another run. {redo}")


def check_adapter_unchanged(folder: Path | str) -> None:
    """Raise :class:`AdapterError` when an adapter folder is not as it was saved: with its own file list
    (``files.sha256.json``: ``scripts/train_cpt.py``'s ``adapter/``, ``save_adapter(…, target)``) a file
    missing, cut off or changed; and, with or without that list, weights that are zero-filled
    (:func:`adapter_weights_problem`: the right size and header, zeros for content). A folder with
    neither that list nor a notebook's manifest is checked by content only, and a printed note says so."""
    if (problem := folder_manifest_problem(folder)) is not None:
        raise AdapterError(f"The adapter in {relative(folder)} is not as it was saved: {problem} (its "
                           f"{FOLDER_MANIFEST} records each file's size and hash). Copy it again from where it was "
                           "saved, or train and save it again (scripts/train_cpt.py, or notebook 05).")
    listed = (Path(folder) / FOLDER_MANIFEST).is_file() or has_artifact_manifest(folder)
    if (problem := adapter_weights_problem(folder)) is not None:
        unlisted = (f" It has no {FOLDER_MANIFEST} (the list of its files' sizes and hashes that save_adapter and "
                    "scripts/train_cpt.py write), so its content was all there was to check." if not listed else "")
        raise AdapterError(f"The adapter in {relative(folder)} is damaged: {problem}.{unlisted} A copy that stopped "
                           "early and was padded with zeros leaves the size and the header right, so it would load "
                           "and silently act as a half-trained adapter. Copy it again from where it was saved "
                           "(with its files.sha256.json), or train and save it again.")
    if not listed and any((Path(folder) / name).is_file() for name in ADAPTER_WEIGHTS):
        print(f"Note: the adapter in {relative(folder)} has no {FOLDER_MANIFEST} (a list of its files' sizes and "
              "hashes), so a file changed after saving cannot be told; its weights were checked by content "
              "(none zero-filled). Copy the whole folder, files.sha256.json included, to keep that check.")


def has_artifact_manifest(folder: Path | str) -> bool:
    """True when ``folder`` is a notebook's artifact (``outputs/05_adapter``) with its manifest in
    ``outputs/manifests/``, which :func:`helpers.artifacts.require` checks file by file."""
    where = outputs_location()
    try:
        folder = Path(folder).resolve()
        for name, (path, _) in ARTIFACTS.items():
            if (where / path).resolve() == folder:
                return (where / "manifests" / f"{name}.json").is_file()
    except OSError:
        return False
    return False


def adapter_weights_problem(folder: Path | str) -> str | None:
    """Return what of an adapter's ``adapter_model.safetensors`` is zero-filled (a matrix entirely
    zero, or its last quarter; LoRA B matrices only when others of them trained), or None."""
    weights = Path(folder) / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return None
    problem = zero_filled_problem(weights)
    return f"{weights.name}: {problem}" if problem else None


def model_weights_content_problem(model_path: Path | str) -> tuple[str, str] | None:
    """Return ``(file name, what is zero-filled)`` for the first ``*.safetensors`` file of a model folder
    (or that file itself) whose weights are zero-filled (:func:`helpers.support.files.zero_filled_problem`),
    or None. Cheap: per tensor only the bytes back from its end to its last non-zero byte are read."""
    model_path = Path(model_path)
    files = [model_path] if model_path.is_file() else sorted(model_path.glob("*.safetensors"))
    for file in files:
        if file.suffix.lower() == ".safetensors" and (problem := zero_filled_problem(file)) is not None:
            return file.name, problem
    return None


def check_model_weights_content(model_path: Path | str, shown: str | None = None) -> None:
    """Raise :class:`helpers.profiles.OwnModelError` when a local model's weights are present but
    zero-filled (:func:`model_weights_content_problem`): the structural checks pass such a file (its
    header and size are right), and the model then loads without a word and generates only EOS."""
    found = model_weights_content_problem(model_path)
    if found is None:
        return
    name, problem = found
    shown = shown or Path(model_path).name
    raise OwnModelError(
        f"{MODEL_ENV_VAR}={shown!r}: its weights file {name} is zero-filled, not trained: {problem}. A copy or "
        "download that stopped early and was padded with zeros (or a damaged disk) leaves the size and the header "
        "right, so it would load without an error and generate nothing useful. Copy or download the weights "
        f"again and compare a checksum with the source's (sha256sum {name}), or save the model there again with "
        "model.save_pretrained(folder).")


@contextmanager
def adapter_errors_explained(folder: Path | str) -> Iterator[None]:
    """Re-raise the raw errors of loading an adapter from ``folder`` (``PeftModel.from_pretrained``,
    unsloth's ``from_pretrained`` on the folder) as :class:`AdapterError` (chained):

    - ``SafetensorError`` (a cut-off weights file);
    - ``HFValidationError: Repo id must be in the form...`` (the weights file is gone, so PEFT takes
      the folder name for a hub id);
    - ``RuntimeError: Error(s) in loading state_dict`` with one "size mismatch" line per tensor (an
      adapter of another model or rank): summarised as a count and the first mismatch.
    """
    try:
        yield
    except AdapterError:
        raise
    except Exception as err:
        names = {cls.__name__ for e in _exception_chain(err) for cls in type(e).__mro__}
        text = str(err)
        shown = relative(folder)
        redo = "Re-run notebooks/05_training.ipynb to train and save it again."
        if "SafetensorError" in names:
            raise AdapterError(f"The adapter weights in {shown} cannot be read ({text.strip()[:120]}): the file is "
                               f"cut off or damaged. {redo}") from err
        if "HFValidationError" in names or "Repo id must be" in text:
            raise AdapterError(f"{shown} holds no adapter weights (adapter_model.safetensors is missing), so PEFT "
                               f"took the folder's name for a hub model id. {redo}") from err
        mismatches = re.findall(r"size mismatch for ([^:]+): copying a param with shape (.+?) from checkpoint, "
                                r"the shape in current model is (.+?)\.?$", text, flags=re.MULTILINE)
        if mismatches:
            name, saved, now = mismatches[0]
            raise AdapterError(
                f"The adapter in {shown} does not fit this model: {len(mismatches)} tensor(s) have other shapes, "
                f"e.g. {name}: {saved} in the adapter, {now} in the model. It was trained on another model or "
                f"with another LoRA rank. Load it with the base model and profile it was trained with, or {redo[0].lower()}"
                f"{redo[1:]}") from err
        raise


MIN_SEQ_LENGTH = 8  # below this a row holds too few tokens to predict anything worth training on


class SettingsError(ValueError):
    """A setting cannot work; the message names it and the smallest value that does."""


def check_prompt(prompt) -> str:
    """Return ``prompt`` unchanged, or raise :class:`SettingsError` when it is empty or blank (the
    model needs at least one token to continue from)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingsError(
            f"The prompt is empty ({prompt!r}): generation continues a text, so it needs at least one word. "
            "Set profile.prompt (or pass prompt=...) to some text, e.g. \"Once upon a time\".")
    return prompt


def check_training_settings(profile: Profile) -> None:
    """Raise :class:`SettingsError` listing every training setting of ``profile`` that cannot work:
    ``max_seq_length`` below :data:`MIN_SEQ_LENGTH`, ``max_steps`` of 0 or below -1 (-1 means "run
    the epochs"), a batch size or gradient accumulation below 1, ``num_train_epochs`` of 0 or less
    (when the epochs decide), a learning rate of 0 or less."""
    problems = []
    if profile.max_seq_length < MIN_SEQ_LENGTH:
        problems.append(f"max_seq_length={profile.max_seq_length}: use at least {MIN_SEQ_LENGTH} tokens per row "
                        "(shorter rows leave almost nothing to predict; the loss is then meaningless)")
    if profile.max_steps == 0 or profile.max_steps < -1:
        problems.append(f"max_steps={profile.max_steps}: use at least 1, or -1 to run num_train_epochs")
    if profile.per_device_train_batch_size < 1:
        problems.append(f"per_device_train_batch_size={profile.per_device_train_batch_size}: use at least 1")
    if profile.gradient_accumulation_steps < 1:
        problems.append(f"gradient_accumulation_steps={profile.gradient_accumulation_steps}: use at least 1")
    if profile.max_steps == -1 and profile.num_train_epochs <= 0:
        problems.append(f"num_train_epochs={profile.num_train_epochs} with max_steps=-1: use more than 0 epochs")
    if profile.learning_rate <= 0:
        problems.append(f"learning_rate={profile.learning_rate}: use a positive learning rate")
    if problems:
        raise SettingsError(f"Profile {profile.name!r} cannot train with these settings:\n  - "
                            + "\n  - ".join(problems) + "\nChange them with profile.replace(...) or on the command line.")


# --- memory a training step needs, estimated before any data is tokenized ---------------------------


ATTENTION_LAYERS_AT_PEAK = 12  # measured: the CPU's attention over a 4-D mask holds about 12 layers' scores
SUGGESTION_SHARE = 0.7  # a smaller setting is suggested only when its estimate fits this share of the memory


def training_memory_estimate(config, *, micro_batch: int, seq_len: int, activation_bytes: int = 4,
                             gradient_checkpointing: bool = False, trainable: int = 0,
                             block_mask: bool = False, attention_scores: bool = False) -> dict:
    """Return what one micro-batch of ``micro_batch`` rows of ``seq_len`` tokens needs to train on the
    plain transformers path, in bytes, beside the loaded model: ``logits`` (the output over the
    vocabulary in the compute dtype, its fp32 copy for the loss and their gradients: ``activation_bytes
    + 8`` per entry), ``activations`` (what each decoder layer keeps for the backward pass: inputs of
    the attention and MLP projections, about ``6 * hidden + 3 * intermediate`` values per token and
    layer; with ``gradient_checkpointing`` only each layer's input plus one layer), ``mask`` (the
    boolean block-diagonal mask of packed rows that keep documents apart, ``seq_len**2`` per row),
    ``attention`` (with ``attention_scores``, the CPU's case: attention over such a mask materialises
    ``heads x seq_len**2`` scores, about :data:`ATTENTION_LAYERS_AT_PEAK` layers of them at the peak),
    ``optimizer`` (16 bytes per trainable parameter: its gradient and AdamW's two moments in fp32),
    ``total``, ``tokens``, ``per_token`` (the part that grows with the tokens) and ``per_square`` (the
    part that grows with ``micro_batch * seq_len**2``).

    Measured on SmolLM2-135M on the CPU (bf16 autocast, no checkpointing, forward and backward, peak RSS
    above the loaded model): 3.8 GiB for 4 x 512, 2 x 1024 and 1 x 2048 tokens, 10.0 GiB for 1 x 4096;
    2 x 8192 was killed by the kernel at 24 GB. This estimate gives 2.2, 2.5, 2.9 and 7.6 GB (45.1 GB for
    2 x 8192): it errs low, so what it refuses cannot fit."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab, hidden = int(text.vocab_size), int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    heads = int(getattr(text, "num_attention_heads", None) or 1)
    intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    per_layer = activation_bytes * (6 * hidden + 3 * intermediate)
    per_token_layers = (activation_bytes * hidden * layers + per_layer) if gradient_checkpointing else per_layer * layers
    per_token = per_token_layers + vocab * (activation_bytes + 8)
    per_square = (1 if block_mask else 0) + (heads * activation_bytes * ATTENTION_LAYERS_AT_PEAK if attention_scores else 0)
    tokens, square = micro_batch * seq_len, micro_batch * seq_len * seq_len
    estimate = {
        "tokens": tokens,
        "per_token": per_token,
        "per_square": per_square,
        "logits": tokens * vocab * (activation_bytes + 8),
        "activations": tokens * per_token_layers,
        "mask": square if block_mask else 0,
        "attention": square * (per_square - (1 if block_mask else 0)),
        "optimizer": 16 * trainable,
    }
    estimate["total"] = sum(estimate[k] for k in ("logits", "activations", "mask", "attention", "optimizer"))
    return estimate


def memory_refusal(estimate: dict, available: int, where: str, *, micro_batch: int, seq_len: int) -> str | None:
    """Return why a training step of ``estimate`` (:func:`training_memory_estimate`) cannot fit the
    ``available`` bytes of ``where`` ("this CPU's memory", "GPU 0"), with the numbers and the largest
    ``--max-seq-length`` / ``--per-device-batch`` that would; None when it fits. The estimate errs low
    (by up to a third, measured), so what it suggests must fit in :data:`SUGGESTION_SHARE` of the memory."""
    if estimate["total"] <= available:
        return None

    def fits(batch: int, length: int) -> bool:
        need = estimate["optimizer"] + batch * length * estimate["per_token"] + batch * length * length * estimate["per_square"]
        return need <= SUGGESTION_SHARE * available

    length = seq_len
    while length > MIN_SEQ_LENGTH and not fits(micro_batch, length):
        length //= 2
    batch = micro_batch
    while batch > 1 and not fits(batch, seq_len):
        batch //= 2
    gb = 1e9
    parts = ", ".join(f"{name} {estimate[name] / gb:.1f} GB" for name in
                      ("logits", "activations", "attention", "mask", "optimizer") if estimate[name])
    options = []
    if length >= MIN_SEQ_LENGTH and fits(micro_batch, length):
        options.append(f"--max-seq-length to {length}")
    if fits(batch, seq_len):
        options.append(f"--per-device-batch to {batch} (and raise --grad-accum to keep the rows per step)")
    todo = " or ".join(options) if options else "the model (a smaller one), or train on a GPU"
    return (f"one micro-batch of {micro_batch} x {seq_len} tokens ({estimate['tokens']:,}) needs about "
            f"{estimate['total'] / gb:.1f} GB to train ({parts}), but {where} has {available / gb:.1f} GB available. "
            f"Lower {todo}; nothing was tokenized or trained.")
