"""Tests for helpers.checkpoints: interrupted training resumes from its last checkpoint and ends
where an uninterrupted run ends, including after unsloth #3108 (embedding copies reloaded frozen).

Each run is 6 optimizer steps of a tiny random Llama (LoRA + trainable embed_tokens / lm_head) with a
checkpoint every 2 steps; "a new process" is simulated by building a fresh model and trainer.
"""

from __future__ import annotations

import math

import pytest
from tiny_runs import (
    PROFILE,
    interrupt_at,
    logged_losses,
    step_recorder,
    tiny_dataset,
    tiny_peft_model,
    trainable_state,
)

from helpers.checkpoints import (
    RUN_FILE,
    TRAINABLE_SET_FILE,
    ResumeMismatchError,
    TrainingInterrupted,
    build_resumable_trainer,
    checkpoint_problem,
    last_complete_checkpoint,
    train_resumable,
)
from helpers.profiles import GPU_MISTRAL7B, LORA_PROJECTIONS
from helpers.support.files import read_json, write_json
from helpers.training import EMBEDDING_GROUP

SAVE_STEPS = 2


def make_trainer(tokenizer, output_dir, *callbacks, freeze_embedding_copies=False, profile=PROFILE):
    model = tiny_peft_model(tokenizer, profile, freeze_embedding_copies=freeze_embedding_copies)
    trainer = build_resumable_trainer(profile, model, tokenizer, tiny_dataset(tokenizer), output_dir=output_dir,
                                      save_steps=SAVE_STEPS, disable_tqdm=True)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def interrupted_run(tokenizer, output_dir, at=3):
    """Train until ``at`` steps are done, then Ctrl-C; return the TrainingInterrupted raised."""
    trainer = make_trainer(tokenizer, output_dir, interrupt_at(at))
    with pytest.raises(TrainingInterrupted) as info:
        train_resumable(trainer)
    return info.value


@pytest.fixture(scope="module")
def uninterrupted(word_tokenizer, tmp_path_factory):
    """The reference: the same 6 steps without interruption -> (losses by step, final trainable tensors)."""
    trainer = make_trainer(word_tokenizer, tmp_path_factory.mktemp("uninterrupted"))
    train_resumable(trainer)
    assert trainer.state.global_step == PROFILE.max_steps
    return logged_losses(trainer), trainable_state(trainer.model)


def assert_same_run(trainer, reference):
    import torch

    losses, state = reference
    resumed = logged_losses(trainer)
    assert sorted(resumed) == list(range(1, PROFILE.max_steps + 1))
    for step, loss in losses.items():
        assert math.isclose(resumed[step], loss, rel_tol=1e-4), f"step {step}: {resumed[step]} vs {loss}"
    final = trainable_state(trainer.model)
    assert final.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.allclose(final[name], tensor, rtol=1e-4, atol=1e-6), name


def test_resume_matches_uninterrupted_run(word_tokenizer, tmp_path, uninterrupted):
    output_dir = tmp_path / "outputs" / "05_trainer"
    interrupted_run(word_tokenizer, output_dir, at=3)
    assert last_complete_checkpoint(output_dir).name == "checkpoint-2"

    recorder = step_recorder()  # a new process: fresh model, fresh trainer
    trainer = make_trainer(word_tokenizer, output_dir, recorder)
    train_resumable(trainer)

    assert recorder.steps == [3, 4, 5, 6]  # continued from checkpoint-2, did not start over
    assert_same_run(trainer, uninterrupted)


def test_resume_keeps_embedding_groups(word_tokenizer, tmp_path, uninterrupted, capsys):
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)

    # unsloth #3108: the reloaded model's embed_tokens / lm_head copies come back frozen
    trainer = make_trainer(word_tokenizer, output_dir, freeze_embedding_copies=True)
    train_resumable(trainer)

    assert "#3108" in capsys.readouterr().out
    model = trainer.model
    copies = {name: p for name, p in model.named_parameters() if "modules_to_save" in name}
    assert sorted(n.split(".modules_to_save")[0].rsplit(".", 1)[-1] for n in copies) == ["embed_tokens", "lm_head"]
    assert all(p.requires_grad for p in copies.values())
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    embedding_group = groups[EMBEDDING_GROUP]
    assert embedding_group["initial_lr"] == PROFILE.embedding_learning_rate
    assert {id(p) for p in embedding_group["params"]} == {id(p) for p in copies.values()}
    assert_same_run(trainer, uninterrupted)


def test_resume_in_the_same_session_after_ctrl_c(word_tokenizer, tmp_path, uninterrupted):
    """The notebook case: Ctrl-C in the training cell, then run the same cell again."""
    recorder = step_recorder()
    trainer = make_trainer(word_tokenizer, tmp_path / "run", recorder, interrupt_at(5))
    with pytest.raises(TrainingInterrupted):
        train_resumable(trainer)
    train_resumable(trainer)
    assert recorder.steps == [1, 2, 3, 4, 5, 5, 6]  # step 5 is redone from checkpoint-4
    assert_same_run(trainer, uninterrupted)


def test_resume_repairs_by_rule_without_a_recorded_set(word_tokenizer, tmp_path, uninterrupted):
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    (output_dir / "checkpoint-2" / TRAINABLE_SET_FILE).unlink()  # e.g. a checkpoint of plain transformers,
    (output_dir / "checkpoint-2" / "files.sha256.json").unlink()  # which has no list of its files either
    trainer = make_trainer(word_tokenizer, output_dir, freeze_embedding_copies=True)
    train_resumable(trainer)
    assert_same_run(trainer, uninterrupted)


def adopt_run_record(output_dir, trainer):
    """Give every checkpoint the trainer's run record, as if the settings had not changed: reaches the
    finer checks (trainable set, optimizer groups) behind the run check."""
    for folder in output_dir.glob("checkpoint-*"):
        write_json(folder / RUN_FILE, trainer.cpt_run)


def test_resume_refuses_a_model_with_other_trainable_parameters(word_tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    lora_only = PROFILE.replace(target_modules=LORA_PROJECTIONS)  # no embedding copies at all
    trainer = make_trainer(word_tokenizer, output_dir, profile=lora_only)
    with pytest.raises(ResumeMismatchError, match=r"belongs to another run.*\n  lora: checkpoint"):
        train_resumable(trainer)
    adopt_run_record(output_dir, trainer)
    with pytest.raises(ResumeMismatchError, match="delete") as info:
        train_resumable(trainer)
    assert "embed_tokens" in str(info.value)


def test_resume_refuses_other_optimizer_groups(word_tokenizer, tmp_path):
    """Same trainable tensors, but grouped differently (no separate embedding learning rate): the saved
    Adam state would not fit, and torch would only say "doesn't match the size of optimizer's group"."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    trainer = make_trainer(word_tokenizer, output_dir, profile=PROFILE.replace(embedding_learning_rate=None))
    adopt_run_record(output_dir, trainer)
    with pytest.raises(ResumeMismatchError, match=r"parameter groups .* differ from those saved .*#3108"):
        train_resumable(trainer)


# --- issue 12: resume only the same run, and only from a checkpoint with everything in it ---------


def test_resume_refuses_other_training_data(word_tokenizer, tmp_path):
    """Used to resume silently: a checkpoint of run A continued on the rows of run B."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    model = tiny_peft_model(word_tokenizer)
    trainer = build_resumable_trainer(PROFILE, model, word_tokenizer, tiny_dataset(word_tokenizer, seed=1),
                                      output_dir=output_dir, save_steps=SAVE_STEPS, disable_tqdm=True)
    with pytest.raises(ResumeMismatchError) as info:
        train_resumable(trainer)
    message = str(info.value)
    assert "training data: checkpoint" in message and "token_sha256" in message
    assert "resume=False" in message and "another output_dir" in message
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-2"]  # nothing touched


def test_resume_refuses_another_learning_rate(word_tokenizer, tmp_path):
    """Used to resume silently and keep the old learning rate (the saved scheduler overrides it)."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    trainer = make_trainer(word_tokenizer, output_dir, profile=PROFILE.replace(learning_rate=1e-3))
    with pytest.raises(ResumeMismatchError, match=r"learning_rate: checkpoint 0.005, now 0.001"):
        train_resumable(trainer)


def test_a_second_run_into_the_same_folder_starts_fresh_and_keeps_the_first(word_tokenizer, tmp_path):
    """Used to resume the first run's checkpoint. Now: refused; with resume=False the first run's
    checkpoints are moved to run.previous and the second starts at step 1 in a clean folder."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    recorder = step_recorder()
    second = make_trainer(word_tokenizer, output_dir, recorder, profile=PROFILE.replace(seed=7))
    with pytest.raises(ResumeMismatchError, match="seed: checkpoint 3407, now 7"):
        train_resumable(second)
    train_resumable(second, resume=False)
    assert recorder.steps == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (tmp_path / "run.previous").iterdir()) == ["checkpoint-2"]
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert read_json(output_dir / "checkpoint-6" / RUN_FILE)["settings"]["seed"] == 7


@pytest.mark.parametrize("damage", ["delete optimizer.pt", "delete scheduler.pt", "cut optimizer.pt",
                                    "cut adapter_model.safetensors", "delete run.json"])
def test_a_checkpoint_missing_state_is_set_aside_and_the_one_before_is_used(
        word_tokenizer, tmp_path, uninterrupted, capsys, damage):
    """Without optimizer.pt / scheduler.pt a resume restarted Adam and the warm-up (lr 0.0 at step 3)
    and ended elsewhere; a cut optimizer.pt failed every rerun with OSError [Errno 22]."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=5)
    action, name = damage.split()
    file = output_dir / "checkpoint-4" / name
    if action == "delete":
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    recorder = step_recorder()
    trainer = make_trainer(word_tokenizer, output_dir, recorder)
    train_resumable(trainer)
    out = capsys.readouterr().out
    assert f"checkpoint-4 was not written to the end ({name}" in out
    assert recorder.steps == [3, 4, 5, 6]  # from checkpoint-2
    assert (output_dir / "incomplete" / "checkpoint-4").is_dir()
    assert_same_run(trainer, uninterrupted)


def test_checkpoint_problem_names_what_is_missing(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    assert "trainer_state.json missing" in checkpoint_problem(folder)
    write_json(folder / "trainer_state.json", {"global_step": 2})
    assert checkpoint_problem(folder) == "optimizer.pt missing"
    (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    assert "optimizer.pt not a complete torch.save archive" in checkpoint_problem(folder)


def test_build_resumable_trainer_refuses_settings_that_cannot_train(word_tokenizer, tmp_path):
    from helpers.errors import SettingsError

    model = tiny_peft_model(word_tokenizer)
    for bad, match in ((dict(max_steps=0), "max_steps=0: use at least 1, or -1"),
                       (dict(per_device_train_batch_size=0), "per_device_train_batch_size=0: use at least 1")):
        with pytest.raises(SettingsError, match=match):
            build_resumable_trainer(PROFILE.replace(**bad), model, word_tokenizer, tiny_dataset(word_tokenizer),
                                    output_dir=tmp_path / "run")


def test_resume_skips_a_checkpoint_cut_off_while_saving(word_tokenizer, tmp_path, uninterrupted, capsys):
    """A process killed while writing checkpoint-4 leaves it without its trainer_state.json."""
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=5)
    (output_dir / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hist', encoding="utf-8")

    recorder = step_recorder()
    trainer = make_trainer(word_tokenizer, output_dir, recorder)
    train_resumable(trainer)

    assert "checkpoint-4 was not written to the end" in capsys.readouterr().out
    assert recorder.steps == [3, 4, 5, 6]  # from checkpoint-2
    assert (output_dir / "incomplete" / "checkpoint-4").is_dir()  # set aside, not deleted
    assert_same_run(trainer, uninterrupted)


def test_resume_false_starts_over(word_tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    interrupted_run(word_tokenizer, output_dir, at=3)
    recorder = step_recorder()
    train_resumable(make_trainer(word_tokenizer, output_dir, recorder), resume=False)
    assert recorder.steps == [1, 2, 3, 4, 5, 6]


def test_resume_message_names_the_checkpoint_and_how_to_resume(word_tokenizer, tmp_path, capsys):
    error = interrupted_run(word_tokenizer, tmp_path / "outputs" / "05_trainer", at=3)
    message = str(error)
    assert isinstance(error, KeyboardInterrupt)
    assert "interrupted at step 3 of 6" in message
    assert "outputs/05_trainer/checkpoint-2 (step 2)" in message
    assert "trainer.train() continues from it" in message and "resume_from_checkpoint" in message
    assert message in capsys.readouterr().out  # printed too, above the traceback
    assert isinstance(error.__cause__, KeyboardInterrupt)


def test_resume_message_before_the_first_checkpoint(word_tokenizer, tmp_path):
    error = interrupted_run(word_tokenizer, tmp_path / "run", at=1)
    assert "No checkpoint was written yet" in str(error)
    assert "step 2" in str(error)  # when the first one would have come


def test_resume_message_when_checkpoints_are_off(word_tokenizer, tmp_path):
    from helpers.training import build_trainer

    model = tiny_peft_model(word_tokenizer)
    trainer = build_trainer(PROFILE, model, word_tokenizer, tiny_dataset(word_tokenizer),
                            output_dir=str(tmp_path / "run"), disable_tqdm=True)
    trainer.add_callback(interrupt_at(2))
    with pytest.raises(TrainingInterrupted, match="save_strategy='no'.*build_resumable_trainer"):
        train_resumable(trainer)


def test_build_resumable_trainer_defaults(word_tokenizer, tmp_path):
    from helpers.checkpoints import default_save_steps

    model = tiny_peft_model(word_tokenizer)
    trainer = build_resumable_trainer(PROFILE, model, word_tokenizer, tiny_dataset(word_tokenizer))
    assert trainer.args.output_dir == str(tmp_path / "outputs" / "05_trainer")
    assert getattr(trainer.args.save_strategy, "value", trainer.args.save_strategy) == "steps"
    assert trainer.args.save_steps == 1  # 6 steps // 4
    assert trainer.args.save_total_limit == 2
    # the walkthrough: 2,500 stories, 2 x 8 per optimizer step, one epoch -> 157 steps, a checkpoint every 39
    assert default_save_steps(GPU_MISTRAL7B, train_rows=333) == 41  # 333 packed rows, 2 a step: 167 steps
    walkthrough = GPU_MISTRAL7B.replace(packing=False, per_device_train_batch_size=2, gradient_accumulation_steps=8)
    assert default_save_steps(walkthrough, train_rows=2500) == 39  # 157 steps of 16 padded stories


def test_a_finished_run_is_not_resumed_but_trained_again(word_tokenizer, tmp_path, capsys):
    """Re-running a notebook after a complete run must train again, not 'resume' at the last step."""
    output_dir = tmp_path / "run"
    train_resumable(make_trainer(word_tokenizer, output_dir, step_recorder()))
    recorder = step_recorder()
    train_resumable(make_trainer(word_tokenizer, output_dir, recorder))
    assert recorder.steps == [1, 2, 3, 4, 5, 6]
    assert "ends a finished run" in capsys.readouterr().out


def test_the_walkthroughs_trainer_train_resumes_after_ctrl_c(word_tokenizer, tmp_path, uninterrupted):
    """Notebook 05 calls trainer.train(), as the walkthrough does: on a trainer built by
    build_resumable_trainer (or given record_checkpoints) that call is train_resumable, so running the
    cell again after an interruption continues from the last checkpoint and ends as an uninterrupted
    run; an explicit argument is the library's own call."""
    trainer = make_trainer(word_tokenizer, tmp_path / "run", interrupt_at(3))
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert last_complete_checkpoint(tmp_path / "run").name == "checkpoint-2"
    again = make_trainer(word_tokenizer, tmp_path / "run")  # a new kernel: model and trainer built again
    output = again.train()
    assert output.global_step == PROFILE.max_steps
    assert_same_run(again, uninterrupted)
    assert again.train.__name__ == "train" and again.cpt_library_train.__self__ is again
