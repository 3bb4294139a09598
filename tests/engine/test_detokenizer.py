"""Incremental detokenization and stop strings, with the embedded SmolLM2 tokenizer (byte-level
BPE: Chinese characters and emoji are split over several tokens)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atom.engine.detokenizer import IncrementalDetokenizer, TextStream, decoder_of


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def stream_pieces(tokenizer, prompt: str, text: str) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt))
    pieces = [detok.add(t) for t in tokenizer.encode(text)]
    pieces.append(detok.flush())
    return pieces, detok.text


MIXED = st.lists(
    st.sampled_from(list("ab cé,.\n") + ["你", "好", "世界", "😀", "🇫🇷", "ß", "  "]), max_size=20
).map("".join)


@pytest.mark.parametrize(
    "text",
    ["Hello world!", " 你好，世界 😀 ok", "naïve café — 日本語のテキスト", "  leading spaces"],
)
def test_incremental_text_equals_full_decode_and_streams_no_replacement_char(tokenizer, text):
    pieces, full = stream_pieces(tokenizer, "Say:", text)
    ids = tokenizer.encode(text)
    assert full == tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == full
    assert not any("\ufffd" in p for p in pieces)


@settings(max_examples=40, deadline=None)
@given(prompt=MIXED, text=MIXED)
def test_incremental_detokenization_property(tokenizer, prompt, text):
    pieces, full = stream_pieces(tokenizer, prompt, text)
    assert full == tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_skipped(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [])
    ids = tokenizer.encode("Hi") + [tokenizer.eos_token_id] + tokenizer.encode(" there")
    text = "".join(detok.add(t) for t in ids)
    assert text == "Hi there"


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 49151), max_size=12), skip=st.booleans())
def test_backend_decoder_equals_tokenizer_decode(tokenizer, ids, skip):
    """The direct backend call (the hot path) is the tokenizer's own decode, special tokens
    included; a tokenizer without a Rust backend goes through decode()."""
    expected = tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    assert decoder_of(tokenizer, skip)(ids) == expected

    class Slow:  # only the public decode
        def decode(self, ids, **kw):
            return tokenizer.decode(ids, **kw)

    assert decoder_of(Slow(), skip)(ids) == expected


def run_stream(tokenizer, text: str, stops: list[str]) -> tuple[TextStream, str | None, list[str]]:
    stream = TextStream(tokenizer, tokenizer.encode("Q:"), stops)
    streamed, hit = [], None
    for t in tokenizer.encode(text):
        hit = stream.add_token(t)
        streamed.append(stream.take_new_text(finished=hit is not None))
        if hit is not None:
            break
    if hit is None:
        stream.finish()
        streamed.append(stream.take_new_text(finished=True))
    return stream, hit, streamed


def test_stop_string_across_tokens_is_cut_and_never_streamed(tokenizer):
    text = "The answer is 42. Then more text follows."
    stops = ["2. Th", "never"]
    ids = tokenizer.encode(text)
    assert all("2. Th" not in tokenizer.decode([t]) for t in ids)  # spans several tokens
    stream, hit, streamed = run_stream(tokenizer, text, stops)
    assert hit == "2. Th"
    assert stream.text == "The answer is 4"
    assert "".join(streamed) == "The answer is 4"
    assert all("2" not in piece for piece in streamed)


def test_earliest_stop_string_wins_and_no_stop_streams_everything(tokenizer):
    stream, hit, _ = run_stream(tokenizer, "alpha beta gamma delta", ["delta", "beta"])
    assert hit == "beta" and stream.text == "alpha "
    stream, hit, streamed = run_stream(tokenizer, "alpha beta 你好", ["zzz"])
    assert hit is None and "".join(streamed) == stream.text == "alpha beta 你好"


def test_stop_check_can_be_deferred(tokenizer):
    stream = TextStream(tokenizer, [], ["a"])
    assert stream.add_token(tokenizer.encode("a")[0], check_stop=False) is None
    assert stream.text == "a"
