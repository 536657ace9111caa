"""Tests for helpers.streaming: the wrapped printer and streamed generation."""

from __future__ import annotations

import random

import pytest

from helpers.streaming import StreamResult, WrappedPrinter, stream_generate


def render(chunks, width):
    """Feed ``chunks`` to a printer writing into a list, close it; return (printer, output, writes)."""
    writes: list[str] = []
    printer = WrappedPrinter(width=width, write=writes.append)
    for chunk in chunks:
        printer.feed(chunk)
    printer.close()
    return printer, "".join(writes), writes


def assert_well_wrapped(output: str, width: int):
    lines = output.split("\n")
    assert output == "" or output.endswith("\n"), "close() must end the last line"
    for line in lines:
        assert len(line) <= width, f"line longer than {width}: {line!r}"
        assert line == line.rstrip(" "), f"trailing space in {line!r}"
        assert not line.startswith(" "), f"leading space in {line!r}"


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [0, -1, -100])
def test_width_below_one_raises(width):
    with pytest.raises(ValueError, match="width"):
        WrappedPrinter(width=width, write=lambda s: None)


def test_width_one_is_allowed():
    _, out, _ = render(["ab c"], width=1)
    assert out == "a\nb\nc\n"


def test_default_write_goes_to_stdout(capsys):
    printer = WrappedPrinter(width=20)
    printer.feed("hello world")
    printer.close()
    assert capsys.readouterr().out == "hello world\n"


# --- wrapping ----------------------------------------------------------------------------------


def test_short_text_on_one_line():
    printer, out, _ = render(["hello world"], width=20)
    assert out == "hello world\n"
    assert printer.column == 0


def test_wraps_on_word_boundaries():
    _, out, _ = render(["the quick brown fox jumps over the lazy dog"], width=10)
    assert out == "the quick\nbrown fox\njumps over\nthe lazy\ndog\n"


def test_long_word_is_cut_into_width_pieces():
    _, out, _ = render(["abcdefghij"], width=4)
    assert out == "abcd\nefgh\nij\n"


def test_long_word_exact_multiple_of_width_has_no_empty_piece():
    _, out, _ = render(["abcdefgh"], width=4)
    assert out == "abcd\nefgh\n"


def test_long_word_after_text_starts_on_a_new_line():
    _, out, _ = render(["ab abcdefghij cd"], width=4)
    assert out == "ab\nabcd\nefgh\nij\ncd\n"


def test_long_word_remainder_is_followed_on_same_line():
    # "ij" ends at column 2, so " k" still fits in a width of 4
    _, out, _ = render(["abcdefghij k"], width=4)
    assert out == "abcd\nefgh\nij k\n"


def test_chunk_exactly_reaching_width_adds_no_blank_line_or_trailing_space():
    _, out, writes = render(["hello world", " next"], width=11)
    assert out == "hello world\nnext\n"
    assert "\n\n" not in out
    assert all(not w.endswith(" ") for w in writes)


def test_text_ending_exactly_at_width_then_close():
    _, out, _ = render(["hello world"], width=11)
    assert out == "hello world\n"


def test_exactly_full_line_followed_by_space_and_newline():
    _, out, _ = render(["hello", " ", "\n", "world"], width=5)
    assert out == "hello\nworld\n"


def test_word_fitting_exactly_with_its_separator():
    _, out, _ = render(["ab c d"], width=4)
    assert out == "ab c\nd\n"


# --- newlines and spaces -----------------------------------------------------------------------


def test_newline_inside_chunk_is_kept():
    _, out, _ = render(["hello\nworld"], width=40)
    assert out == "hello\nworld\n"


def test_blank_lines_are_kept():
    _, out, _ = render(["one\n\ntwo"], width=40)
    assert out == "one\n\ntwo\n"


def test_newline_resets_the_column():
    # without the reset, "cc" would have to wrap
    _, out, _ = render(["aaaa\ncc dd"], width=5)
    assert out == "aaaa\ncc dd\n"


def test_space_before_newline_leaves_no_trailing_space():
    _, out, _ = render(["hello \nworld"], width=40)
    assert out == "hello\nworld\n"


def test_multiple_spaces_collapse():
    _, out, _ = render(["a    b  \t c"], width=40)
    assert out == "a b c\n"


def test_leading_spaces_are_dropped():
    _, out, _ = render(["   hello", "\n  world"], width=40)
    assert out == "hello\nworld\n"


def test_spaces_across_chunks_collapse():
    _, out, _ = render(["a ", " ", " b"], width=40)
    assert out == "a b\n"


def test_text_ending_with_newline_gets_no_extra_newline_on_close():
    _, out, _ = render(["hello\n"], width=40)
    assert out == "hello\n"


# --- chunking ----------------------------------------------------------------------------------


def test_word_split_across_chunks_is_not_broken():
    _, out, _ = render(["hel", "lo world"], width=40)
    assert out == "hello world\n"


def test_word_split_across_chunks_is_not_broken_at_a_wrap():
    # "hello" arrives in two pieces just where the line is full: it must move down whole
    _, out, _ = render(["abc hel", "lo"], width=6)
    assert out == "abc\nhello\n"


def test_incomplete_word_is_held_back_until_complete():
    writes: list[str] = []
    printer = WrappedPrinter(width=40, write=writes.append)
    printer.feed("hello wor")
    assert "".join(writes) == "hello"
    printer.feed("ld")
    assert "".join(writes) == "hello"  # still unfinished
    printer.feed(" ")
    assert "".join(writes) == "hello world"


def test_close_flushes_the_last_word():
    writes: list[str] = []
    printer = WrappedPrinter(width=40, write=writes.append)
    printer.feed("the end")
    assert "".join(writes) == "the"
    printer.close()
    assert "".join(writes) == "the end\n"


def test_close_on_empty_printer_writes_nothing():
    _, out, writes = render([], width=10)
    assert out == "" and writes == []


def test_empty_chunks_are_ignored():
    printer, out, writes = render(["", "hi", "", "", " there", ""], width=40)
    assert out == "hi there\n"
    assert "" not in writes
    assert printer.received == "hi there"


def test_received_keeps_the_raw_text():
    chunks = ["Once  upon", "\n", " a time,   ", "supercalifragilistic", "\t\n"]
    printer, out, _ = render(chunks, width=8)
    assert printer.received == "".join(chunks)
    assert out != printer.received


def test_one_character_chunks_match_one_big_chunk():
    text = "The model's own newlines\nare kept, and  runs of  spaces collapse; averyveryverylongword too."
    _, whole, _ = render([text], width=12)
    _, by_char, _ = render(list(text), width=12)
    assert by_char == whole


@pytest.mark.parametrize("seed", range(20))
def test_random_chunking_never_exceeds_width_and_keeps_words(seed):
    rng = random.Random(seed)
    words = ["a", "to", "the", "story", "galaxy", "far", "extraordinarily", "x" * 30, "\n", "\n\n", "  "]
    text = " ".join(rng.choice(words) for _ in range(60))
    width = rng.randint(1, 25)
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(10, len(text))))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]

    printer, out, _ = render(chunks, width=width)

    assert printer.received == text
    assert_well_wrapped(out, width)
    # no character other than whitespace is lost, added or reordered
    assert "".join(out.split()) == "".join(text.split())
    # the model's newlines survive (wrapping may only add more)
    assert out.count("\n") >= text.count("\n")
    # words that fit on a line come out whole; longer ones as width-sized pieces (plus a remainder)
    expected_words = []
    for word in text.split():
        expected_words += [word[i : i + width] for i in range(0, len(word), width)]
    assert out.split() == expected_words


# --- streamed generation with a tiny random model ----------------------------------------------


def test_stream_result_full_text():
    result = StreamResult(prompt="Once upon", text=" a time", chunks=[" a", " time"])
    assert result.full_text == "Once upon a time"


def test_stream_result_says_where_generation_stopped():
    stopped = StreamResult(prompt="", text=" The end.", token_ids=[5, 6, 2], eos_token_ids=(2,), max_new_tokens=10)
    assert stopped.stopped_at_eos and "EOS after 3 tokens (2 words)" in stopped.stop_reason()
    cut = StreamResult(prompt="", text=" and then", token_ids=[5, 6], eos_token_ids=(2,), max_new_tokens=2)
    assert not cut.stopped_at_eos and "max_new_tokens=2" in cut.stop_reason()
    assert not StreamResult(prompt="", text="").stopped_at_eos


@pytest.fixture(scope="module", params=["smollm2-tokenizer", "word-tokenizer"])
def tiny_model_and_tokenizer(request):
    """A tiny random Llama with the local SmolLM2 tokenizer (skipped when missing), or with the
    in-memory word-level tokenizer (always available)."""
    from conftest import build_tiny_llama

    tokenizer = request.getfixturevalue(
        "tokenizer" if request.param == "smollm2-tokenizer" else "word_tokenizer"
    )
    return build_tiny_llama(len(tokenizer), seed=1234, pad_token_id=tokenizer.pad_token_id), tokenizer


def test_stream_generate_matches_plain_greedy_generate(tiny_model_and_tokenizer):
    """A few seconds: one streamed and one plain generation of 24 tokens with a tiny model."""
    import torch

    model, tokenizer = tiny_model_and_tokenizer
    prompt = "Once upon a time, in a galaxy,"
    writes: list[str] = []
    printer = WrappedPrinter(width=30, write=writes.append)

    result = stream_generate(model, tokenizer, prompt, max_new_tokens=24, printer=printer)

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    assert result.text == expected
    assert result.text  # a random model still produces some text
    assert "".join(result.chunks) == result.text
    assert result.prompt == prompt
    assert result.full_text == prompt + expected
    # the printer saw the prompt (echo_prompt) and then every chunk, and wrapped it
    assert printer.received == prompt + result.text
    assert_well_wrapped("".join(writes), 30)
    # the generated ids are kept, so where generation stopped can be reported
    assert result.token_ids == output[0, inputs["input_ids"].shape[1] :].tolist()
    assert result.stopped_at_eos == (result.token_ids[-1] in result.eos_token_ids)
    assert result.stopped_at_eos or len(result.token_ids) == 24


def test_stream_generate_without_echo_prints_only_the_continuation(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    printer = WrappedPrinter(width=50, write=lambda s: None)
    result = stream_generate(
        model, tokenizer, "Hello there", max_new_tokens=4, echo_prompt=False, printer=printer
    )
    assert printer.received == result.text


def test_stream_generate_reraises_errors_from_the_generation_thread(tokenizer):
    import torch

    class BrokenModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, **kwargs):
            raise RuntimeError("generation exploded")

    writes: list[str] = []
    with pytest.raises(RuntimeError, match="generation exploded"):
        stream_generate(
            BrokenModel(), tokenizer, "Hi", max_new_tokens=3, printer=WrappedPrinter(20, writes.append)
        )
    assert "".join(writes) == "Hi\n"  # the echoed prompt was flushed by close()


def test_story_from_stream_reads_the_walkthroughs_stream():
    """Notebook 03 streams the walkthrough's way (prompt echoed, special tokens printed); the story, the
    new tokens and whether it stopped at EOS come back from the chunks alone."""
    from conftest import build_word_tokenizer

    from helpers.streaming import story_from_stream

    tokenizer = build_word_tokenizer(specials=("<s>", "</s>", "<pad>"), bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>")
    prompt = "once upon a time"
    stopped = ["<s> once upon a ", "time ", "", "the cat ", "sat.", "</s>", ""]  # prompt, 5 tokens, end
    story = story_from_stream(tokenizer, prompt, stopped)
    assert story == {"text": " the cat sat.", "new_tokens": 5, "stopped_at_eos": True}
    cut = story_from_stream(tokenizer, prompt, ["once upon a ", "time ", "the ", "cat", ""])
    assert cut == {"text": " the cat", "new_tokens": 3, "stopped_at_eos": False}
    with pytest.raises(ValueError, match="does not contain the prompt"):
        story_from_stream(tokenizer, prompt, ["a different start ", "x", ""])
