"""POST /v1/chat/completions: the model's chat template, then generation, streaming or not.

Streaming follows OpenAI's chunk sequence per choice: a first delta ``{"role": "assistant",
"content": ""}``, content deltas, and a last chunk carrying ``finish_reason``; with
``stream_options.include_usage`` every chunk has ``"usage": null`` and one extra chunk with no
choices carries the usage; ``data: [DONE]`` ends the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jinja2
from fastapi.responses import JSONResponse
from starlette.requests import Request

from atom.engine.outputs import RequestOutput
from atom.entrypoints.async_engine import EngineDeadError
from atom.entrypoints.errors import APIError, sse_error
from atom.entrypoints.logprobs import chat_logprobs
from atom.entrypoints.protocol import ChatCompletionRequest, ChatMessage
from atom.entrypoints.serving_common import (
    SSE_DONE,
    ChoiceState,
    ServingContext,
    SSEResponse,
    check_prompt_ids,
    collect_until_done,
    finish_reason,
    new_id,
    now,
    resolve_max_tokens,
    sampling_params,
    sse,
    usage,
)

# Arguments of apply_chat_template that chat_template_kwargs must not override.
_RESERVED_TEMPLATE_ARGS = {"conversation", "messages", "tokenize", "add_generation_prompt",
                           "continue_final_message", "return_dict", "return_tensors", "tools"}  # fmt: skip


def render_chat(
    ctx: ServingContext,
    messages: list[ChatMessage],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Token ids of a conversation rendered with the model's chat template. The template writes
    any BOS itself, so the text is tokenized without adding special tokens."""
    if not getattr(ctx.tokenizer, "chat_template", None):
        raise APIError("this model has no chat template; use /v1/completions", param="messages")
    kwargs = dict(template_kwargs or {})
    reserved = sorted(_RESERVED_TEMPLATE_ARGS & kwargs.keys())
    if reserved:
        raise APIError(
            f"chat_template_kwargs: {reserved} cannot be set", param="chat_template_kwargs"
        )
    conversation = []
    for m in messages:
        entry = {"role": m.role, "content": m.text()}
        if m.name is not None:
            entry["name"] = m.name
        conversation.append(entry)
    try:
        text = ctx.tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **kwargs,
        )
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise APIError(
            f"messages: the chat template rejected them: {exc}", param="messages"
        ) from exc
    return ctx.tokenizer.encode(text, add_special_tokens=False)


class _ChatJob:
    def __init__(self, ctx: ServingContext, req: ChatCompletionRequest):
        ctx.check_model(req.model)
        self.ctx, self.req = ctx, req
        self.prompt_ids = render_chat(ctx, req.messages, req.add_generation_prompt,
                                      req.continue_final_message, req.chat_template_kwargs)  # fmt: skip
        check_prompt_ids(self.ctx, self.prompt_ids, "messages")
        max_tokens = resolve_max_tokens(ctx, req.requested_max_tokens(), len(self.prompt_ids))
        if max_tokens == 0:
            raise APIError(
                "max_tokens: must be at least 1 for chat completions", param="max_tokens"
            )
        self.top_k = (req.top_logprobs or 0) if req.logprobs else None
        self.params = sampling_params(req, max_tokens, logprobs=self.top_k)
        self.id = new_id("chatcmpl")
        self.created = now()
        self.choices = [ChoiceState(index=i) for i in range(req.n)]

    def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        return self.ctx.engine.generate([self.prompt_ids], self.params, self.req.n)

    def _logprobs(self, out: RequestOutput, start: int, end: int):
        if self.top_k is None:
            return None
        entries = (out.logprobs or [])[start:end]
        return chat_logprobs(self.ctx, out.token_ids[start:end], entries, self.top_k)

    def usage(self) -> dict[str, Any]:
        return usage([len(self.prompt_ids)], self.choices)

    def response(self, items: list[tuple[int, RequestOutput]]) -> dict[str, Any]:
        for _, output in items:
            self.choices[output.index].update(output)
        choices = []
        for state in self.choices:
            out = state.last
            self.ctx.metrics.observe_request(out)
            choices.append(
                {
                    "index": state.index,
                    "message": {"role": "assistant", "content": out.text},
                    "logprobs": self._logprobs(out, 0, len(out.token_ids)),
                    "finish_reason": finish_reason(out),
                    "stop_reason": out.stop_reason,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.ctx.model_name,
            "choices": choices,
            "usage": self.usage(),
        }

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.ctx.model_name,
            "choices": choices,
        }

    async def sse_events(self, stream: AsyncIterator[tuple[int, RequestOutput]]):
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)

        def event(choices: list[dict[str, Any]]) -> str:
            chunk = self._chunk(choices)
            if include_usage:
                chunk["usage"] = self.usage() if continuous else None
            return sse(chunk)

        try:
            # The role comes first, before any token, for every choice (OpenAI does the same).
            for state in self.choices:
                state.sent_role = True
                role = {"role": "assistant", "content": ""}
                yield event([{"index": state.index, "delta": role, "logprobs": None,
                              "finish_reason": None}])  # fmt: skip
            async for _, output in stream:
                state = self.choices[output.index]
                state.update(output)
                start, end = state.num_tokens_sent, len(output.token_ids)
                state.num_tokens_sent = end
                reason = finish_reason(output)
                if output.finished:
                    self.ctx.metrics.observe_request(output)
                if not output.new_text and reason is None and (self.top_k is None or end == start):
                    continue
                delta = {"content": output.new_text} if output.new_text else {}
                choice = {
                    "index": state.index,
                    "delta": delta,
                    "logprobs": self._logprobs(output, start, end),
                    "finish_reason": reason,
                }
                if reason is not None:
                    choice["stop_reason"] = output.stop_reason
                yield event([choice])
            if include_usage:
                yield sse({**self._chunk([]), "usage": self.usage()})
        except EngineDeadError as exc:
            yield sse_error(f"the engine stopped: {exc}", 503)
        except (APIError, ValueError, RuntimeError) as exc:
            yield sse_error(str(exc), 500)
        yield SSE_DONE


async def create_chat_completion(
    ctx: ServingContext, req: ChatCompletionRequest, raw_request: Request
):
    job = _ChatJob(ctx, req)
    stream = job.stream()
    if req.stream:
        return SSEResponse(job.sse_events(stream))
    items = await collect_until_done(stream, raw_request)
    return JSONResponse(job.response(items))
