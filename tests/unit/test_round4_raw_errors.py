"""Issue 40, "No silently wrong result, round 4": one clear line instead of a traceback. An outputs or
cache folder that cannot be made (a read-only mount, a file above it) is one sentence naming the
variable to set, and a Ctrl-C at any point of scripts/train_cpt.py exits with code 130 and says what
was saved. Each case test fails on ebb1ba7 (``own`` marks the cases found while fixing)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_train_script

from helpers.support import paths

SCRIPT = REPO_ROOT / "scripts" / "train_cpt.py"


def _read_only_below(monkeypatch, top: Path) -> None:
    """Make every mkdir below ``top`` fail as on a read-only mount (the tests may run as root, whom
    permissions do not stop)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.resolve().is_relative_to(top.resolve()) and not self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


# --- case 5: raw errors of the outputs folder ------------------------------------------------------


def test_case05_cpt_outputs_on_a_read_only_mount_is_one_line(tmp_path, monkeypatch):
    """CPT_OUTPUTS on a read-only mount ended in "OSError: [Errno 30] Read-only file system: '.../outputs/cache'"."""
    mount = tmp_path / "mount"
    (mount / "outputs").mkdir(parents=True)
    monkeypatch.setenv("CPT_OUTPUTS", str(mount / "outputs"))
    _read_only_below(monkeypatch, mount)
    with pytest.raises(paths.OutputsNotWritableError,
                       match=r"^The cache folder .*outputs/cache cannot be created: the file system is read-only "
                             r"\(.*cache\)\. Set CPT_OUTPUTS to a folder you can write to \(or unset it for "):
        paths.cache_dir()


def test_case05_train_cpt_with_cpt_outputs_read_only_ends_in_one_line(tmp_path, monkeypatch, capsys, torch_one_thread):
    """The same through scripts/train_cpt.py: one line on stderr and exit code 1, not a traceback."""
    (tmp_path / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)  # the smoke model's tokenizer
    mount = tmp_path / "mount"
    mount.mkdir()
    monkeypatch.setenv("CPT_OUTPUTS", str(mount / "outputs"))
    _read_only_below(monkeypatch, mount)
    assert load_train_script().run(["--tiny", "--output-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_cpt.py: The outputs folder ") and "cannot be created: the file system is read-only" in err
    assert "Traceback" not in err


def test_case05_cpt_outputs_below_a_file_is_one_line(tmp_path, monkeypatch):
    """CPT_OUTPUTS below a file ended in a raw NotADirectoryError."""
    (tmp_path / "notes.txt").write_text("a file")
    monkeypatch.setenv("CPT_OUTPUTS", str(tmp_path / "notes.txt" / "outputs"))
    with pytest.raises(paths.OutputsNotAFolderError,
                       match=r"The outputs folder .*notes.txt/outputs \(CPT_OUTPUTS\) cannot be made: .*notes.txt above "
                             r"it is a file, not a folder\. Set CPT_OUTPUTS to a folder you can write to"):
        paths.outputs_dir()


def test_case05_cpt_outputs_naming_a_file_names_cpt_outputs_not_cpt_root(tmp_path, monkeypatch):
    """The advice for CPT_OUTPUTS naming a file mentioned CPT_ROOT, which the user had not set."""
    (tmp_path / "results.json").write_text("{}")
    monkeypatch.setenv("CPT_OUTPUTS", str(tmp_path / "results.json"))
    with pytest.raises(paths.OutputsNotAFolderError, match=r"results.json \(CPT_OUTPUTS\) is a file, not a folder.*"
                                                          r"or set CPT_OUTPUTS to a folder you can write to") as caught:
        paths.outputs_dir()
    assert "CPT_ROOT" not in str(caught.value)


def test_own_cpt_cache_dir_read_only_names_cpt_cache_dir(tmp_path, monkeypatch):
    """Own case: CPT_CACHE_DIR on a read-only place ended in the same raw OSError, and the advice must name
    CPT_CACHE_DIR, the variable that put it there."""
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "ro" / "cache"))
    _read_only_below(monkeypatch, tmp_path / "ro")
    with pytest.raises(paths.OutputsNotWritableError, match=r"cannot be created: the file system is read-only .* Set "
                                                           r"CPT_CACHE_DIR to a folder you can write to"):
        paths.cache_dir()


# --- case 5: Ctrl-C at any point of train_cpt.py ------------------------------------------------------


def test_case05_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    """Ctrl-C during train_cpt.py's start-up printed a bare KeyboardInterrupt traceback."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPT_", "ACCELERATE"))}
    env.update(CPT_ROOT=str(root), HF_DATASETS_CACHE=str(root / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--tiny", "--output-dir", str(tmp_path / "run")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # the first line comes once the processes have started
            if line.startswith("profile  :") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "train_cpt.py: stopped by Ctrl-C while " in err


def test_case05_the_ctrl_c_message_says_what_was_saved(tmp_path):
    """What a Ctrl-C says: nothing saved yet, or the last checkpoint and the command that resumes it."""
    script = load_train_script()
    out = tmp_path / "run"
    assert script.stopped_message("loading the model and the data", out, KeyboardInterrupt()) == (
        "train_cpt.py: stopped by Ctrl-C while loading the model and the data. Nothing of this run was saved yet "
        "(no checkpoint in run/checkpoints); run the same command again to start it.")
    for step in (2, 4):
        (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (out / "checkpoints" / f"checkpoint-{step}" / "run.json").write_text("{}")
    (out / "checkpoints" / "checkpoint-6").mkdir()  # cut off while saving: no run record
    assert script.stopped_message("building the trainer", out, KeyboardInterrupt()).endswith(
        "The last checkpoint is run/checkpoints/checkpoint-4 (step 4); run the same command again to resume from it.")


def test_own_ctrl_c_while_saving_the_adapter_says_the_relaunch_saves_it(tmp_path, monkeypatch):
    """Own case: Ctrl-C while the final adapter was saved ended in a traceback, with no word that the same
    command saves it from the last checkpoint without training again (issue 31, case 14)."""
    from helpers import checkpoints

    script = load_train_script()
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-6" / "run.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_adapter", interrupted)
    monkeypatch.setattr(script, "main", lambda argv=None: script.save_final_adapter(object(), None, out, {}))
    script.STAGE.update(now="saving the adapter and the result", output_dir=out)
    assert script.run([]) == 130
    message = script.stopped_message(script.STAGE["now"], out, KeyboardInterrupt())
    assert message.startswith("train_cpt.py: stopped by Ctrl-C while saving the adapter and the result.")
    assert "It saves the adapter and result.json from that checkpoint without training again." in message
