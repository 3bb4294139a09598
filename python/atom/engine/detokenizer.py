"""Incremental detokenization and stop strings, one ``TextStream`` per sequence.

Decoding token by token is not decoding each token alone: byte-level BPE splits a multi-byte
UTF-8 character over several tokens, and SentencePiece drops a word's leading space at the start
of a decode. So the stream keeps a short window of tokens: ``prefix_offset .. read_offset`` is
text already emitted (context), ``read_offset ..`` tokens not yet emitted. Each new token decodes
the window twice and emits the difference, unless the decode ends in U+FFFD (an incomplete
character), in which case it waits for the next token. The window starts on the last prompt tokens
so that the first output token decodes with the spacing it has after the prompt.

Stop strings are searched in the text around each new piece (so a stop string split across tokens
is found), the text is cut where the first one starts, and the last ``max(len(stop)) - 1``
characters are held back from streaming until they cannot begin a stop string any more.
"""

from __future__ import annotations

from collections.abc import Callable

# Prompt tokens decoded as context before the first output token (vLLM uses 5 too).
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


def decoder_of(tokenizer, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """ids -> text, as ``tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=
    False)``. A transformers fast tokenizer's decode is exactly its Rust backend's decode plus
    argument conversion (which walks the id list in Python: most of the cost at two calls per
    generated token), so the backend is called directly when there is one."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode = decoder_of(tokenizer, skip_special_tokens)
        self.tokens: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Appends one token; returns the text it completes (possibly "")."""
        self.tokens.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end of the sequence: whatever is still pending, even an incomplete character."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset == len(self.tokens):
            return ""
        prefix_text = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.tokens[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) and not final:
            return ""  # e.g. a skipped special token, or bytes of a character still to come
        if full_text.endswith(_REPLACEMENT) and not final:
            return ""
        new = full_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        self.text += new
        return new


class TextStream:
    """The text of one sequence's output, with stop strings and the streaming hold-back."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop_strings: list[str]):
        self.detok = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self.stop_strings = list(stop_strings)
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self.text = ""
        self.emitted = 0  # characters of text already handed out

    def add_token(self, token_id: int, check_stop: bool = True) -> str | None:
        """Detokenizes one more token. Returns the stop string that ended the text, if any (the
        text is then cut just before it)."""
        return self._append(self.detok.add(token_id), check_stop)

    def finish(self) -> None:
        """The sequence ended for a reason other than a stop string: flush pending bytes."""
        self._append(self.detok.flush(), check_stop=False)

    def _append(self, new: str, check_stop: bool) -> str | None:
        if not new:
            return None
        start = max(0, len(self.text) - self.hold)
        self.text += new
        if not (check_stop and self.stop_strings):
            return None
        best = None
        for s in self.stop_strings:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        self.text = self.text[: best[0]]
        return best[1]

    def take_new_text(self, finished: bool) -> str:
        """Text not handed out yet; while running, keeps back what could start a stop string."""
        limit = len(self.text) if finished else max(self.emitted, len(self.text) - self.hold)
        new = self.text[self.emitted : limit]
        self.emitted = limit
        return new
