"""The first cell of every notebook: pick the profile, check it can run here, seed, print a header."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import warnings

from .profiles import (
    CPU_SMOLLM2,
    PROFILE_ENV_VAR,
    RANDOM_WEIGHTS_ENV_VAR,
    Profile,
    cuda_available,
    select_profile,
    weights_are_random,
)

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "unsloth")


class ProfileNotRunnable(RuntimeError):
    """The chosen profile needs something this machine lacks; the message says how to switch."""


def library_versions() -> dict[str, str]:
    """Return the installed version of each library the series uses ("not installed" if absent)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_runnable(profile: Profile, cuda: bool | None = None, unsloth_installed: bool | None = None) -> None:
    """Raise :class:`ProfileNotRunnable` when ``profile`` cannot run on this machine: a CUDA profile
    without a CUDA device, or an unsloth profile without unsloth installed."""
    cuda = cuda_available() if cuda is None else cuda
    if unsloth_installed is None:
        unsloth_installed = importlib.util.find_spec("unsloth") is not None
    switch = f"Run the offline CPU profile instead: set {PROFILE_ENV_VAR}={CPU_SMOLLM2.name} (or unset {PROFILE_ENV_VAR})."
    if profile.device == "cuda" and not cuda:
        raise ProfileNotRunnable(f"Profile {profile.name!r} needs a CUDA GPU, and torch sees none. {switch}")
    if profile.uses_unsloth and not unsloth_installed:
        raise ProfileNotRunnable(
            f"Profile {profile.name!r} runs through unsloth, which is not installed. "
            f"Install the GPU extra (pip install -e '.[gpu]'), or: {switch}"
        )


def device_description(profile: Profile) -> str:
    """Return a short description of the device the profile runs on (GPU name or CPU threads)."""
    import torch  # deferred: heavy

    if profile.device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.machine()}, {torch.get_num_threads()} torch threads"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) through transformers' ``set_seed``."""
    from transformers import set_seed  # deferred: heavy

    set_seed(seed)


def start(notebook: str) -> Profile:
    """Choose and check the profile, seed everything, print the run header; return the profile."""
    # Without ipywidgets tqdm falls back to text bars (fine in notebooks and in CI logs); its warning
    # about that would print an absolute path of the local install into the notebook.
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # old escape sequences in some dependencies
    profile, reason = select_profile()
    check_runnable(profile)
    emulated = emulate_gpu(profile)
    if profile.uses_unsloth:
        import unsloth  # noqa: F401  (unsloth must be imported before transformers to patch it)
    seed_everything(profile.seed)
    versions = library_versions()
    print(f"notebook : {notebook}")
    print(f"profile  : {profile.name} ({reason})")
    print(f"           {profile.description}")
    own = f", replaces {profile.name}'s model (CPT_MODEL)" if profile.own_model else ""
    print(f"model    : {profile.model_label} (backend: {profile.backend}, 4-bit: {profile.load_in_4bit}{own})")
    print(f"device   : {device_description(profile)}")
    if profile.device == "cuda":
        for line in gpu_plan(profile):
            print(line)
    if emulated:
        print(f"emulated : {emulated}")
    print("versions : " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if profile.is_smoke_model:
        print("NOTE     : smoke-test profile: the model is randomly initialised, so every generated text "
              "below is meaningless; the run checks that each code path works.")
    elif weights_are_random(profile):
        print(f"NOTE     : {RANDOM_WEIGHTS_ENV_VAR}=1: {profile.model_name} has its real architecture but random "
              "weights here, so this run measures speed and memory, not quality (texts, perplexities and "
              "recall below are meaningless, and the asserts that need a trained model are skipped).")
    return profile


# What each emulated GPU changes: PyTorch's memory cap in GiB, and whether torch's varlen flash kernel
# runs on it (compute capability 8.0 and up).
EMULATED_GPUS = {"T4": {"memory_gib": 15.0, "varlen": False}}


def emulate_gpu(profile: Profile, env: dict | None = None) -> str | None:
    """Make this process behave like the smaller GPU that ``profile.emulate_gpu`` names (see
    :data:`EMULATED_GPUS`): cap PyTorch's allocations on GPU 0 at its memory, and switch torch's varlen
    kernel off where that GPU lacks it (``CPT_TORCH_VARLEN=0``). Returns a line saying what was done,
    or None when the profile emulates nothing. Raises ``ValueError`` for an unknown name, and
    ``RuntimeError`` when the real GPU is smaller than the emulated one."""
    if not profile.emulate_gpu or profile.device != "cuda":
        return None
    spec = EMULATED_GPUS.get(profile.emulate_gpu)
    if spec is None:
        raise ValueError(f"emulate_gpu={profile.emulate_gpu!r}: choose one of {', '.join(EMULATED_GPUS)}.")
    import torch  # deferred: heavy

    env = os.environ if env is None else env
    if not spec["varlen"]:
        env["CPT_TORCH_VARLEN"] = "0"
    total = torch.cuda.get_device_properties(0).total_memory
    cap = spec["memory_gib"] * 2**30
    if cap > total:
        raise RuntimeError(f"this GPU has {total / 2**30:.1f} GiB, less than the {spec['memory_gib']:.0f} GiB of the "
                           f"{profile.emulate_gpu} that {profile.name} emulates: run {profile.name} on a larger GPU.")
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    return (f"a {profile.emulate_gpu}: PyTorch may allocate at most {spec['memory_gib']:.0f} of this GPU's "
            f"{total / 2**30:.1f} GiB, dtype {profile.dtype}"
            + ("" if spec["varlen"] else ", torch's varlen kernel off (CPT_TORCH_VARLEN=0)"))


def gpu_plan(profile: Profile) -> list[str]:
    """Return the lines that say what this GPU gives the run: its name, compute capability and free
    memory; the dtype the model computes in (auto: bf16 where the GPU has it, else fp16, as on a T4); and
    the route of the packed attention (torch's varlen kernel from compute capability 8.0, else the
    fallback, unsloth's own route: :func:`helpers.support.varlen_attention.planned_route`)."""
    import torch  # deferred: heavy

    from .modeling import resolve_dtype
    from .support.varlen_attention import planned_route

    capability = tuple(torch.cuda.get_device_capability(0))
    try:
        free, total = torch.cuda.mem_get_info(0)
        memory = f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    except Exception as err:  # a driver that cannot tell
        memory = f"free memory unknown ({type(err).__name__})"
    lines = [f"gpu      : {torch.cuda.get_device_name(0)}, compute capability {capability[0]}.{capability[1]}, {memory}"]
    dtype = str(resolve_dtype(profile)).removeprefix("torch.")
    if profile.dtype:
        why = "the profile's setting"
    elif dtype == "bfloat16":
        why = "auto: this GPU computes in bf16"
    else:
        why = "auto: no bf16 on this GPU, which is older than Ampere (e.g. a T4)"
    lines.append(f"dtype    : {dtype} ({why})")
    if profile.packing and profile.uses_unsloth:
        lines.append(f"attention: {planned_route(capability)}")
    elif profile.uses_unsloth:
        lines.append("attention: padded rows (CPT_PACKING=0), one story per row: unsloth chooses its kernel")
    return lines
