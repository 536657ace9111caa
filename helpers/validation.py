"""Settings that cannot train, refused before anything is loaded or written.

Without these checks, ``max_seq_length=1`` trains on rows with nothing to predict and reports a loss
of 0.0, ``max_steps=0`` trains one step and exits successfully, a batch size of 0 fails deep inside
the data loader, and an empty prompt fails inside ``generate`` with "cannot reshape tensor of 0
elements". Each message gives the smallest value that works.
"""

from __future__ import annotations

from .profiles import Profile

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
