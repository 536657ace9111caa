#!/usr/bin/env python3
"""Benchmark continued pre-training: unsloth vs plain transformers + PEFT + bitsandbytes (issue 4).

Workload A, throughput
    The Mistral-7B-v0.3 *architecture* (vocab 32768, hidden 4096, 32 layers, 32 heads, 8 KV heads,
    intermediate 14336, rope_theta 1e6), RANDOMLY INITIALISED and saved as a local Hugging Face folder
    (no hub download: the device machine has no network). Loaded in 4-bit; LoRA r=128, rsLoRA,
    alpha 32 on q,k,v,o,gate,up,down plus embed_tokens and lm_head trained in full; sequences of
    2048 random token ids; batch 2 x grad-accum 8; gradient checkpointing; 8-bit AdamW; bf16.
    Two arms, each in its own subprocess (unsloth patches transformers at import), plain FIRST:
      plain    transformers + PEFT + bitsandbytes (nf4, double quant, bf16 compute, sdpa,
               prepare_model_for_kbit_training, modules_to_save, transformers.Trainer,
               optim paged_adamw_8bit)
      unsloth  FastLanguageModel 4-bit + get_peft_model(use_gradient_checkpointing="unsloth",
               use_rslora=True) + UnslothTrainer (embedding_learning_rate 5e-6, optim adamw_8bit)
    Steady-state tokens/s is timed over optimizer steps warmup+1..N (CUDA-synchronised
    perf_counter in a TrainerCallback).

Workload B, the walkthrough's epoch
    2,500 documents whose token lengths are drawn (with replacement, seed 3407) from the lengths of
    the shipped TinyStories sample (benchmarks/tinystories_lengths.json, computed on CPU with the
    SmolLM2 tokenizer, EOS appended); random token ids; the same model; bs 2 x GA 8, one epoch
    (157 optimizer steps; the walkthrough reports 156) with the walkthrough's settings. Modes (unsloth arm by default):
      padding_free  each micro-batch flattened into one row without padding, the same 157 steps
      packing       documents packed into 2048-token rows (fewer, fuller steps)
      padded        one padded story per row, as the walkthrough (padding_free=False)
    Each mode runs a capped number of steps and EXTRAPOLATES to the epoch (said in its RESULT line).

Every run prints `RESULT {json}` as its last line; the driver prints a table and a summary last.

MFU = 6 * N * tokens_per_s / peak, N = parameters that take part in a matmul (everything except the
input embedding table and the norm weights; lm_head included: 7.11e9 for Mistral-7B). For a frozen
base with LoRA and gradient checkpointing the FLOPs actually executed are also ~6N per token
(2N forward + 2N recomputed forward + 2N input gradients; frozen weights get no weight gradient),
so MFU ~ HFU here. Causal attention-score FLOPs are left out (+3.8% at 2048 tokens).
Peak: H100 SXM / H200 dense bf16 989.4 TFLOP/s, H100 PCIe 756, A100 312.

Examples
    python3 benchmarks/bench_cpt.py                    # both workloads on the GPU (device machine)
    python3 benchmarks/bench_cpt.py --workloads A      # throughput only
    python3 benchmarks/bench_cpt.py --test-mode        # CPU smoke test of the logic (seconds)
    python3 benchmarks/bench_cpt.py --compute-lengths  # rebuild tinystories_lengths.json (CPU)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LENGTHS_JSON = HERE / "tinystories_lengths.json"
SCRIPT = str(Path(__file__).resolve())
SEED = 3407

# Mistral-7B-v0.3 (config.json of mistralai/Mistral-7B-v0.3), written out so no hub access is needed.
MISTRAL_7B_V03 = dict(
    vocab_size=32768,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-5,
    sliding_window=None,
    tie_word_embeddings=False,
    hidden_act="silu",
    initializer_range=0.02,
)
# --test-mode: same family, tiny, so the whole script runs on 2 CPU cores in seconds.
TINY_MISTRAL = dict(
    MISTRAL_7B_V03,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
)
SPECIAL_TOKENS = {"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (3, "<pad>")}
FIRST_ORDINARY_ID = 4

LORA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDINGS = ["embed_tokens", "lm_head"]

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, matched against torch.cuda.get_device_name().
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]
WALKTHROUGH = {"train_runtime_s": 536.0, "minutes": 8.94, "gpu": "A100-40GB", "steps": 156}

ALL_B_MODES = ("padding_free", "packing", "padded")


# --------------------------------------------------------------------------------------------------
# small utilities


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def emit_result(record: dict) -> None:
    print("RESULT " + json.dumps(record, sort_keys=False), flush=True)


def count_params(cfg: dict) -> dict:
    """Parameter counts of a Mistral config: total, and N for MFU (matmul weights incl. lm_head)."""
    d, L, V, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg["num_key_value_heads"] * hd
    attn = d * q + 2 * d * kv + q * d
    mlp = 3 * d * inter
    layer = attn + mlp + 2 * d
    total = V * d + L * layer + d + (0 if cfg.get("tie_word_embeddings") else V * d)
    matmul = L * (attn + mlp) + V * d
    lora = lambda r: L * r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + inter) + (inter + d))  # noqa: E731
    return {"total": total, "matmul": matmul, "lora_r128": lora(128), "embeddings_full": 2 * V * d}


def peak_tflops_for(name: str | None) -> float | None:
    if not name:
        return None
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    return None


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform_python()}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "trl",
        "accelerate",
        "bitsandbytes",
        "datasets",
        "unsloth",
        "unsloth_zoo",
        "triton",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except Exception:  # pragma: no cover
        pass
    return out


def platform_python() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def load_lengths() -> list[int]:
    data = json.loads(LENGTHS_JSON.read_text())
    return [int(x) for x in data["lengths"]]


def draw_doc_lengths(n_docs: int, max_len: int, seed: int = SEED) -> list[int]:
    """n_docs lengths drawn with replacement from the sample's length list, capped at max_len."""
    rng = random.Random(seed)
    pool = load_lengths()
    return [min(rng.choice(pool), max_len) for _ in range(n_docs)]


def random_rows(lengths: list[int], vocab: int, seed: int = SEED, eos: bool = True) -> list[list[int]]:
    """One row of random ordinary token ids per length (ids >= 4: never unk/bos/eos/pad); EOS last."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        ids = rng.integers(FIRST_ORDINARY_ID, vocab, size=n, dtype=np.int64)
        if eos:
            ids[-1] = SPECIAL_TOKENS["eos"][0]
        rows.append(ids.tolist())
    return rows


def expected_padded_tokens(lengths: list[int], batch: int, seed: int = SEED) -> float:
    """Expected padded tokens of one epoch when rows are shuffled and padded to the longest of a batch."""
    rng = random.Random(seed)
    totals = []
    for _ in range(20):
        order = lengths[:]
        rng.shuffle(order)
        totals.append(sum(batch * max(order[i : i + batch]) for i in range(0, len(order), batch)))
    return statistics.mean(totals)


# --------------------------------------------------------------------------------------------------
# model folder


def build_tokenizer(vocab_size: int):
    """A trivial word-level tokenizer whose vocab is exactly the model's: <unk> <s> </s> <pad> t4 ...

    The benchmark feeds random token ids; the tokenizer exists only because unsloth and TRL load one
    from the model folder (pad token, EOS id). No merges, no pre-tokenizer subtleties.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: idx for idx, tok in SPECIAL_TOKENS.values()}
    vocab.update({f"t{i}": i for i in range(FIRST_ORDINARY_ID, vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=MISTRAL_7B_V03["max_position_embeddings"],
        padding_side="right",
    )


def build_model_folder(model_dir: Path, cfg_dict: dict, device: str) -> None:
    """Create the randomly initialised model (on the GPU in bf16, or on CPU in fp32) and save it."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    t0 = time.perf_counter()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = MistralConfig(**cfg_dict, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = MistralForCausalLM._from_config(cfg, dtype=dtype)
        # explicit init, independent of transformers' lazy-init rules: N(0, 0.02), norms at 1
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, cfg.initializer_range)
    n = sum(p.numel() for p in model.parameters())
    log(
        f"random-init Mistral built on {device} in {time.perf_counter() - t0:.1f}s: {n / 1e9:.3f}B params, {dtype}"
    )
    t1 = time.perf_counter()
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(model_dir, max_shard_size="5GB")
    except Exception as err:  # safetensors from GPU tensors: retry from host memory
        log(f"save_pretrained from {device} failed ({type(err).__name__}: {err}); retrying from CPU")
        model.to("cpu").save_pretrained(model_dir, max_shard_size="5GB")
    build_tokenizer(cfg.vocab_size).save_pretrained(model_dir)
    (model_dir / "BENCH_RANDOM_INIT.json").write_text(
        json.dumps(
            {
                "what": "Mistral-7B-v0.3 architecture, RANDOMLY INITIALISED (N(0,0.02)), saved locally by "
                "benchmarks/bench_cpt.py; not the hub weights (no network on the device machine).",
                "config": cfg_dict,
                "dtype": str(dtype),
                "params": n,
                "date": now_iso(),
            },
            indent=1,
        )
    )
    log(f"saved to {model_dir} in {time.perf_counter() - t1:.1f}s")


def model_folder_ok(model_dir: Path, cfg_dict: dict) -> bool:
    marker = model_dir / "BENCH_RANDOM_INIT.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text())["config"] == json.loads(json.dumps(cfg_dict))
    except Exception:
        return False


# --------------------------------------------------------------------------------------------------
# measurement


class Meter:
    """Counts tokens per micro-batch (real = non-pad, padded = what the GPU processes)."""

    def __init__(self):
        self.real = 0
        self.padded = 0
        self.micro_batches = 0

    def add(self, inputs: dict) -> None:
        if os.environ.get("BENCH_DEBUG_METER"):
            print(
                "meter",
                {k: (tuple(v.shape), int(v.sum())) for k, v in inputs.items() if hasattr(v, "shape")},
                flush=True,
            )
        ids = inputs.get("input_ids")
        if ids is None:
            return
        mask = inputs.get("attention_mask")
        self.padded += int(ids.numel())
        self.real += int(mask.sum()) if mask is not None else int(ids.numel())
        self.micro_batches += 1


def make_step_timer(
    meter: Meter, warmup: int, max_timed: int, max_timed_s: float, deadline_at: float | None, cuda: bool
):
    """TrainerCallback: synchronised timestamps at every optimizer step; stops training once enough
    steps past warm-up are timed (or the deadline is near)."""
    import torch
    from transformers import TrainerCallback

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t_begin = None
            self.times: list[float] = []
            self.real: list[int] = []
            self.padded: list[int] = []
            self.stop_reason = None
            self.losses: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.t_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            t = time.perf_counter()
            prev = self.times[-1] if self.times else self.t_begin
            self.times.append(t)
            self.real.append(meter.real)
            self.padded.append(meter.padded)
            step = len(self.times)
            dr = meter.real - (self.real[-2] if step > 1 else 0)
            print(
                f"[step {state.global_step}] {t - prev:.3f}s  real tokens {dr}  ({dr / max(t - prev, 1e-9):.0f} tok/s)",
                flush=True,
            )
            timed = step - warmup
            if timed >= max_timed:
                self.stop_reason = f"timed {timed} steps"
            elif timed >= 2 and t - self.times[warmup - 1] >= max_timed_s:
                self.stop_reason = f"timed window reached {max_timed_s:.0f}s"
            elif deadline_at is not None and time.time() > deadline_at:
                self.stop_reason = "deadline"
            if self.stop_reason:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def summary(self) -> dict:
            n = len(self.times)
            out = {
                "steps_run": n,
                "warmup_steps": warmup,
                "stop_reason": self.stop_reason,
                "warmup_s": None,
                "timed_steps": 0,
            }
            if n >= warmup and warmup > 0:
                out["warmup_s"] = round(self.times[warmup - 1] - self.t_begin, 3)
            if n > warmup:
                start = self.times[warmup - 1] if warmup > 0 else self.t_begin
                real0 = self.real[warmup - 1] if warmup > 0 else 0
                pad0 = self.padded[warmup - 1] if warmup > 0 else 0
                dt = self.times[-1] - start
                steps = [
                    b - a for a, b in zip([start] + self.times[warmup:-1], self.times[warmup:], strict=True)
                ]
                out.update(
                    timed_steps=n - warmup,
                    timed_s=round(dt, 3),
                    tokens_per_s=round((self.real[-1] - real0) / dt, 1),
                    padded_tokens_per_s=round((self.padded[-1] - pad0) / dt, 1),
                    real_tokens_timed=self.real[-1] - real0,
                    padded_tokens_timed=self.padded[-1] - pad0,
                    step_s_mean=round(statistics.mean(steps), 4),
                    step_s_median=round(statistics.median(steps), 4),
                    step_s_min=round(min(steps), 4),
                    step_s_max=round(max(steps), 4),
                )
            out["elapsed_s"] = round(
                (self.times[-1] if self.times else time.perf_counter()) - self.t_begin, 3
            )
            out["last_loss"] = self.losses[-1] if self.losses else None
            return out

    return StepTimer()


# --------------------------------------------------------------------------------------------------
# one arm, in its own process


def run_arm(args) -> int:
    arm = args.arm
    if arm == "unsloth":
        import unsloth  # noqa: F401  -- must come before transformers: it patches it at import
    import torch
    import transformers  # noqa: F401

    cuda = torch.cuda.is_available() and not args.test_mode
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_tflops_for(gpu) if cuda else None
    cfg = TINY_MISTRAL if args.test_mode else MISTRAL_7B_V03
    n_params = count_params(cfg)
    base = {
        "arm": arm,
        "gpu": gpu,
        "model": (
            "tiny random-init Mistral (test mode)"
            if args.test_mode
            else "random-init Mistral-7B-v0.3 architecture, local HF folder, no hub"
        ),
        "seq_len": args.seq_len,
        "per_device_batch": args.batch_size,
        "grad_accum": args.grad_accum,
        "load_in_4bit": not args.test_mode,
        "lora": "r=128 rsLoRA alpha=32 q,k,v,o,gate,up,down + full embed_tokens, lm_head",
        "optim": args.optim_unsloth
        if arm == "unsloth"
        else ("adamw_torch" if args.test_mode else args.optim_plain),
        "n_params_total": n_params["total"],
        "n_params_mfu": n_params["matmul"],
        "peak_tflops": peak,
        "mfu_formula": "6*n_params_mfu*tokens_per_s/(peak_tflops*1e12)",
        "test_mode": bool(args.test_mode),
    }
    vers = versions()
    log(f"arm={arm} device={gpu} versions={vers}")

    t0 = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer, load_info = (load_unsloth if arm == "unsloth" else load_plain)(args, cuda)
    load_s = time.perf_counter() - t0
    load_peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    loaded_reserved = torch.cuda.memory_reserved() / 2**30 if cuda else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"loaded + adapters in {load_s:.1f}s; trainable params {trainable / 1e6:.1f}M; "
        f"reserved {loaded_reserved if loaded_reserved is None else round(loaded_reserved, 2)} GiB"
    )
    base.update(
        load_s=round(load_s, 1),
        trainable_params=trainable,
        **load_info,
        load_peak_reserved_gib=None if load_peak is None else round(load_peak, 2),
        loaded_reserved_gib=None if loaded_reserved is None else round(loaded_reserved, 2),
    )

    jobs = []
    if "A" in args.workloads:
        jobs.append(("A", "fixed_len"))
    if "B" in args.workloads and arm in args.b_arms:
        jobs.extend(("B", m) for m in args.b_modes)
    failures = 0
    for workload, mode in jobs:
        rec = dict(base, workload=workload, mode=mode)
        remaining = None if args.deadline_at is None else args.deadline_at - time.time()
        if remaining is not None and remaining < args.min_run_s:
            rec.update(
                skipped=f"deadline: {remaining:.0f}s left < {args.min_run_s}s", versions=vers, date=now_iso()
            )
            emit_result(rec)
            continue
        try:
            rec.update(run_job(args, arm, workload, mode, model, tokenizer, cuda, peak, n_params, remaining))
        except Exception as err:
            failures += 1
            traceback.print_exc()
            rec.update(error=f"{type(err).__name__}: {str(err)[:400]}")
        rec.update(versions=vers, date=now_iso())
        emit_result(rec)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return 1 if failures else 0


def load_plain(args, cuda: bool):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if cuda:
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir,
            quantization_config=bnb,
            dtype=torch.bfloat16,
            attn_implementation="sdpa",
            device_map={"": 0},
        )
        model.config.use_cache = False
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=128,
        lora_alpha=32,
        use_rslora=True,
        lora_dropout=0.0,
        bias="none",
        target_modules=LORA_PROJECTIONS,
        modules_to_save=EMBEDDINGS,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    return (
        model,
        tokenizer,
        {"attn_implementation": "sdpa", "gradient_checkpointing": "transformers, use_reentrant=False"},
    )


def load_unsloth(args, cuda: bool):
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(args.model_dir),
        max_seq_length=args.seq_len,
        dtype=None,
        load_in_4bit=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=128,
        target_modules=LORA_PROJECTIONS + EMBEDDINGS,
        lora_alpha=32,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=SEED,
        use_rslora=True,
        loftq_config=None,
    )
    return model, tokenizer, {"gradient_checkpointing": "unsloth (offloaded)"}


def make_dataset(args, workload: str, mode: str, vocab: int):
    from datasets import Dataset

    info = {}
    if workload == "A":
        n_rows = args.batch_size * args.grad_accum * (args.warmup_steps + args.max_timed_steps)
        lengths = [args.seq_len] * n_rows
        rows = random_rows(lengths, vocab, eos=False)
        info.update(rows=n_rows, tokens_per_optimizer_step=args.seq_len * args.batch_size * args.grad_accum)
    else:
        if args.test_mode:  # 64-token rows: shrink the stories 8x so that padding still varies
            lengths = [max(2, min(args.seq_len, n // 8)) for n in draw_doc_lengths(args.b_docs, 10**9)]
        else:
            lengths = draw_doc_lengths(args.b_docs, args.seq_len)
        rows = random_rows(lengths, vocab, eos=True)
        info.update(
            documents=len(lengths),
            epoch_real_tokens=sum(lengths),
            doc_len_mean=round(statistics.mean(lengths), 1),
            doc_len_max=max(lengths),
            epoch_padded_tokens_expected=round(expected_padded_tokens(lengths, args.batch_size)),
        )
    return Dataset.from_dict({"input_ids": rows}), info


def run_job(args, arm, workload, mode, model, tokenizer, cuda, peak, n_params, remaining):
    import torch

    warmup = args.warmup_steps
    max_timed = args.max_timed_steps
    max_timed_s = args.max_timed_seconds
    if workload == "B":
        warmup = args.b_padded_warmup_steps if mode == "padded" else args.warmup_steps
        max_timed = args.b_max_timed_steps if mode != "packing" else args.max_timed_steps
        max_timed_s = args.b_max_timed_seconds
        if arm == "plain" and mode != "padded":
            return {
                "skipped": "plain arm: padding-free/packing need a varlen (flash-attention) kernel; "
                "only the walkthrough's padded batches are run"
            }
    vocab = (TINY_MISTRAL if args.test_mode else MISTRAL_7B_V03)["vocab_size"]
    dataset, data_info = make_dataset(args, workload, mode, vocab)
    meter = Meter()
    deadline_stop = None if args.deadline_at is None else args.deadline_at - args.deadline_margin_s
    timer = make_step_timer(meter, warmup, max_timed, max_timed_s, deadline_stop, cuda)
    out_dir = Path(args.workdir) / f"trainer-{arm}-{workload}-{mode}"
    common = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=5e-5,
        warmup_steps=0.1,  # transformers 5: a float < 1 is the warm-up ratio (warmup_ratio was removed)
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=cuda,
        use_cpu=not cuda,
    )
    if workload == "A":
        common["max_steps"] = warmup + max_timed
    else:
        common["num_train_epochs"] = 1
    trainer = build_trainer(args, arm, workload, mode, model, tokenizer, dataset, common, meter, timer)
    job_info = {}
    if arm == "unsloth":
        targs = trainer.args
        job_info.update(
            padding_free=getattr(targs, "padding_free", None),
            packing=getattr(targs, "packing", None),
            max_length=getattr(targs, "max_length", None),
        )
    job_info["train_rows"] = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else None

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        reserved_before = torch.cuda.memory_reserved() / 2**30
    log(
        f"--- {arm} / workload {workload} / {mode}: warm-up {warmup}, up to {max_timed} timed steps "
        f"or {max_timed_s:.0f}s{'' if remaining is None else f', {remaining:.0f}s left before deadline'}"
    )
    metrics = trainer.train().metrics
    s = timer.summary()
    total_steps = int(trainer.state.max_steps)
    rec = dict(data_info, **job_info, **s)
    rec["train_runtime_s"] = round(float(metrics.get("train_runtime", float("nan"))), 2)
    rec["epoch_steps"] = total_steps
    if cuda:
        rec["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        rec["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rec["reserved_before_train_gib"] = round(reserved_before, 2)
        free, total = torch.cuda.mem_get_info()
        rec["device_used_after_train_gib"] = round((total - free) / 2**30, 2)
    else:
        rec["peak_reserved_gib"] = None
    tps = s.get("tokens_per_s")
    rec["mfu"] = round(6 * n_params["matmul"] * tps / (peak * 1e12), 4) if (tps and peak) else None
    if workload == "B" and s.get("timed_steps"):
        done = s["steps_run"]
        rec["extrapolated"] = done < total_steps
        # measured steps (warm-up and any compile included) + the rest at the timed mean step time
        rec["epoch_runtime_est_s"] = round(s["elapsed_s"] + (total_steps - done) * s["step_s_mean"], 1)
        rec["epoch_runtime_steady_est_s"] = round(total_steps * s["step_s_mean"], 1)
        if mode == "padded":
            rec["epoch_runtime_by_tokens_est_s"] = round(
                data_info["epoch_padded_tokens_expected"] / s["padded_tokens_per_s"], 1
            )
        else:
            rec["epoch_runtime_by_tokens_est_s"] = round(data_info["epoch_real_tokens"] / tps, 1)
        rec["walkthrough"] = WALKTHROUGH
        rec["note"] = (
            f"ran {done} of {total_steps} optimizer steps; epoch time extrapolated from the timed "
            f"steps {s['warmup_steps'] + 1}..{done}"
            if rec["extrapolated"]
            else "full epoch ran"
        )
    elif workload == "A":
        rec["extrapolated"] = False
    # free the optimizer state before the next job of this process
    trainer.optimizer = None
    trainer.lr_scheduler = None
    del trainer
    return rec


def build_trainer(args, arm, workload, mode, model, tokenizer, dataset, common, meter, timer):
    if arm == "plain":
        from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

        class BenchTrainer(Trainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                meter.add(inputs)
                return super().training_step(model, inputs, num_items_in_batch)

        targs = TrainingArguments(
            **common,
            optim=args.optim_plain if not args.test_mode else "adamw_torch",
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            remove_unused_columns=False,
        )
        collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
        return BenchTrainer(
            model=model,
            args=targs,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[timer],
        )

    from unsloth import UnslothTrainer, UnslothTrainingArguments

    class BenchUnslothTrainer(UnslothTrainer):
        def training_step(self, model, inputs, *a, **k):
            meter.add(inputs)
            return super().training_step(model, inputs, *a, **k)

    extra = {"max_length": args.seq_len}
    if workload == "A":
        if args.unsloth_padding_free_a != "auto":
            extra["padding_free"] = args.unsloth_padding_free_a == "on"
    elif mode == "padding_free":
        extra["padding_free"] = True
    elif mode == "packing":
        extra["packing"] = True
    elif mode == "padded":
        extra["padding_free"] = False
    targs = UnslothTrainingArguments(
        **common, **extra, optim=args.optim_unsloth, embedding_learning_rate=5e-6
    )
    return BenchUnslothTrainer(
        model=model, processing_class=tokenizer, train_dataset=dataset, args=targs, callbacks=[timer]
    )


# --------------------------------------------------------------------------------------------------
# driver


def run_child(cmd: list[str], timeout: float | None, env: dict, cwd: Path) -> tuple[int, list[dict]]:
    """Run a child, echo its output live, collect its RESULT lines; kill it at the timeout."""
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
        bufsize=1,
    )
    results: list[dict] = []

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("RESULT "):
                try:
                    results.append(json.loads(line[len("RESULT ") :]))
                except json.JSONDecodeError:
                    pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"child over its time limit ({timeout:.0f}s): killing process group {proc.pid}")
        os.killpg(proc.pid, 9)
        rc = proc.wait()
    reader.join(timeout=10)
    return rc, results


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def summarise(results: list[dict]) -> tuple[str, dict]:
    lines = [
        "| workload | arm | mode | tokens/s (real) | step s (mean) | peak reserved GiB | MFU | train_runtime s | epoch est. s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("workload") not in ("A", "B"):
            continue
        note = r.get("error") or r.get("skipped")
        lines.append(
            f"| {r['workload']} | {r['arm']} | {r.get('mode', '-')} | {fmt(r.get('tokens_per_s'), 0)} | "
            f"{fmt(r.get('step_s_mean'), 3)} | {fmt(r.get('peak_reserved_gib'))} | {fmt(r.get('mfu'), 3)} | "
            f"{fmt(r.get('train_runtime_s'), 1)} | {fmt(r.get('epoch_runtime_est_s'), 1)}"
            f"{' (' + note[:80] + ')' if note else ''} |"
        )
    table = "\n".join(lines)
    by = {(r.get("workload"), r.get("arm"), r.get("mode")): r for r in results}
    plain, uns = by.get(("A", "plain", "fixed_len")), by.get(("A", "unsloth", "fixed_len"))
    summary = {"workload": "summary", "arm": "unsloth/plain", "date": now_iso()}
    if plain and uns and plain.get("tokens_per_s") and uns.get("tokens_per_s"):
        ratio = uns["tokens_per_s"] / plain["tokens_per_s"]
        summary.update(
            gpu=uns.get("gpu"),
            a_tokens_per_s_ratio=round(ratio, 3),
            a_peak_reserved_gib={
                "plain": plain.get("peak_reserved_gib"),
                "unsloth": uns.get("peak_reserved_gib"),
            },
            a_target_speed_2x_met=ratio >= 2.0,
            a_target_peak_le_11gib_met=(uns.get("peak_reserved_gib") or 1e9) <= 11.0,
        )
    fast = [
        r
        for r in results
        if r.get("workload") == "B"
        and r.get("mode") in ("padding_free", "packing")
        and r.get("epoch_runtime_est_s")
    ]
    if fast:
        best = min(fast, key=lambda r: r["epoch_runtime_est_s"])
        summary.update(
            b_best_mode=best["mode"],
            b_best_epoch_est_s=best["epoch_runtime_est_s"],
            b_best_epoch_steady_est_s=best.get("epoch_runtime_steady_est_s"),
            b_target_le_60s_met=best["epoch_runtime_est_s"] <= 60.0,
            b_gpu=best.get("gpu"),
        )
    padded = by.get(("B", "unsloth", "padded"))
    if padded and padded.get("epoch_runtime_est_s"):
        summary["b_padded_epoch_est_s"] = padded["epoch_runtime_est_s"]
        summary["b_walkthrough_a100_s"] = WALKTHROUGH["train_runtime_s"]
    return table, summary


def drive(args) -> int:
    t_start = time.time()
    deadline_at = t_start + args.deadline_s if args.deadline_s else None
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if args.test_mode:
        env["CUDA_VISIBLE_DEVICES"] = ""
    log(
        f"bench_cpt: workloads={args.workloads} arms={args.arms} b_arms={args.b_arms} b_modes={args.b_modes} "
        f"test_mode={args.test_mode} deadline_s={args.deadline_s} model_dir={args.model_dir}"
    )
    log(
        "the model is the Mistral-7B-v0.3 ARCHITECTURE, randomly initialised and saved locally (no hub); "
        "token ids are random"
        if not args.test_mode
        else "test mode: tiny random Mistral on CPU, plain arm"
    )
    cfg = TINY_MISTRAL if args.test_mode else MISTRAL_7B_V03
    results: list[dict] = []
    if not model_folder_ok(Path(args.model_dir), cfg):
        rc, _ = run_child(
            [sys.executable, SCRIPT, "--build-model", *passthrough(args)],
            None if deadline_at is None else deadline_at - time.time(),
            env,
            workdir,
        )
        if rc != 0:
            log("model build failed")
            return 2
    else:
        log(f"reusing {args.model_dir}")
    worst = 0
    for arm in args.arms:
        wants_a = "A" in args.workloads
        wants_b = "B" in args.workloads and arm in args.b_arms
        if not (wants_a or wants_b):
            continue
        child_deadline = None if deadline_at is None else deadline_at
        cmd = [sys.executable, SCRIPT, "--arm", arm, *passthrough(args)]
        if child_deadline is not None:
            cmd += ["--deadline-at", f"{child_deadline:.0f}"]
        timeout = None if deadline_at is None else max(5.0, deadline_at - time.time() + args.kill_grace_s)
        rc, res = run_child(cmd, timeout, env, workdir)
        if rc != 0:
            worst = max(worst, 1)
        expected = ([("A", "fixed_len")] if wants_a else []) + (
            [("B", m) for m in args.b_modes] if wants_b else []
        )
        seen = {(r.get("workload"), r.get("mode")) for r in res}
        for workload, mode in expected:
            if (workload, mode) not in seen:
                res.append(
                    {
                        "workload": workload,
                        "arm": arm,
                        "mode": mode,
                        "error": f"no RESULT: the arm's process exited with {rc} (killed at the deadline if -9)",
                        "date": now_iso(),
                    }
                )
        results.extend(res)
    table, summary = summarise(results)
    print("\n" + table + "\n", flush=True)
    if out_dir:
        with open(out_dir / "results.jsonl", "w") as fh:
            for r in results + [summary]:
                fh.write(json.dumps(r) + "\n")
        (out_dir / "table.md").write_text(table + "\n")
    log(f"total wall {time.time() - t_start:.0f}s")
    for r in results:
        print("RESULT " + json.dumps(r), flush=True)
    emit_result(summary)
    return worst


def passthrough(args) -> list[str]:
    out = [
        "--model-dir",
        str(args.model_dir),
        "--workdir",
        str(args.workdir),
        "--workloads",
        ",".join(args.workloads),
        "--b-modes",
        ",".join(args.b_modes),
        "--b-arms",
        ",".join(args.b_arms),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--grad-accum",
        str(args.grad_accum),
        "--warmup-steps",
        str(args.warmup_steps),
        "--max-timed-steps",
        str(args.max_timed_steps),
        "--max-timed-seconds",
        str(args.max_timed_seconds),
        "--b-docs",
        str(args.b_docs),
        "--b-max-timed-steps",
        str(args.b_max_timed_steps),
        "--b-max-timed-seconds",
        str(args.b_max_timed_seconds),
        "--b-padded-warmup-steps",
        str(args.b_padded_warmup_steps),
        "--min-run-s",
        str(args.min_run_s),
        "--deadline-margin-s",
        str(args.deadline_margin_s),
        "--optim-plain",
        args.optim_plain,
        "--optim-unsloth",
        args.optim_unsloth,
        "--unsloth-padding-free-a",
        args.unsloth_padding_free_a,
    ]
    if args.test_mode:
        out.append("--test-mode")
    return out


def compute_lengths() -> int:
    """Token counts of the shipped TinyStories sample with the SmolLM2 tokenizer, EOS appended (CPU)."""
    from transformers import AutoTokenizer

    tok_dir = REPO / "outputs/cache/smollm2-135m-instruct-hf"
    src = REPO / "data/tinystories-sample/train.jsonl"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = [json.loads(line)["text"] for line in src.read_text().split("\n") if line.strip()]
    lengths = [len(tok(t + tok.eos_token, add_special_tokens=False)["input_ids"]) for t in texts]
    data = {
        "description": "Token counts of the stories in data/tinystories-sample/train.jsonl, each with the EOS "
        "token appended (as the walkthrough does), tokenized with the SmolLM2-135M-Instruct "
        "tokenizer without BOS. Computed on CPU by `benchmarks/bench_cpt.py --compute-lengths`. "
        "Workload B draws 2,500 document lengths from this list with replacement (seed 3407). "
        "Mistral's 32k tokenizer would give somewhat different counts for the same text.",
        "source": "data/tinystories-sample/train.jsonl",
        "tokenizer": "SmolLM2-135M-Instruct (outputs/cache/smollm2-135m-instruct-hf)",
        "eos_appended": True,
        "count": len(lengths),
        "min": min(lengths),
        "median": statistics.median(lengths),
        "mean": round(statistics.mean(lengths), 2),
        "max": max(lengths),
        "date": now_iso(),
        "lengths": lengths,
    }
    head = json.dumps({k: v for k, v in data.items() if k != "lengths"}, indent=1)
    LENGTHS_JSON.write_text(head[:-2] + ',\n "lengths": ' + json.dumps(lengths) + "\n}\n")
    print(
        f"wrote {LENGTHS_JSON.relative_to(REPO)}: {len(lengths)} lengths, mean {data['mean']}, max {data['max']}"
    )
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench_cpt.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csv = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument(
        "--workloads",
        type=csv,
        default=["A", "B"],
        help="comma list of A (throughput), B (epoch); default A,B",
    )
    p.add_argument(
        "--arms",
        type=csv,
        default=["plain", "unsloth"],
        help="arms in the order they run, each in its own subprocess (default plain,unsloth: plain FIRST)",
    )
    p.add_argument(
        "--b-arms",
        type=csv,
        default=["unsloth"],
        help="arms that run workload B (default unsloth, the walkthrough's stack)",
    )
    p.add_argument(
        "--b-modes",
        type=csv,
        default=list(ALL_B_MODES),
        help=f"workload B batching modes, in run order (default {','.join(ALL_B_MODES)}; padded last "
        "because its per-block compile is the slowest warm-up)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="local HF folder of the random-init model (built once if missing; default under --workdir)",
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("/tmp/cpt-bench"), help="scratch folder (model, trainer output)"
    )
    p.add_argument(
        "--out-dir", type=Path, default=None, help="also write results.jsonl and table.md here (e.g. $OUT)"
    )
    p.add_argument(
        "--seq-len", type=int, default=2048, help="sequence length / max_seq_length (default 2048)"
    )
    p.add_argument("--batch-size", type=int, default=2, help="per-device batch size (default 2)")
    p.add_argument("--grad-accum", type=int, default=8, help="gradient accumulation steps (default 8)")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="optimizer steps excluded from timing (default 2: steps 3..N timed)",
    )
    p.add_argument(
        "--max-timed-steps",
        type=int,
        default=4,
        help="workload A (and B packing): timed optimizer steps at most (default 4)",
    )
    p.add_argument(
        "--max-timed-seconds",
        type=float,
        default=45.0,
        help="workload A: stop once >= 2 steps are timed and the timed window passes this (default 45)",
    )
    p.add_argument(
        "--b-docs",
        type=int,
        default=2500,
        help="workload B documents (default 2500, the walkthrough's slice)",
    )
    p.add_argument(
        "--b-max-timed-steps",
        type=int,
        default=20,
        help="workload B padded / padding-free: timed steps at most (default 20)",
    )
    p.add_argument(
        "--b-max-timed-seconds",
        type=float,
        default=20.0,
        help="workload B: timed window cap in seconds (default 20)",
    )
    p.add_argument(
        "--b-padded-warmup-steps",
        type=int,
        default=4,
        help="warm-up steps for B padded (variable shapes recompile the per-block compile; default 4)",
    )
    p.add_argument(
        "--optim-plain", default="paged_adamw_8bit", help="plain arm optimizer (default paged_adamw_8bit)"
    )
    p.add_argument("--optim-unsloth", default="adamw_8bit", help="unsloth arm optimizer (default adamw_8bit)")
    p.add_argument(
        "--unsloth-padding-free-a",
        choices=["auto", "on", "off"],
        default="auto",
        help="unsloth padding_free for workload A (default auto: unsloth's own choice, recorded in RESULT)",
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="wall-clock budget for the whole driver: runs are shortened, skipped or killed to end inside it",
    )
    p.add_argument(
        "--deadline-margin-s",
        type=float,
        default=20.0,
        help="a run stops training this long before the deadline",
    )
    p.add_argument(
        "--kill-grace-s", type=float, default=15.0, help="a child is killed this long after the deadline"
    )
    p.add_argument(
        "--min-run-s",
        type=float,
        default=40.0,
        help="a job is skipped when less than this is left before the deadline",
    )
    p.add_argument(
        "--test-mode",
        action="store_true",
        help="CPU smoke test: tiny Mistral (hidden 64, 2 layers), seq 64, bs 2 x GA 2, 1 warm-up + 2 timed "
        "steps, no 4-bit, adamw_torch, plain arm only, 64 B documents",
    )
    p.add_argument(
        "--compute-lengths",
        action="store_true",
        help="recompute benchmarks/tinystories_lengths.json on CPU and exit",
    )
    # internal
    p.add_argument("--arm", choices=["plain", "unsloth"], help=argparse.SUPPRESS)
    p.add_argument("--build-model", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [m for m in args.b_modes if m not in ALL_B_MODES]
    if bad:
        p.error(f"unknown --b-modes {bad}; choose from {ALL_B_MODES}")
    if args.test_mode and not args.arm and not args.build_model:
        # only the plain arm runs on CPU; the shapes shrink so that everything takes seconds
        if args.arms == ["plain", "unsloth"]:
            args.arms = ["plain"]
        if args.b_arms == ["unsloth"]:
            args.b_arms = ["plain"]
        if args.b_modes == list(ALL_B_MODES):
            args.b_modes = ["padded"]
        args.seq_len, args.grad_accum, args.warmup_steps, args.max_timed_steps = 64, 2, 1, 2
        args.b_docs, args.b_max_timed_steps, args.b_padded_warmup_steps = 64, 2, 1
        if args.workdir == Path("/tmp/cpt-bench"):
            args.workdir = Path("/tmp/cpt-bench-test")
    if args.model_dir is None:
        args.model_dir = args.workdir / (
            "tiny-mistral-random" if args.test_mode else "mistral-7b-v0.3-random"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compute_lengths:
        return compute_lengths()
    if args.build_model:
        import torch

        cuda = torch.cuda.is_available() and not args.test_mode
        build_model_folder(
            Path(args.model_dir),
            TINY_MISTRAL if args.test_mode else MISTRAL_7B_V03,
            "cuda" if cuda else "cpu",
        )
        return 0
    if args.arm:
        return run_arm(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
