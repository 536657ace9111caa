"""Issue 31, "No silently wrong result, round 3": each test reproduces one case that used to lose
output, raise a raw error or give a silently wrong result (the case number is in the test's name)."""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback
from pathlib import Path

import pytest
from conftest import load_train_script

from helpers.support.files import save_directory_atomically

FORK = multiprocessing.get_context("fork")


def _save_adapter_folders(target: str, tag: str, times: int, errors) -> None:
    def write(folder):
        (folder / "adapter_model.safetensors").write_bytes(tag.encode() * 1000)
        (folder / "adapter_config.json").write_text(json.dumps({"tag": tag}))

    for _ in range(times):
        try:
            save_directory_atomically(target, write)
        except Exception:  # noqa: BLE001 - counted, shown by the test
            errors.put(traceback.format_exc())


def _run_in_parallel(function, args_list) -> list[str]:
    errors = FORK.Queue()
    processes = [FORK.Process(target=function, args=(*args, errors)) for args in args_list]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert all(p.exitcode == 0 for p in processes)
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def test_case02_two_processes_saving_one_folder_never_fail(tmp_path):
    """Two processes saving the same adapter folder at once: some saves raised a bare
    FileNotFoundError ('.05_adapter.old', '...tmp-...') before the swap ran under a lock."""
    target = str(tmp_path / "05_adapter")
    errors = _run_in_parallel(_save_adapter_folders, [(target, "A", 150), (target, "B", 150)])
    assert errors == []
    tag = json.loads((tmp_path / "05_adapter" / "adapter_config.json").read_text())["tag"]
    weights = (tmp_path / "05_adapter" / "adapter_model.safetensors").read_bytes()
    assert weights == tag.encode() * 1000  # one save's files, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["05_adapter"]


def _save_notebook_outputs(root: str, tag: str, times: int, errors) -> None:
    os.environ["CPT_ROOT"] = root
    from helpers.artifacts import save_outputs
    from helpers.profiles import CPU_SMOLLM2

    for _ in range(times):
        try:
            save_outputs(CPU_SMOLLM2, {"before": {"perplexity": tag}})
        except Exception:  # noqa: BLE001 - counted, shown by the test
            errors.put(traceback.format_exc())


def test_case13_concurrent_save_outputs_never_fail(tmp_path, monkeypatch):
    """Two processes saving one notebook's outputs at once: about a third of the saves failed with
    'Directory not empty: .commit-NB.ready' or FileNotFoundError."""
    monkeypatch.setenv("CPT_ROOT", str(tmp_path))
    (tmp_path / "outputs").mkdir()
    errors = _run_in_parallel(_save_notebook_outputs, [(str(tmp_path), "A", 60), (str(tmp_path), "B", 60)])
    assert errors == [], errors[0]
    from helpers.artifacts import require
    from helpers.profiles import CPU_SMOLLM2

    path = require("before", CPU_SMOLLM2)  # the last save's set is whole and passes its manifest
    assert json.loads(path.read_text())["perplexity"] in ("A", "B")
    assert not list((tmp_path / "outputs").glob(".commit-*"))






def test_case12_runs_into_one_output_dir_keep_every_finished_adapter_and_result(tmp_path):
    """Three train_cpt.py runs into one --output-dir: the first run's adapter and result.json were
    overwritten. Each run now moves the finished run it finds into earlier-runs/ before writing."""
    script = load_train_script()
    out = tmp_path / "train_cpt"
    for run in ("first", "second", "third"):
        script.keep_finished_run(out)
        (out / "adapter").mkdir(parents=True)
        (out / "adapter" / "adapter_model.safetensors").write_text(run)
        (out / "result.json").write_text(json.dumps({"run": run}))
    kept = sorted((out / "earlier-runs").iterdir())
    assert len(kept) == 2
    assert sorted(json.loads((k / "result.json").read_text())["run"] for k in kept) == ["first", "second"]
    assert sorted((k / "adapter" / "adapter_model.safetensors").read_text() for k in kept) == ["first", "second"]
    assert json.loads((out / "result.json").read_text())["run"] == "third"
    assert script.keep_finished_run(tmp_path / "empty") is None


def test_case11_disk_full_while_writing_a_checkpoint_is_a_disk_full_error_and_frees_the_space(tmp_path):
    """torch.save on a full disk raised a raw 'RuntimeError: [enforce fail at inline_container.cc…]
    unexpected pos' and left the half-written checkpoint filling the disk."""
    from types import SimpleNamespace

    from helpers.checkpoints import train_resumable
    from helpers.errors import DiskFullError

    out = tmp_path / "05_trainer"

    def train(resume_from_checkpoint=None):
        half = out / "checkpoint-2"
        half.mkdir(parents=True)
        (half / "optimizer.pt").write_bytes(b"PK\x03\x04 cut off")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4544 vs 4432")

    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(out)), train=train)
    with pytest.raises(DiskFullError) as caught:
        train_resumable(trainer, None)
    assert "Disk full while saving a checkpoint" in str(caught.value)
    assert "Removed the half-written checkpoint-2" in str(caught.value)
    assert not (out / "checkpoint-2").exists()


@pytest.mark.parametrize("value", ["2", "flase", "disable", "enabled"])
def test_case08_a_yes_no_switch_with_another_value_is_refused(monkeypatch, tmp_path, value):
    """CPT_TORCH_VARLEN=2, =flase and =disable all meant "on", with no message; the other yes/no
    CPT_* switches read the same loose way."""
    from helpers.data import check_text_folder_location
    from helpers.profiles import CPU_SMOLLM2, weights_are_random
    from helpers.support import varlen_attention

    monkeypatch.setenv("CPT_TORCH_VARLEN", value)
    with pytest.raises(ValueError, match=f"CPT_TORCH_VARLEN='{value}' is not a yes/no value: use 1"):
        varlen_attention._off()
    monkeypatch.setenv("CPT_ALLOW_ANY_TEXT_DIR", value)
    with pytest.raises(ValueError, match="CPT_ALLOW_ANY_TEXT_DIR"):
        check_text_folder_location(tmp_path)
    with pytest.raises(ValueError, match="CPT_RANDOM_WEIGHTS"):
        weights_are_random(CPU_SMOLLM2, {"CPT_RANDOM_WEIGHTS": value})


@pytest.mark.parametrize(("value", "off"), [("0", True), ("OFF", True), (" false ", True), ("1", False), ("", False)])
def test_case08_documented_switch_values_still_work(monkeypatch, value, off):
    from helpers.support import varlen_attention

    monkeypatch.setenv("CPT_TORCH_VARLEN", value)
    assert varlen_attention._off() is off


def _text_folder(tmp_path, content: bytes):
    folder = tmp_path / "my_text"
    folder.mkdir()
    (folder / "good.txt").write_text("A plain document of my own.\n", encoding="utf-8")
    (folder / "bad.txt").write_bytes(content)
    return folder


def test_case01_utf16_without_bom_is_refused_with_the_iconv_command(tmp_path):
    """A UTF-16LE .txt without BOM was accepted and trained as 'H\\x00e\\x00l\\x00...'."""
    from helpers.data import DataError, load_text_folder

    folder = _text_folder(tmp_path, "Hello, my own text.\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"bad.txt: looks like UTF-16LE .*iconv -f UTF-16LE -t UTF-8"):
        load_text_folder(folder)
    (folder / "bad.txt").write_bytes("Hello, my own text.\n".encode("utf-16-be"))
    with pytest.raises(DataError, match=r"bad.txt: looks like UTF-16BE"):
        load_text_folder(folder)


@pytest.mark.parametrize("content", [b"Some text\x00 with a NUL", b"Text with \x1b[31m escapes\x07", b"\x7fdel"])
def test_case06_control_bytes_in_a_text_file_are_refused_by_name(tmp_path, content):
    """NUL and other control bytes in a .txt were trained as they are (some tokenize to the pad token)."""
    from helpers.data import DataError, load_text_folder

    folder = _text_folder(tmp_path, content)
    with pytest.raises(DataError, match=r"bad.txt: holds \d+ control character"):
        load_text_folder(folder)


def test_case06_tabs_form_feeds_and_crlf_are_still_text(tmp_path):
    from helpers.data import load_text_folder

    folder = _text_folder(tmp_path, b"Col1\tCol2\r\nPage\x0cbreak\x0bvt\n")
    assert load_text_folder(folder).num_rows == 2


def test_case07_an_unreadable_subfolder_is_counted_and_named(tmp_path, capsys, monkeypatch):
    """An unreadable subfolder of CPT_TEXT_DIR was skipped while the summary said nothing was
    missing (simulated: the tests may run as root, who reads every folder)."""
    import errno

    from helpers import data

    folder = _text_folder(tmp_path, b"Second document.")
    (folder / "locked").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):
        for here, dirs, files in real_walk(top, onerror=onerror, **kwargs):
            if Path(here).name == "locked":
                onerror(PermissionError(errno.EACCES, "Permission denied", here))
                dirs[:] = []
                continue
            yield here, dirs, files

    monkeypatch.setattr(data.os, "walk", walk)
    assert data.load_text_folder(folder).num_rows == 2
    assert "Skipped 1 folder(s) whose files were not read: locked/ (cannot be read: Permission denied" in (
        capsys.readouterr().out)


def test_case07_a_linked_subfolder_is_named_even_when_root_reads_everything(tmp_path, capsys):
    from helpers.data import load_text_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked.txt").write_text("Linked document.", encoding="utf-8")
    folder = _text_folder(tmp_path, b"Second document.")
    (folder / "chapters").symlink_to(elsewhere, target_is_directory=True)
    assert load_text_folder(folder).num_rows == 2
    assert "Skipped 1 folder(s) whose files were not read: chapters/ (a link to a folder" in capsys.readouterr().out


def test_case16_a_script_user_is_told_the_script_way_to_resume_or_start_fresh(tmp_path):
    """A script user was told to "run the training cell again", and a resume mismatch suggested
    train_resumable(resume=False) instead of --fresh. train_cpt.py now sets what to say."""
    from types import SimpleNamespace

    from helpers.checkpoints import ResumeMismatchError, interruption_message, train_resumable

    out = tmp_path / "checkpoints"
    (out / "checkpoint-2").mkdir(parents=True)
    trainer = SimpleNamespace(
        args=SimpleNamespace(output_dir=str(out), save_strategy="steps", save_steps=2, max_steps=6),
        state=SimpleNamespace(global_step=3, max_steps=6), cpt_run={"model": "this"},
        cpt_resume_how="run the same scripts/train_cpt.py command again",
        cpt_fresh_how="run scripts/train_cpt.py again with --fresh", cpt_other_dir_how="give this run another --output-dir")
    import helpers.checkpoints as checkpoints

    complete = out / "checkpoint-2"
    original = checkpoints.last_complete_checkpoint
    checkpoints.last_complete_checkpoint = lambda folder: complete
    try:
        message = interruption_message(trainer)
        assert "run the same scripts/train_cpt.py command again" in message and "cell" not in message
        (complete / "run.json").write_text(json.dumps({"model": "other"}))
        with pytest.raises(ResumeMismatchError) as caught:
            train_resumable(trainer, None)
    finally:
        checkpoints.last_complete_checkpoint = original
    assert "--fresh" in str(caught.value) and "resume=False" not in str(caught.value)
    assert "another --output-dir" in str(caught.value)


@pytest.mark.parametrize(("flags", "message"), [
    (["--output-dir", "{tmp}/a_file"], "is a file, not a folder"),
    (["--output-dir", "{tmp}/a_file/run"], "is a file, not a folder"),
    (["--baseline-result", "{tmp}/missing.json"], "--baseline-result .*missing.json: no such file"),
    (["--baseline-result", "{tmp}/a_file"], "not a readable JSON file"),
    (["--result-json", "{tmp}"], "--result-json .*: is a folder; name a file"),
])
def test_extra_mistyped_paths_are_refused_before_training(tmp_path, flags, message):
    """Own cases (mistyped paths): a --output-dir that is a file, a missing or broken
    --baseline-result, a --result-json that is a folder all failed only after the whole run had
    trained, with a raw error, and the run's result was lost."""
    script = load_train_script()
    (tmp_path / "a_file").write_text("not json {")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    with pytest.raises(SystemExit, match=message):
        script.main(["--tiny", *flags])


def test_case10_an_encoder_or_encoder_decoder_is_refused_before_loading():
    """A BERT folder loaded as BertLMHeadModel, trained, and only then failed with a misleading
    'EmbeddingsNotTrained ... no trainable copy found'."""
    from transformers import BertConfig, LlamaConfig, T5Config

    from helpers.modeling import UnknownArchitectureError, refuse_non_causal

    with pytest.raises(UnknownArchitectureError, match="model_type 'bert', an encoder model"):
        refuse_non_causal(BertConfig(), "my BERT")
    with pytest.raises(UnknownArchitectureError, match="an encoder-decoder model"):
        refuse_non_causal(T5Config(), "my T5")
    refuse_non_causal(LlamaConfig(), "my Llama")  # a decoder passes
