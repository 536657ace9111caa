"""Streaming generation: run ``model.generate`` in a thread and print its text as it arrives,
wrapped at a fixed width on word boundaries.

Notebook ``03_inference_before_training`` streams its story with the walkthrough's own code
(``TextIteratorStreamer(tokenizer)``, a ``Thread``, a loop that wraps by counting characters) and hands
it to notebook 06 through :func:`story_from_stream`; its "Going further" measures that loop's quirks
and shows :class:`WrappedPrinter`, which :func:`stream_generate` uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Thread

from .errors import check_prompt
from .modeling import input_device


class WrappedPrinter:
    """Print text that arrives in arbitrary chunks, wrapped at ``width`` columns.

    A word is printed once it is complete (a space or newline follows it, or :meth:`close` is
    called), so words are never split across lines. The model's own newlines are kept, runs of
    spaces collapse to one, empty chunks are ignored, and a single word longer than ``width`` is
    cut into ``width``-sized pieces.
    """

    def __init__(self, width: int = 100, write: Callable[[str], object] | None = None):
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self._write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        self.column = 0
        self._word = ""
        self._space_pending = False
        self.received = ""  # everything fed so far, unwrapped

    def feed(self, chunk: str) -> None:
        """Take the next chunk of text; print every word it completes."""
        if not chunk:
            return
        self.received += chunk
        for char in chunk:
            if char == "\n":
                self._place_word()
                self._write("\n")
                self.column = 0
                self._space_pending = False
            elif char.isspace():
                self._place_word()
                self._space_pending = self.column > 0
            else:
                self._word += char

    def close(self) -> None:
        """Print the last, unfinished word and end the line."""
        self._place_word()
        if self.column > 0:
            self._write("\n")
            self.column = 0

    def _place_word(self) -> None:
        word, self._word = self._word, ""
        if not word:
            return
        separator = " " if self._space_pending and self.column > 0 else ""
        if self.column > 0 and self.column + len(separator) + len(word) > self.width:
            self._write("\n")
            self.column, separator = 0, ""
        while len(word) > self.width - self.column:  # only when a word is longer than a line
            piece = self.width - self.column
            self._write(word[:piece] + "\n")
            word, self.column = word[piece:], 0
        self._write(separator + word)
        self.column += len(separator) + len(word)
        self._space_pending = False


@dataclass
class StreamResult:
    """What one streamed generation produced."""

    prompt: str
    text: str  # the generated continuation only
    chunks: list[str] = field(default_factory=list)  # as the streamer yielded them
    token_ids: list[int] = field(default_factory=list)  # the generated tokens, special tokens included
    eos_token_ids: tuple[int, ...] = ()  # the ids that end generation (the model's generation config)
    max_new_tokens: int | None = None
    cut_characters: int = 0  # characters left out at the end: their bytes were cut off by max_new_tokens

    @property
    def full_text(self) -> str:
        """Prompt followed by the continuation."""
        return self.prompt + self.text

    @property
    def stopped_at_eos(self) -> bool:
        """True when generation ended because the model produced an end-of-sequence token."""
        return bool(self.token_ids) and self.token_ids[-1] in self.eos_token_ids

    def stop_reason(self) -> str:
        """Return a sentence saying where and why generation stopped."""
        words = len(self.text.split())
        if self.stopped_at_eos:
            return f"stopped by itself: EOS after {len(self.token_ids)} tokens ({words} words)"
        return (f"did not stop: no EOS within max_new_tokens={self.max_new_tokens} "
                f"({len(self.token_ids)} tokens, {words} words)")


STREAM_THREAD_NAME = "cpt-stream-generate"
STOP_WAIT_S = 30  # how long a stopped stream waits for generate to notice (one token's time, normally)
REPLACEMENT = "\ufffd"  # what decoding gives for the bytes of a character whose other bytes are still to come


def _whole_characters_streamer(tokenizer, **kwargs):
    """Return a ``TextIteratorStreamer`` that never yields a cut character.

    Byte-level tokenizers split a multi-byte character (an emoji, many CJK characters) over several
    tokens; decoded before its last byte, it reads as U+FFFD. transformers' streamer waits for a space
    or a newline before yielding, so a cut character shows up only in the final flush, when
    ``max_new_tokens`` ends generation in the middle of one. That tail is held back here (counted in
    ``cut_characters``) instead of being printed as U+FFFD."""
    from transformers import TextIteratorStreamer  # deferred: heavy

    class WholeCharactersStreamer(TextIteratorStreamer):
        cut_characters = 0

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if stream_end:
                whole = text.rstrip(REPLACEMENT)
                self.cut_characters += len(text) - len(whole)
                text = whole
            super().on_finalized_text(text, stream_end)

    return WholeCharactersStreamer(tokenizer, **kwargs)


def _stop_flag():
    """Return ``(event, criteria)``: a ``StoppingCriteria`` that ends ``generate`` at its next token
    once ``event`` is set (from another thread)."""
    import threading

    import torch  # deferred: heavy
    from transformers import StoppingCriteria  # deferred: heavy

    event = threading.Event()

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return event, StopWhenAsked()


class PromptTooLongError(ValueError):
    """The prompt has more tokens than the model's context; the message gives both numbers."""


class PromptLengthWarning(UserWarning):
    """Prompt plus ``max_new_tokens`` run past the model's context; the message gives the numbers."""


def check_prompt_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise :class:`PromptTooLongError` when a prompt of ``prompt_tokens`` tokens does not fit the
    model's context (``config.max_position_embeddings``), and warn (:class:`PromptLengthWarning`)
    when it fits but ``max_new_tokens`` more would not. Before any generating: past its context a
    model has never seen such positions (RoPE) or has none (learned positions), and the time spent
    generating is wasted."""
    import warnings

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return
    keep = max(1, limit - max_new_tokens)
    if prompt_tokens > limit:
        raise PromptTooLongError(
            f"The prompt is {prompt_tokens:,} tokens, longer than this model's context of {limit:,} tokens "
            f"(config.max_position_embeddings). Shorten it to at most {keep:,} tokens (the context less "
            f"max_new_tokens={max_new_tokens}), e.g. keep its end: "
            f"tokenizer.decode(tokenizer(prompt)['input_ids'][-{keep}:]).")
    if prompt_tokens + max_new_tokens > limit:
        warnings.warn(
            f"The prompt is {prompt_tokens:,} tokens and max_new_tokens={max_new_tokens}: together "
            f"{prompt_tokens + max_new_tokens:,}, past this model's context of {limit:,} tokens; the tokens after "
            f"position {limit:,} come from positions the model never saw. Lower max_new_tokens to at most "
            f"{limit - prompt_tokens:,} or shorten the prompt.", PromptLengthWarning, stacklevel=3)


def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int = 128, width: int = 100,
                    echo_prompt: bool = True, printer: WrappedPrinter | None = None, **generate_kwargs) -> StreamResult:
    """Generate from ``prompt`` in a background thread and print the text wrapped as it streams.

    ``model.generate`` blocks until it is done, so it runs in a thread while this thread reads
    decoded text from a ``TextIteratorStreamer``. Greedy decoding unless ``generate_kwargs`` say
    otherwise. Returns a :class:`StreamResult`.

    A multi-byte character is printed only once all its tokens are there (never as U+FFFD). A prompt
    longer than the model's context raises :class:`PromptTooLongError` before generating (one that
    leaves no room for ``max_new_tokens`` warns). Stopped (Ctrl-C, the notebook's stop button, an
    error while printing), the generating thread is told to stop and is waited for before the
    interruption goes on, so no generation keeps running behind it (a process ending while it ran
    aborted with "terminate called without an active exception").
    """
    import torch  # deferred: heavy
    from transformers import StoppingCriteriaList  # deferred: heavy

    check_prompt(prompt)  # an empty prompt fails inside generate with "cannot reshape tensor of 0 elements"
    inputs = tokenizer(prompt, return_tensors="pt").to(input_device(model))
    check_prompt_length(model, inputs["input_ids"].shape[1], generate_kwargs.get("max_new_tokens", max_new_tokens))
    streamer = _whole_characters_streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop, stop_criteria = _stop_flag()
    kwargs = dict(inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    kwargs.update(generate_kwargs)
    kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []), stop_criteria])
    printer = printer or WrappedPrinter(width)
    if echo_prompt:
        printer.feed(prompt)
    errors: list[BaseException] = []
    outputs: list = []

    def run():
        try:
            with torch.no_grad():
                outputs.append(model.generate(**kwargs))
        except BaseException as err:  # surface errors from the thread instead of hanging
            errors.append(err)
            streamer.end()

    thread = Thread(target=run, daemon=True, name=STREAM_THREAD_NAME)
    thread.start()
    chunks = []
    try:
        for chunk in streamer:
            chunks.append(chunk)
            printer.feed(chunk)
    except BaseException:  # Ctrl-C, or the printer failed: stop generating, then let it go on
        stop.set()
        thread.join(timeout=STOP_WAIT_S)
        raise
    thread.join()
    printer.close()
    if errors:
        raise errors[0]
    token_ids = outputs[0][0, inputs["input_ids"].shape[1]:].tolist() if outputs else []
    eos = kwargs.get("eos_token_id", getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    eos = tokenizer.eos_token_id if eos is None else eos
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    return StreamResult(prompt=prompt, text="".join(chunks), chunks=chunks, token_ids=token_ids,
                        eos_token_ids=eos_ids, max_new_tokens=kwargs["max_new_tokens"],
                        cut_characters=streamer.cut_characters)


def story_from_stream(tokenizer, prompt: str, chunks: list[str], eos_token_id=None) -> dict:
    """Return ``{"text", "new_tokens", "stopped_at_eos"}`` for a generation streamed the walkthrough's way.

    The walkthrough streams through ``TextIteratorStreamer(tokenizer)``: the prompt is echoed and special
    tokens are printed (a BOS before the prompt with some tokenizers, the EOS that ends a story).
    ``chunks`` are the pieces it yielded, in order. ``text`` is the continuation alone, without special
    tokens, as :func:`stream_generate` returns it. ``new_tokens``: the streamer queues one chunk each time
    ``generate`` hands it tokens (once the prompt, then once per new token, empty or not) and one more
    when generation ends, so ``len(chunks) - 2``. ``stopped_at_eos``: the streamed text ends in an
    end-of-sequence token (``eos_token_id``, an id or a list of ids: the model's generation config;
    the tokenizer's EOS when None). Raises ``ValueError`` when the chunks do not hold the prompt.
    """
    if len(chunks) < 2:
        raise ValueError(f"expected the chunks of a whole stream (the prompt and an end), got {len(chunks)}")
    streamed = "".join(chunks)
    eos_ids = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = [] if eos_ids is None else (list(eos_ids) if isinstance(eos_ids, (list, tuple)) else [eos_ids])
    eos_strings = [s for s in tokenizer.convert_ids_to_tokens(eos_ids) if s]
    stopped = any(streamed.rstrip().endswith(s) for s in eos_strings)
    for special in sorted(set(tokenizer.all_special_tokens) | set(eos_strings), key=len, reverse=True):
        streamed = streamed.replace(special, "")
    start = streamed.find(prompt)
    if start < 0:
        raise ValueError(f"the streamed text does not contain the prompt {prompt!r}: {streamed[:80]!r}")
    return {"text": streamed[start + len(prompt):], "new_tokens": len(chunks) - 2, "stopped_at_eos": stopped}
