"""Several processes, one model: the batch split, model placement, the rank sync check, and sums
over ranks (used by ``scripts/train_cpt.py`` under ``accelerate launch`` / ``torchrun``).

Every function works in a single process too (it then does the one-process thing), so the script
has one code path for one device and for N.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

from ..profiles import Profile

LOSS_TOLERANCE_REL = 0.01  # 1 vs N GPUs at the same global batch: same rows, same steps, so the same losses
# Scaling-efficiency targets by GPU count (issue 18: 1.85x on 2; issue 19: 3.5x on 4); others 0.9.
TARGET_EFFICIENCY = {2: 0.925, 4: 0.875}
DEFAULT_TARGET_EFFICIENCY = 0.9


class SyncCheckFailed(AssertionError):
    """The trainable weights differ between ranks: the processes are not training one model."""


def batch_policy(per_device: int, grad_accum: int, world_size: int) -> dict:
    """Split the one-GPU recipe's batch over ``world_size`` processes, keeping the global batch.

    The profile's ``per_device_train_batch_size`` x ``gradient_accumulation_steps`` is the global batch
    of the recipe on one GPU. On N GPUs the per-device batch stays (same memory per GPU) and gradient
    accumulation becomes ``grad_accum / N``, so the rows behind one optimizer step, and with them the
    learning rates, are unchanged. When N does not divide it, the accumulation is rounded up and
    ``kept`` is False: the global batch grows, the learning rates are NOT rescaled, and the caller
    should say so. Returns ``reference_global_batch``, ``per_device_batch``, ``grad_accum``,
    ``world_size``, ``global_batch`` and ``kept``; raises ``ValueError`` for a size below 1.
    """
    if per_device < 1 or grad_accum < 1 or world_size < 1:
        raise ValueError(f"batch sizes and world size must be at least 1 (got per-device batch {per_device}, "
                         f"gradient accumulation {grad_accum}, world size {world_size})")
    reference = per_device * grad_accum
    accum = max(1, math.ceil(grad_accum / world_size))
    return {
        "reference_global_batch": reference,
        "per_device_batch": per_device,
        "grad_accum": accum,
        "world_size": world_size,
        "global_batch": per_device * accum * world_size,
        "kept": per_device * accum * world_size == reference,
    }


@contextlib.contextmanager
def load_on_local_device(profile: Profile, local_rank: int, distributed: bool):
    """While loading, make the plain transformers branch place the model on this process's GPU.

    ``helpers.modeling.load_model_and_tokenizer`` loads CUDA profiles with ``device_map={"": 0}``,
    right for one GPU, but under DDP every rank's copy would land on GPU 0 (``set_device`` does not
    help: an integer in a device map names a GPU explicitly). Inside this block that request becomes
    ``{"": local_rank}``. The unsloth branch needs nothing: its loader pins each rank to its own GPU
    when it sees a launcher's LOCAL_RANK / WORLD_SIZE. Does nothing in one process or on the CPU.
    """
    if not (distributed and profile.device == "cuda" and not profile.uses_unsloth):
        yield
        return
    from transformers import AutoModelForCausalLM  # deferred: heavy

    def on_local_rank(original):
        def load(*args, **kwargs):
            if kwargs.get("device_map") == {"": 0}:
                kwargs["device_map"] = {"": local_rank}
            return original(*args, **kwargs)

        return load

    with _replaced(AutoModelForCausalLM, "from_pretrained", on_local_rank):
        yield


@contextlib.contextmanager
def plain_cpu_map_location(active: bool):
    """While ``active``, make ``torch.load`` read an indexed CPU location (``cpu:0``) as ``cpu``.

    transformers 5.17 loads a resumed run's optimizer state with ``map_location=args.device`` when
    several processes train; on the CPU (gloo) that device is ``cpu:0``, which ``torch.load`` cannot
    restore ("don't know how to restore data location ... (tagged with cpu:0)"), so a multi-process
    CPU run could not resume. GPU runs (``cuda:N``) are untouched; with ``active`` False nothing is.
    """
    if not active:
        yield
        return
    import torch  # deferred: heavy

    def plain_cpu(original):
        def load(*args, **kwargs):
            location = kwargs.get("map_location")
            if isinstance(location, torch.device) and location.type == "cpu":
                kwargs["map_location"] = "cpu"
            return original(*args, **kwargs)

        return load

    with _replaced(torch, "load", plain_cpu):
        yield


@contextlib.contextmanager
def _replaced(owner, name: str, wrap):
    """Within the block, ``owner.name`` is ``wrap(original)``; afterwards ``owner`` is as it was (its
    own attribute put back as it was stored, e.g. a classmethod, or an inherited one uncovered)."""
    own = vars(owner).get(name)
    setattr(owner, name, wrap(getattr(owner, name)))
    try:
        yield
    finally:
        if own is not None:
            setattr(owner, name, own)
        else:
            delattr(owner, name)


def _process_group():
    """Return ``torch.distributed`` when a process group with more than one rank is running, else None."""
    import torch.distributed as dist  # deferred: heavy

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def trainable_digest(model) -> dict:
    """Return ``sha256`` over the names and bytes of every trainable parameter, their float ``sum``
    and their number of elements (``parameters``)."""
    import torch  # deferred: heavy

    digest, total, count = hashlib.sha256(), 0.0, 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tensor = param.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
        total += tensor.double().sum().item()
        count += tensor.numel()
    return {"sha256": digest.hexdigest(), "sum": total, "parameters": count}


def gather_objects(obj) -> list:
    """Return every rank's ``obj`` in rank order (``all_gather_object``); ``[obj]`` in one process.
    A collective: every rank must call it."""
    dist = _process_group()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_sync(model, when: str) -> dict:
    """Gather every rank's :func:`trainable_digest`; raise :class:`SyncCheckFailed` (listing each
    rank's hash) unless they are identical. A collective. Returns ``when``, ``ranks``, ``identical``,
    a short ``sha256``, ``sum`` and ``parameters``."""
    digests = gather_objects(trainable_digest(model))
    hashes = {d["sha256"] for d in digests}
    if len(hashes) != 1:
        lines = [f"rank {i}: sha256 {d['sha256'][:16]} sum {d['sum']!r}" for i, d in enumerate(digests)]
        raise SyncCheckFailed(f"trainable weights differ between ranks {when}:\n  " + "\n  ".join(lines))
    return {"when": when, "ranks": len(digests), "identical": True, "sha256": digests[0]["sha256"][:16],
            "sum": digests[0]["sum"], "parameters": digests[0]["parameters"]}


def sum_over_ranks(value: float) -> float:
    """Return ``value`` summed over all ranks (unchanged in one process). A collective."""
    return float(sum(gather_objects(float(value))))


def target_efficiency(gpus: int) -> float:
    """Return the scaling-efficiency target for ``gpus`` GPUs (see :data:`TARGET_EFFICIENCY`)."""
    return TARGET_EFFICIENCY.get(gpus, DEFAULT_TARGET_EFFICIENCY)


def compare_runs(baseline: dict, result: dict, tolerance_rel: float = LOSS_TOLERANCE_REL) -> dict:
    """Compare a RESULT with the RESULT of a baseline run (usually one GPU) of the same settings.

    Returns ``speedup`` (tokens/s ratio), ``scaling_efficiency`` (speed-up per added GPU, 1.0 =
    linear), the target for this GPU count, and the loss comparison: at the same global batch both
    runs train on the same rows in the same optimizer steps, so their losses may differ only by
    rounding (reductions in another order, an all-reduce instead of local accumulation);
    ``loss_match`` allows ``tolerance_rel`` of the baseline's loss at every step and needs the same
    global batch and at least one step in common.
    """
    speedup = result["tokens_per_s"] / baseline["tokens_per_s"]
    efficiency = speedup * baseline["gpus"] / result["gpus"]
    pairs = list(zip(baseline["losses"], result["losses"], strict=False))
    diffs = [abs(a - b) for a, b in pairs]
    same_batch = baseline["global_batch"] == result["global_batch"]
    target = target_efficiency(result["gpus"])
    return {
        "baseline_gpus": baseline["gpus"],
        "baseline_tokens_per_s": baseline["tokens_per_s"],
        "speedup": round(speedup, 3),
        "scaling_efficiency": round(efficiency, 3),
        "target_efficiency": target,
        "target_met": efficiency >= target,
        "same_global_batch": same_batch,
        "final_loss_abs_diff": abs(baseline["final_loss"] - result["final_loss"]),
        "loss_max_abs_diff": max(diffs) if diffs else None,
        "loss_tolerance_rel": tolerance_rel,
        "loss_match": same_batch and bool(pairs) and all(d <= tolerance_rel * abs(a) for d, (a, _) in zip(diffs, pairs,
                                                                                                          strict=False)),
    }
