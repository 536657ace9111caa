"""Shared fixtures: an isolated project root per test, the local tokenizer, and tiny random Llama models.

Everything here runs on the CPU in well under a second per test; the tiny models have 2 layers and a
hidden size of 32, so only their (tokenizer-sized) embedding matrices are of any size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib.pyplot

REPO_ROOT = Path(__file__).resolve().parents[1]
# The SmolLM2 tokenizer shipped in data/ (the same one notebook 00 converts from the GGUF);
# CPT_TEST_TOKENIZER may point at another tokenizer folder.
LOCAL_TOKENIZER = Path(os.environ.get("CPT_TEST_TOKENIZER") or REPO_ROOT / "data" / "smollm2-tokenizer")


@pytest.fixture(scope="session", autouse=True)
def offline_hub_and_private_datasets_cache(tmp_path_factory):
    """Never reach the hub, and keep ``datasets``' cache files out of the shared ~/.cache (the
    variables are read when ``datasets`` / ``huggingface_hub`` are first imported, inside tests)."""
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_CACHE", "HF_HUB_OFFLINE")}
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def isolated_root(tmp_path, monkeypatch):
    """Point CPT_ROOT at the test's tmp_path so nothing is written under the real outputs/, and make
    profile selection independent of the caller's environment."""
    monkeypatch.setenv("CPT_ROOT", str(tmp_path))
    monkeypatch.delenv("CPT_PROFILE", raising=False)
    monkeypatch.delenv("CPT_CACHE_DIR", raising=False)
    monkeypatch.delenv("CPT_OUTPUTS", raising=False)
    monkeypatch.delenv("CPT_TEXT_DIR", raising=False)
    monkeypatch.delenv("CPT_SPLIT_ON_BLANK_LINES", raising=False)
    monkeypatch.delenv("CPT_MODEL", raising=False)
    monkeypatch.delenv("CPT_PACKING", raising=False)
    monkeypatch.delenv("CPT_EMBEDDING_DTYPE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def torch_one_thread():
    """Import torch with a single thread (the machine is shared)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    # import the heavy libraries once here, so that their import time is not charged to one test
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    return torch


@pytest.fixture(scope="session")
def tokenizer(torch_one_thread):
    """The SmolLM2 tokenizer converted by notebook 01 (skips when it has not been produced)."""
    if not (LOCAL_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"tokenizer folder missing: {LOCAL_TOKENIZER.name} (set CPT_TEST_TOKENIZER)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(LOCAL_TOKENIZER))


def load_train_script():
    """Import scripts/train_cpt.py as a module and return it (it imports only helpers.profiles at the top)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("train_cpt", REPO_ROOT / "scripts" / "train_cpt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def build_tiny_llama(vocab_size: int, tied: bool = False, seed: int = 0, pad_token_id: int | None = 0):
    """Return a tiny random LlamaForCausalLM (hidden 32, 2 layers) in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama_factory(torch_one_thread):
    """``factory(vocab_size, tied=False, seed=0)`` -> a fresh tiny random Llama model."""
    return build_tiny_llama


WORDS = (
    "once upon a time there was a little cat and a big dog . they liked to play in the sun every day "
    "one day the cat saw a red ball under the tree , she ran to it and the dog followed her . "
    "in a galaxy far away lived a happy robot who loved stars"
).split()


def build_word_tokenizer(specials=("<pad>", "<eos>", "<unk>"), **special_tokens):
    """Return a tiny word-level fast tokenizer built in memory over :data:`WORDS` (no files needed).

    ``specials`` are the first vocabulary entries; ``special_tokens`` (``pad_token=...``) name them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *WORDS]))}
    unk = special_tokens.get("unk_token")
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk) if unk else models.WordLevel(vocab))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


@pytest.fixture(scope="session")
def word_tokenizer(torch_one_thread):
    """The tiny word-level tokenizer: pad id 0, eos id 1, unk id 2."""
    return build_word_tokenizer(pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
