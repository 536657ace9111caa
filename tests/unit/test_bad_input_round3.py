"""Issue 31, "No silently wrong result, round 3", the cases left by the first round and more of the
same classes: each test reproduces one case that used to end in a raw error, a silently wrong
result or a lost output (the case number, or ``own`` for cases found while fixing, is in its name)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import load_train_script

from helpers.profiles import CPU_SMOLLM2

EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a whole safetensors file holding no tensors


def _own(value):
    from helpers.profiles import with_own_model

    return with_own_model(CPU_SMOLLM2, "test", {"CPT_MODEL": str(value)})[0]


def _model_folder(tmp_path, tiny_llama_factory, tokenizer, name="mine"):
    folder = tmp_path / name
    tiny_llama_factory(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- case 9: own model, broken files -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["cut", "garbage", "empty"])
def test_case09_a_damaged_model_safetensors_is_named_before_loading(tmp_path, tiny_llama_factory, tokenizer, damage):
    """A CPT_MODEL folder with a truncated or garbage model.safetensors ended in a raw SafetensorError."""
    from helpers.modeling import load_model_and_tokenizer
    from helpers.profiles import OwnModelError

    folder = _model_folder(tmp_path, tiny_llama_factory, tokenizer)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"cut": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(OwnModelError, match=r"CPT_MODEL='.*mine': its weights file model.safetensors is damaged .*"
                                            r"Copy or download the weights again"):
        _own(folder)
    profile = _own(_model_folder(tmp_path, tiny_llama_factory, tokenizer, "other"))
    (Path(profile.model_name) / "model.safetensors").write_bytes(data[:100])  # damaged after it was chosen
    with pytest.raises(OwnModelError, match="model.safetensors is damaged"):
        load_model_and_tokenizer(profile)


def test_own_a_cut_off_config_json_of_an_own_model_is_named(tmp_path, tiny_llama_factory, tokenizer):
    """A CPT_MODEL folder whose config.json was cut off (a partial copy) failed inside transformers."""
    from helpers.profiles import OwnModelError

    folder = _model_folder(tmp_path, tiny_llama_factory, tokenizer)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_si')
    with pytest.raises(OwnModelError, match=r"CPT_MODEL='.*mine': its config.json is not valid JSON .*cut off"):
        _own(folder)


def test_case09_a_shard_named_by_the_index_but_missing_is_named(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(EMPTY_SAFETENSORS)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    from helpers.profiles import OwnModelError

    with pytest.raises(OwnModelError, match="names 1 weight file.* missing: model-00002-of-00002.safetensors"):
        _own(folder)


@pytest.mark.parametrize("damage", ["cut", "half", "garbage", "empty"])
def test_case09_a_cut_off_or_garbage_gguf_is_named_before_converting(tmp_path, torch_one_thread, damage):
    """A truncated .gguf ended in 'ValueError: cannot reshape array…' or an IndexError from the gguf reader."""
    from helpers.modeling import load_model_and_tokenizer
    from helpers.support.gguf import UnreadableGGUFError

    path = _write_gguf(tmp_path / "mine.gguf")
    data = path.read_bytes()
    path.write_bytes({"cut": data[:-100], "half": data[: len(data) // 2], "garbage": b"garbage" * 100,
                      "empty": b""}[damage])
    with pytest.raises(UnreadableGGUFError, match=r"CPT_MODEL: .*mine.gguf cannot be used: it (is|holds).*"
                                                  r"Download or copy the file again"):
        load_model_and_tokenizer(_own(path))
    assert not list((tmp_path / "outputs" / "cache").glob("gguf-*"))


# --- the class: a model named by CPT_MODEL is identified by its weights, not only its path -------


def test_class_own_model_identity_covers_its_weights(tmp_path, tiny_llama_factory, tokenizer):
    """A CPT_MODEL folder whose weights were replaced kept the same identity (its path), so artifacts
    and checkpoints made from the old weights were used with the new ones."""
    from helpers.artifacts import model_identity

    folder = _model_folder(tmp_path, tiny_llama_factory, tokenizer)
    before = model_identity(_own(folder))
    assert before["revision"].startswith("weights sha256 ")
    assert model_identity(_own(folder)) == before  # stable
    tiny_llama_factory(len(tokenizer), seed=1).save_pretrained(folder)  # same path, other weights
    assert model_identity(_own(folder))["revision"] != before["revision"]
    gguf = _write_gguf(tmp_path / "m.gguf")
    first = model_identity(_own(gguf))["revision"]
    data = bytearray(gguf.read_bytes())
    data[-4:] = b"\x00\x00\x00\x40"  # same size, one weight changed (1.0 -> 2.0)
    stat = gguf.stat()
    gguf.write_bytes(bytes(data))
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later write (coarse clocks: same tick)
    assert model_identity(_own(gguf))["revision"] != first


# --- case 16: an adapter folder named as the model -----------------------------------------------


def test_case16_an_adapter_folder_as_cpt_model_is_told_it_needs_its_base_model(tmp_path):
    """CPT_MODEL=outputs/05_adapter was told to save a model there with save_pretrained."""
    from helpers.profiles import OwnModelError

    adapter = tmp_path / "outputs" / "05_adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    (adapter / "adapter_model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    with pytest.raises(OwnModelError) as caught:
        _own("outputs/05_adapter")
    message = str(caught.value)
    assert "is a LoRA adapter folder" in message and "'HuggingFaceTB/SmolLM2-135M'" in message
    assert "load_trained_model(profile, adapter_folder)" in message and "save_pretrained" not in message


# --- own case: a cached converted model damaged after it was written -----------------------------


def test_own_a_damaged_cached_model_is_built_again(tmp_path, monkeypatch, capsys):
    """The converted model in outputs/cache, cut off after it was written (a full disk, a partial
    copy of outputs/), was loaded and failed with a raw SafetensorError at every start."""
    from helpers.support import gguf

    conversions = []

    def convert(gguf_path, out_dir, **options):
        conversions.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
        (out_dir / "SOURCE.json").write_text("{}")

    monkeypatch.setattr(gguf, "find_embedded_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(gguf, "convert_gguf_to_hf", convert)
    folder = gguf.embedded_model_dir()
    assert gguf.embedded_model_dir() == folder and len(conversions) == 1  # whole: used as it is
    (folder / "model.safetensors").write_bytes(EMPTY_SAFETENSORS[:6])
    assert gguf.embedded_model_dir() == folder and len(conversions) == 2
    assert "is damaged (model.safetensors: 6 bytes" in capsys.readouterr().out
    assert (folder / "model.safetensors").read_bytes() == EMPTY_SAFETENSORS


# --- the class: every checkpoint is checked by its content before a resume ------------------------


def _tiny_trainer(tokenizer, output_dir, *callbacks):
    from tiny_runs import PROFILE, tiny_dataset, tiny_peft_model

    from helpers.checkpoints import build_resumable_trainer

    trainer = build_resumable_trainer(PROFILE, tiny_peft_model(tokenizer), tokenizer, tiny_dataset(tokenizer),
                                      output_dir=output_dir, save_steps=2, disable_tqdm=True)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def test_class_a_checkpoint_damaged_after_it_was_written_is_skipped_for_the_one_before(
        word_tokenizer, tmp_path, capsys):
    """A checkpoint whose optimizer.pt was changed in place (same size, still a valid archive: a bad
    copy, a disk error) was resumed from as if whole."""
    from tiny_runs import interrupt_at, step_recorder

    from helpers.checkpoints import TrainingInterrupted, train_resumable
    from helpers.support.files import FOLDER_MANIFEST

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_resumable(_tiny_trainer(word_tokenizer, out, interrupt_at(5)))
    assert (out / "checkpoint-4" / FOLDER_MANIFEST).is_file()
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    start = data.index(b"data/0") + 100  # inside the first stored tensor: the zip directory stays whole
    data[start:start + 16] = bytes(16)
    stat = optimizer.stat()
    optimizer.write_bytes(bytes(data))
    os.utime(optimizer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    recorder = step_recorder()
    train_resumable(_tiny_trainer(word_tokenizer, out, recorder))
    shown = capsys.readouterr().out
    assert "checkpoint-4 is damaged after it was written: optimizer.pt has changed since it was written" in shown
    assert "Resuming from " in shown and "checkpoint-2" in shown
    assert recorder.steps == [3, 4, 5, 6]
    assert (out / "incomplete" / "checkpoint-4").is_dir()


# --- case 14: killed while saving the final adapter -------------------------------------------------


def test_case14_a_finished_checkpoint_is_loaded_not_trained_again(word_tokenizer, tmp_path, capsys):
    """Killed during the final adapter save, the relaunch trained all steps again instead of saving
    from the finished last checkpoint."""
    import torch
    from tiny_runs import step_recorder, trainable_state

    from helpers.checkpoints import train_resumable

    out = tmp_path / "run"
    first = _tiny_trainer(word_tokenizer, out)
    train_resumable(first)
    finished = trainable_state(first.model)
    recorder = step_recorder()
    again = _tiny_trainer(word_tokenizer, out, recorder)
    train_resumable(again, load_finished=True)
    assert recorder.steps == []
    assert "ends this run (step 6 of 6)" in capsys.readouterr().out
    assert again.state.global_step == 6
    for name, tensor in trainable_state(again.model).items():
        assert torch.equal(tensor, finished[name]), name


# --- the class: train_cpt.py's adapter is checked by its content before it is loaded ---------------


def test_class_a_saved_adapter_changed_after_saving_is_refused_by_name(word_tokenizer, tmp_path):
    """An adapter saved by scripts/train_cpt.py (save_adapter to a folder of its own, no notebook
    manifest) whose weights were changed in place loaded silently, giving another model."""
    from conftest import build_tiny_llama
    from tiny_runs import tiny_peft_model

    from helpers.checkpoints import save_adapter
    from helpers.errors import AdapterError
    from helpers.modeling import load_trained_model
    from helpers.support.files import FOLDER_MANIFEST

    folder = save_adapter(tiny_peft_model(word_tokenizer), word_tokenizer, tmp_path / "train_cpt" / "adapter")
    assert (folder / FOLDER_MANIFEST).is_file()
    base = build_tiny_llama(len(word_tokenizer))
    load_trained_model(CPU_SMOLLM2, folder, base_model=base, tokenizer=word_tokenizer)  # as saved: loads
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x01" * 8  # the last tensor's last values, same size (lora_B starts at 0)
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(AdapterError, match=r"adapter is not as it was saved: adapter_model.safetensors has changed"):
        load_trained_model(CPU_SMOLLM2, folder, base_model=build_tiny_llama(len(word_tokenizer)),
                           tokenizer=word_tokenizer)


# --- case 15: --tiny and the environment; a 1-step run --------------------------------------------




def test_case15_tiny_honours_the_text_folder_model_and_packing_switches(tmp_path, monkeypatch):
    """--tiny ignored CPT_TEXT_DIR, CPT_MODEL and an invalid CPT_PACKING and trained the shipped sample
    on the random Llama, printing the sample as its data."""
    script = load_train_script()
    texts = tmp_path / "my_texts"
    texts.mkdir()
    (texts / "a.txt").write_text("My own text.\n")
    monkeypatch.setenv("CPT_TEXT_DIR", str(texts))
    monkeypatch.setenv("CPT_PROFILE", "gpu-mistral7b")
    profile, reason = script.choose_profile(script.parse_args(["--tiny"]))
    assert profile.name == "tiny-cpu" and profile.text_dir and Path(profile.text_dir).name == "my_texts"
    assert "CPT_PROFILE=gpu-mistral7b is not used" in reason and "CPT_TEXT_DIR" in reason
    monkeypatch.setenv("CPT_MODEL", str(tmp_path / "no_such_model"))
    with pytest.raises(SystemExit, match="train_cpt.py: CPT_MODEL=.*no such file or folder"):
        script.main(["--tiny"])
    monkeypatch.delenv("CPT_MODEL")
    monkeypatch.setenv("CPT_PACKING", "maybe")
    with pytest.raises(SystemExit, match=r"train_cpt.py: CPT_PACKING='maybe': use 1 \(packed blocks\) or 0"):
        script.main(["--tiny"])


def test_case15_a_one_step_run_trains_at_the_full_learning_rate(word_tokenizer, tmp_path):
    """--max-steps 1 with a warm-up ratio: the only step ran at learning rate 0 (all of it warm-up),
    and the run then failed 'unchanged after training'."""
    from tiny_runs import PROFILE, tiny_dataset, tiny_peft_model

    from helpers.training import build_trainer, fit_warmup

    one = PROFILE.replace(max_steps=1)
    assert fit_warmup(one).warmup_ratio == 0 and fit_warmup(PROFILE) is PROFILE
    trainer = build_trainer(one, tiny_peft_model(word_tokenizer, one), word_tokenizer, tiny_dataset(word_tokenizer),
                            output_dir=str(tmp_path / "run"), disable_tqdm=True)
    trainer.train()
    lrs = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert lrs and lrs[0] > 0


# --- cases 3, 4, 5: streaming ------------------------------------------------------------------------


def test_case04_a_character_cut_by_max_new_tokens_is_never_streamed_as_u_fffd(tokenizer, tiny_llama_factory, capsys):
    """An emoji prompt streamed text ending in U+FFFD: max_new_tokens ended generation between the
    byte tokens of one emoji, and the streamer's final flush printed the half character."""
    import torch

    from helpers.streaming import stream_generate

    continuation = tokenizer("Hi 😀🎉")["input_ids"][:-1]  # the last token of 🎉 never comes
    assert "\ufffd" in tokenizer.decode(continuation)
    model = tiny_llama_factory(len(tokenizer))

    def generate(**kwargs):
        streamer = kwargs["streamer"]
        streamer.put(kwargs["input_ids"])  # the prompt, skipped
        for token in continuation:
            streamer.put(torch.tensor([token]))
        streamer.end()
        return torch.cat([kwargs["input_ids"], torch.tensor([continuation])], dim=1)

    model.generate = generate
    result = stream_generate(model, tokenizer, "Tell me 🎉:", max_new_tokens=len(continuation))
    assert result.text == "Hi 😀" and result.cut_characters == 1
    assert "\ufffd" not in capsys.readouterr().out


def test_case05_a_prompt_longer_than_the_context_is_refused_before_generating(word_tokenizer, tiny_llama_factory):
    """A prompt of 8,401 tokens for SmolLM2's 8,192 got no word from the project, only transformers'
    log lines, then 71 s of generation."""
    from helpers.streaming import PromptLengthWarning, PromptTooLongError, stream_generate

    model = tiny_llama_factory(len(word_tokenizer))  # max_position_embeddings=256

    def generate(**kwargs):
        raise AssertionError("generated although the prompt does not fit")

    model.generate = generate
    with pytest.raises(PromptTooLongError, match=r"The prompt is 300 tokens, longer than this model's context of "
                                                 r"256 tokens .* at most 246 tokens"):
        stream_generate(model, word_tokenizer, " ".join(["cat"] * 300), max_new_tokens=10)
    with pytest.warns(PromptLengthWarning, match=r"250 tokens and max_new_tokens=10: together 260, past .* 256"):
        with pytest.raises(AssertionError, match="generated although"):
            stream_generate(model, word_tokenizer, " ".join(["cat"] * 250), max_new_tokens=10)


@pytest.mark.filterwarnings("ignore::UserWarning")  # 20,000 new tokens run past the tiny model's context
def test_case03_ctrl_c_while_streaming_stops_the_generate_thread(word_tokenizer, tiny_llama_factory):
    """Stop pressed while streaming: the generate thread kept running, and the process then ended with
    "terminate called without an active exception" (exit 134)."""
    import signal
    import threading
    import time

    from helpers.streaming import stream_generate

    model = tiny_llama_factory(len(word_tokenizer))
    before = set(threading.enumerate())
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C half a second in
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            stream_generate(model, word_tokenizer, "once upon a time", max_new_tokens=20000, min_new_tokens=20000)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15
    timer.join()
    assert [t.name for t in threading.enumerate() if t not in before and t.is_alive()] == []


# --- case 17: memory of a big text file -----------------------------------------------------------


def _old_rows(dataset_with_eos, tokenizer, profile):
    """The rows build_train_dataset made before: whole documents tokenized, Python lists packed or cut."""
    from datasets import Dataset

    from helpers.data import pack_blocks, truncate_rows

    lists = [t for t in tokenizer(list(dataset_with_eos["text"]), add_special_tokens=False)["input_ids"] if t]
    rows = pack_blocks(lists, profile.max_seq_length)[0] if profile.packing else truncate_rows(
        lists, profile.max_seq_length)[0]
    return Dataset.from_dict({"input_ids": rows})


@pytest.mark.parametrize("packing", [True, False])
def test_case17_a_long_document_is_tokenized_in_pieces_to_the_same_rows(tokenizer, monkeypatch, packing):
    """One 50 MB text file took 101 s and a peak of 7.6 GB RSS: the tokenizer's bookkeeping of one
    huge string, then Python lists of every token id. Long documents are now tokenized in pieces cut
    at newlines, and rows are built in numpy/Arrow: the same rows as before."""
    from datasets import Dataset

    from helpers import data

    stories = [json.loads(line)["text"] for line in
               (Path(__file__).resolve().parents[2] / "data" / "tinystories-sample" / "train.jsonl").read_text().splitlines()]
    long_text = "\n\n".join(stories[:60]) + "\n  indented line\n\n\n\"Quoted\" start\n中文 text\n"
    documents = Dataset.from_dict({"text": [long_text + "<|im_end|>", "", "Short one.<|im_end|>",
                                            long_text[:5000] + "<|im_end|>"]})
    monkeypatch.setattr(data, "PIECE_CHARS", 700)  # many pieces
    assert len(data.text_pieces(long_text, 700)) > 20 and "".join(data.text_pieces(long_text, 700)) == long_text
    assert data.splits_cleanly(tokenizer)
    whole = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    pieces = data.tokenize(Dataset.from_dict({"text": [long_text]}), tokenizer)
    assert pieces["input_ids"][0] == whole and pieces["attention_mask"][0] == [1] * len(whole)
    assert pieces.features == data.tokenize(Dataset.from_dict({"text": ["short"]}), tokenizer).features
    profile = CPU_SMOLLM2.replace(max_seq_length=64, packing=packing)
    rows, stats = data.build_train_dataset(documents, tokenizer, profile)
    old = _old_rows(documents, tokenizer, profile)
    assert rows.features == old.features and rows["input_ids"] == old["input_ids"]
    assert stats["documents"] == 3 and stats["tokens"] == sum(len(t) for t in tokenizer(
        list(documents["text"]), add_special_tokens=False)["input_ids"])
    # and the tokenizer never sees the long document whole (that is what took the memory)
    seen = []

    class Spy:
        def __call__(self, texts, **kwargs):
            seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
            return tokenizer(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    data.build_train_dataset(documents, Spy(), profile)
    assert seen and max(seen) < len(long_text) // 4


# --- own cases: train_cpt.py's paths, its folder in concurrent use, a full disk at the result ------


def test_own_a_baseline_result_that_is_not_a_run_result_is_refused_before_training(tmp_path):
    """--baseline-result naming another JSON file (adapter_config.json, a notebook's output) failed
    only after the run, with a KeyError in the comparison, and the run's result.json was not written."""
    script = load_train_script()
    other = tmp_path / "adapter_config.json"
    other.write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    with pytest.raises(SystemExit, match=r"--baseline-result .*adapter_config.json: not the result.json of a "
                                         r"train_cpt.py run \(it has no workload, gpus, tokens_per_s"):
        script.main(["--tiny", "--baseline-result", str(other)])


def test_own_a_result_json_inside_a_file_is_refused_before_training(tmp_path):
    """--result-json whose folder is a file failed only when the result was written, after the run."""
    script = load_train_script()
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(SystemExit, match=r"--result-json .*notes/r.json: .*notes is a file, not a folder"):
        script.main(["--tiny", "--result-json", str(tmp_path / "notes" / "r.json")])


def test_own_two_runs_into_one_output_dir_at_once_are_refused(tmp_path):
    """Two train_cpt.py runs started into one --output-dir at the same time wrote their checkpoints,
    adapter and result into the same folders, mixing the two runs."""
    script = load_train_script()
    out = tmp_path / "train_cpt"
    held = script.lock_output_dir(out)
    try:
        with pytest.raises(SystemExit, match=rf"--output-dir .*train_cpt is in use by another train_cpt.py run "
                                             rf"\(pid {os.getpid()}, started .*another --output-dir"):
            script.lock_output_dir(out)
    finally:
        held.close()
    script.lock_output_dir(out).close()  # free again once the first run has ended


def test_own_a_full_disk_at_the_result_keeps_the_result_in_the_log(tmp_path, monkeypatch):
    """A full disk while writing result.json ended in a raw OSError after the adapter was saved: the
    run's measurements were lost. Now the RESULT line still carries them and the message says so."""
    import errno

    from helpers.support import files

    script = load_train_script()

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "write_json", full)
    message = script.write_results([tmp_path / "result.json"], {"losses": [1.0]})
    assert "result.json could not be written: Disk full while saving" in message
    assert "The whole result is the RESULT line below; the adapter is saved" in message
    monkeypatch.undo()
    assert script.write_results([tmp_path / "result.json"], {"losses": [1.0]}) is None


def test_own_a_big_text_on_one_line_is_tokenized_in_pieces_too(tokenizer, monkeypatch):
    """A text without newlines (an export on one line, minified text) had no cut point, so it was
    tokenized whole again, with the memory of case 17. It is now cut before a space."""
    from datasets import Dataset

    from helpers import data

    stories = [json.loads(line)["text"] for line in
               (Path(__file__).resolve().parents[2] / "data" / "tinystories-sample" / "train.jsonl").read_text().splitlines()]
    one_line = "  ".join(s.replace("\n", " ") for s in stories[:40]) + " \"quoted\", it's 42 ok 中文 中"
    monkeypatch.setattr(data, "PIECE_CHARS", 500)
    assert len(data.text_pieces(one_line)) > 20 and "".join(data.text_pieces(one_line)) == one_line
    assert data.tokenize(Dataset.from_dict({"text": [one_line]}), tokenizer)["input_ids"][0] == tokenizer(
        one_line, add_special_tokens=False)["input_ids"]


def test_own_killed_while_keeping_an_earlier_run_keeps_its_adapter_and_result_together(tmp_path, monkeypatch):
    """Killed between moving the earlier run's adapter and its result.json into earlier-runs/, the next
    run kept the result.json in a second folder, apart from its adapter."""
    script = load_train_script()
    out = tmp_path / "train_cpt"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_text("first")
    (out / "result.json").write_text(json.dumps({"run": "first"}))
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the adapter moved
        real_replace(src, dst)

    monkeypatch.setattr(script.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        script.keep_finished_run(out)
    monkeypatch.setattr(script.os, "replace", real_replace)
    kept = script.keep_finished_run(out)  # the next run
    assert [p.name for p in (out / "earlier-runs").iterdir()] == [kept.name]
    assert sorted(p.name for p in kept.iterdir()) == ["adapter", "result.json"]


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("CPT_PROFILE", "gpu-mistral", r"train_cpt.py: CPT_PROFILE='gpu-mistral' is not a known profile. Choose one of"),
    ("CPT_EMBEDDING_DTYPE", "fp32", r"train_cpt.py: CPT_EMBEDDING_DTYPE='fp32': use float32"),
    ("CPT_SPLIT_ON_BLANK_LINES", "yes please", r"train_cpt.py: CPT_SPLIT_ON_BLANK_LINES="),
])
def test_own_a_mistyped_cpt_switch_stops_train_cpt_with_one_line(monkeypatch, tmp_path, variable, value, message):
    """A mistyped CPT_PROFILE / CPT_EMBEDDING_DTYPE ended train_cpt.py in a raw KeyError / ValueError
    traceback."""
    script = load_train_script()
    if variable == "CPT_SPLIT_ON_BLANK_LINES":
        (tmp_path / "texts").mkdir()
        monkeypatch.setenv("CPT_TEXT_DIR", str(tmp_path / "texts"))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit, match=message):
        script.main([])


def test_own_damaged_records_of_files_are_refused_not_trusted(tmp_path, tiny_llama_factory, tokenizer):
    """The new records themselves damaged after they were written: a cut-off files.sha256.json makes
    its folder refused (never read as 'nothing to check'), and a garbage weight-hash cache is rebuilt."""
    from helpers.artifacts import model_identity
    from helpers.support.files import FOLDER_MANIFEST, folder_manifest_problem, write_folder_manifest
    from helpers.support.gguf import HASHES_FILE
    from helpers.support.paths import cache_dir

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "optimizer.pt").write_bytes(b"state")
    write_folder_manifest(folder)
    assert folder_manifest_problem(folder) is None
    (folder / FOLDER_MANIFEST).write_text('{"files": {"optimizer.pt": {"byt')
    assert "files.sha256.json is unreadable" in folder_manifest_problem(folder)
    write_folder_manifest(folder)
    (folder / "optimizer.pt").unlink()
    assert folder_manifest_problem(folder) == "optimizer.pt is missing"
    model = _model_folder(tmp_path, tiny_llama_factory, tokenizer)
    first = model_identity(_own(model))
    (cache_dir() / HASHES_FILE).write_text("garbage{")
    assert model_identity(_own(model)) == first
    assert json.loads((cache_dir() / HASHES_FILE).read_text())  # rewritten whole


def test_own_a_full_disk_while_recording_a_checkpoint_removes_it_and_keeps_the_one_before(
        word_tokenizer, tmp_path, monkeypatch):
    """A full disk while the checkpoint's file record was written (after transformers' own files)."""
    import errno

    from helpers import checkpoints
    from helpers.errors import DiskFullError

    real = checkpoints.write_folder_manifest

    def record(folder):
        if folder.name == "checkpoint-4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder)

    monkeypatch.setattr(checkpoints, "write_folder_manifest", record)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError, match="Removed the half-written checkpoint-4"):
        checkpoints.train_resumable(_tiny_trainer(word_tokenizer, out))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoints.last_complete_checkpoint(out).name == "checkpoint-2"


def test_own_a_tilde_in_a_path_switch_means_the_home_folder():
    """`--output-dir=~/runs/a` (no shell expands a ~ after "=") created a folder named "~" in the project."""
    script = load_train_script()
    args = script.parse_args(["--tiny", "--output-dir=~/runs/a", "--result-json=~/r.json"])
    assert args.output_dir == Path.home() / "runs" / "a" and args.result_json == Path.home() / "r.json"


def test_own_a_full_disk_while_remembering_a_weights_hash_is_not_an_error(tmp_path, tiny_llama_factory, tokenizer,
                                                                          monkeypatch):
    """The weight-hash cache could not be written (a full disk, a read-only cache folder): choosing the
    model failed with a raw OSError, though the cache only saves time."""
    import errno

    from helpers.artifacts import model_identity
    from helpers.support import gguf

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    folder = _model_folder(tmp_path, tiny_llama_factory, tokenizer)
    monkeypatch.setattr(gguf, "write_json", full)
    assert model_identity(_own(folder))["revision"].startswith("weights sha256 ")


def test_own_two_processes_training_into_one_checkpoint_folder_are_refused(tmp_path):
    """Two kernels running notebook 05 at once (or a notebook and a script into one folder) wrote their
    checkpoints into one outputs/05_trainer, each resuming from or rotating away the other's."""
    from types import SimpleNamespace

    from helpers.checkpoints import TrainingFolderInUse, train_resumable
    from helpers.support.files import exclusive_use

    out = tmp_path / "05_trainer"
    trained = []
    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(out), max_steps=2),
                              train=lambda resume_from_checkpoint=None: trained.append(1))
    with exclusive_use(out):  # the other process, training (a second open of the folder conflicts like one)
        with pytest.raises(TrainingFolderInUse, match=r"05_trainer is being trained into by another process "
                                                      r"\(a second kernel .*Wait for it to end"):
            train_resumable(trainer)
    assert trained == []
    train_resumable(trainer)  # once it has ended
    assert trained == [1]


def test_own_a_full_disk_while_converting_the_model_is_a_disk_full_error(tmp_path, monkeypatch):
    """Converting the embedded GGUF (or a CPT_MODEL .gguf) into the cache on a full disk ended in a raw
    'OSError: [Errno 28] No space left on device' from inside safetensors."""
    import errno

    from helpers.errors import DiskFullError
    from helpers.modeling import load_model_and_tokenizer
    from helpers.support import gguf

    def convert(gguf_path, out_dir, **options):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf, "find_embedded_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(gguf, "convert_gguf_to_hf", convert)
    with pytest.raises(DiskFullError, match=r"(?s)Disk full while saving the converted model \(once, into the cache\) "
                                            r"to outputs/cache .*free some space"):
        load_model_and_tokenizer(CPU_SMOLLM2)
    assert not [p.name for p in (tmp_path / "outputs" / "cache").iterdir() if p.name.startswith(".")]  # no half folder


def test_own_a_full_disk_at_the_final_adapter_save_keeps_the_measurements_and_says_how_to_save(tmp_path, monkeypatch):
    """A full disk while train_cpt.py saved the final adapter ended in a raw error: the RESULT and its
    measurements were lost. Now the RESULT is still printed, no result.json is written (so the same
    command then saves from the last checkpoint, case 14) and the message says so."""
    from helpers import checkpoints
    from helpers.errors import explain_disk_full

    script = load_train_script()
    out = tmp_path / "train_cpt"
    (out / "adapter").mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"run": "earlier"}))

    def full(model, tokenizer, target):
        raise explain_disk_full(target, "the adapter")

    monkeypatch.setattr(checkpoints, "save_adapter", full)
    extra = {}
    message = script.save_final_adapter(object(), None, out, extra)
    assert extra["adapter"] is None and "Disk full while saving the adapter" in extra["adapter_error"]
    assert "run the same command again, and it saves them without training again" in message
    assert not (out / "result.json").exists()
    assert [json.loads(p.read_text())["run"] for p in (out / "earlier-runs").glob("*/result.json")] == ["earlier"]
