"""Log-probabilities in the two OpenAI formats.

The engine gives, per token, a dict ``{token_id: logprob}`` holding the chosen token and the k most
likely ones (k + 1 entries when the chosen token is not among the top k), or None for the first
prompt token, which has no context to be predicted from.

Chat (``logprobs: true, top_logprobs: k``)::

    {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}

with exactly the k most likely alternatives. Completions (``logprobs: k``, the legacy format that
lm-eval reads)::

    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}], "text_offset"}

where, as vLLM does, each top_logprobs dict holds the chosen token as well as the top k.
"""

from __future__ import annotations

import math
from typing import Any

from atom.entrypoints.serving_common import ServingContext

LogprobDict = dict[int, float]


def _finite(x: float) -> float:
    # JSON has no -inf; OpenAI clients expect a number. -9999 is what OpenAI uses for "never".
    return x if math.isfinite(x) else -9999.0


def _top(entry: LogprobDict, k: int) -> list[tuple[int, float]]:
    # Sort by logprob, ties by token id (deterministic output).
    return sorted(entry.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def chat_logprobs(
    ctx: ServingContext, token_ids: list[int], entries: list[LogprobDict], k: int
) -> dict[str, Any]:
    texts = ctx.token_texts(token_ids)
    content = []
    for token_id, text, entry in zip(token_ids, texts, entries):
        top = _top(entry, k)
        top_texts = ctx.token_texts([t for t, _ in top])
        content.append(
            {
                "token": text,
                "logprob": _finite(entry.get(token_id, -math.inf)),
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {"token": tt, "logprob": _finite(lp), "bytes": list(tt.encode())}
                    for (_, lp), tt in zip(top, top_texts)
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    ctx: ServingContext,
    token_ids: list[int],
    entries: list[LogprobDict | None],
    k: int,
    text_offset: int,
) -> dict[str, Any]:
    """The legacy logprobs object for ``token_ids``; ``text_offset`` is where the first token's
    text starts in the choice's text (after the prompt unless echoed)."""
    texts = ctx.token_texts(token_ids)
    out: dict[str, Any] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for token_id, text, entry in zip(token_ids, texts, entries):
        out["tokens"].append(text)
        out["text_offset"].append(text_offset)
        text_offset += len(text)
        if entry is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(_finite(entry.get(token_id, -math.inf)))
        chosen = {token_id: entry[token_id]} if token_id in entry else {}
        top = dict(_top(entry, k))
        merged = {**top, **chosen}
        names = ctx.token_texts(list(merged))
        # Tokens whose texts collide (e.g. two byte-fallback pieces) keep the higher logprob.
        top_by_text: dict[str, float] = {}
        for name, lp in zip(names, merged.values()):
            top_by_text[name] = max(_finite(lp), top_by_text.get(name, -math.inf))
        out["top_logprobs"].append(top_by_text)
    return out


def merge_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for part in parts:
        for key in merged:
            merged[key].extend(part[key])
    return merged
