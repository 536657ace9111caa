"""Measuring training speed: tokens counted per micro-batch, optimizer steps timed with the GPU
synchronised, steady-state tokens/s and the model FLOPs utilisation (MFU).

``scripts/train_cpt.py`` and ``benchmarks/bench_cpt.py`` both measure with these, so a tokens/s in
``benchmarks/RESULTS.md`` means the same thing whichever of the two printed it:

* **tokens** are the real (non-padding) tokens of the micro-batches the model trains on, counted by
  a forward pre-hook (:func:`count_tokens`) without a synchronisation or a collective per step; a
  resumed run's skipped batches are not counted;
* **time** is read at the end of every optimizer step after ``torch.cuda.synchronize()``
  (:class:`StepClock`), so queued GPU work is not mistaken for finished work;
* **steady state** leaves out the first :data:`WARMUP_STEPS_EXCLUDED` optimizer steps (compilation,
  allocator and cache warm-up) when there are more than that (:func:`steady_state`).
"""

from __future__ import annotations

import time

WARMUP_STEPS_EXCLUDED = 2  # steady state = optimizer steps 3..N

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched in this order against the GPU's name.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


class TokenCounts:
    """What :func:`count_tokens` records, one entry per micro-batch trained, in order: ``real``
    (tokens that are not padding) and ``processed`` (every position the model computes, padding
    included). Call :meth:`stop` when training is over."""

    def __init__(self):
        self._real: list = []  # 0-d tensors (no GPU sync while training) or ints
        self.processed: list[int] = []
        self.handle = None

    @property
    def real(self) -> list[int]:
        return [int(x) for x in self._real]

    def __len__(self) -> int:
        return len(self.processed)

    def stop(self) -> None:
        """Stop counting (removes the hook)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def padding_mask(attention_mask):
    """Return ``attention_mask`` when it marks padding (2-D, batch x length), else None: no mask, or a
    4-D mask of which token sees which (packed rows, :class:`helpers.data.PackedRowsCollator`), means
    every position is a real token."""
    return attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None


def count_tokens(model) -> TokenCounts:
    """Count the tokens of every micro-batch ``model`` trains on, from now until ``stop()``; return
    the record.

    A forward pre-hook on the model sees each training micro-batch as the trainer feeds it (after
    any batches a resumed run skips, whatever the prefetching), so entry ``i`` is the ``i``-th
    micro-batch of this ``train()`` call. Real tokens are the ones of a 2-D ``attention_mask``; a
    padding-free batch (one flattened row, no mask) and packed rows with a 4-D mask (which token sees
    which, :class:`helpers.data.PackedRowsCollator`) have no padding at all. The sums stay on the
    device until read, so counting adds no synchronisation. Forwards in eval mode are not counted.
    """
    counts = TokenCounts()

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training or ids is None:
            return
        mask = padding_mask(kwargs.get("attention_mask"))
        counts.processed.append(int(ids.numel()))
        counts._real.append(mask.sum() if mask is not None else int(ids.numel()))

    counts.handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def synchronize_cuda() -> None:
    """Wait for the GPU's queued work (a no-op without CUDA, or before CUDA is used), so that a clock
    read next measures work done, not work launched."""
    import torch  # deferred: heavy

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepClock:
    """Times optimizer steps. :meth:`callback` returns the ``TrainerCallback`` to add to a trainer.

    After training, ``start_step`` is the global step training started from (above 0 when it resumed
    from a checkpoint), ``begin`` the time it started, and ``steps`` holds one
    ``(global_step, seconds, micro_batches_so_far)`` per optimizer step, read after a CUDA
    synchronisation. ``on_step(state)``, when given, runs at each step end *before* the clock is read
    (so a check it makes is charged to that step, e.g. the sync check of the excluded first steps).
    Time handed to :meth:`exclude` (a profiler writing its trace between two steps) is taken off the
    readings that follow, so it is charged to no step.
    """

    def __init__(self, on_step=None):
        self.on_step = on_step
        self.begin: float | None = None
        self.start_step = 0
        self.steps: list[tuple[int, float, int]] = []
        self.consumed = 0
        self.excluded = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of wall time just spent outside training out of every later reading."""
        if seconds < 0:
            raise ValueError(f"cannot exclude a negative time ({seconds} s)")
        self.excluded += seconds

    def callback(self):
        """Return the ``transformers.TrainerCallback`` that feeds this clock."""
        from transformers import TrainerCallback  # deferred: heavy

        clock = self

        class StepTimer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.consumed, clock.steps, clock.start_step, clock.excluded = 0, [], state.global_step, 0.0
                synchronize_cuda()
                clock.begin = time.perf_counter()

            def on_substep_end(self, args, state, control, **kwargs):
                clock.consumed += 1

            def on_step_end(self, args, state, control, **kwargs):
                clock.consumed += 1
                if clock.on_step is not None:
                    clock.on_step(state)
                synchronize_cuda()
                clock.steps.append((state.global_step, time.perf_counter() - clock.excluded, clock.consumed))

        return StepTimer()

    def step_seconds(self) -> list[float]:
        """Return the duration of every optimizer step timed, in order."""
        if self.begin is None:
            return []
        times = [self.begin] + [t for _, t, _ in self.steps]
        return [b - a for a, b in zip(times, times[1:], strict=False)]


def steady_state(clock: StepClock, real_tokens: list[int], skip: int = WARMUP_STEPS_EXCLUDED) -> dict:
    """Return this process's ``tokens`` and ``seconds`` over the optimizer steps after the first
    ``skip`` (over all of them when there are ``skip`` or fewer: then ``steady`` is False), with
    ``steps`` (how many were counted), ``first_step`` / ``last_step`` (their global step numbers) and
    ``tokens_all`` (the tokens of every step timed)."""
    steps = clock.steps
    if not steps:
        return {"tokens": 0, "seconds": 0.0, "steps": 0, "steady": False, "first_step": None, "last_step": None,
                "tokens_all": 0}
    skip = skip if len(steps) > skip else 0
    t0, c0 = (steps[skip - 1][1], steps[skip - 1][2]) if skip else (clock.begin, 0)
    last_step, t1, c1 = steps[-1]
    return {"tokens": sum(real_tokens[c0:c1]), "seconds": t1 - t0, "steps": len(steps) - skip, "steady": bool(skip),
            "first_step": steps[skip][0], "last_step": last_step, "tokens_all": sum(real_tokens[:c1])}


def matmul_parameters(config) -> int:
    """Return N for MFU: the weights of a decoder-only transformer that take part in a matmul
    (attention and MLP projections of every layer, plus ``lm_head``; not the input embedding table,
    which is a lookup, nor the norms). 7,113,539,584 for Mistral-7B-v0.3.

    ``config`` is a transformers config (or anything with the same attributes)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv *= head_dim
    attention = d * q + 2 * d * kv + q * d
    mlp = 3 * d * config.intermediate_size
    return layers * (attention + mlp) + config.vocab_size * d


def peak_tflops(device_name: str | None) -> float | None:
    """Return the dense bf16 peak (TFLOP/s) of a GPU by its name, or None when it is not listed."""
    if not device_name:
        return None
    return next((value for key, value in PEAK_BF16_TFLOPS if key in device_name), None)


def mfu(tokens_per_s: float, n_matmul: int, peak: float | None) -> float | None:
    """Return the model FLOPs utilisation ``6 N tokens/s / peak`` (None without a peak).

    For a frozen base with LoRA and gradient checkpointing the FLOPs executed are also about 6N per
    token (2N forward, 2N recomputed forward, 2N input gradients; frozen weights get no weight
    gradient), so here MFU is about the hardware utilisation too. Attention-score FLOPs are left out.
    """
    if not peak or not tokens_per_s or tokens_per_s != tokens_per_s:
        return None
    return 6 * n_matmul * tokens_per_s / (peak * 1e12)
