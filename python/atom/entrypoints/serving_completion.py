"""POST /v1/completions: text completion, streaming or not, with echo and prompt logprobs.

A request may carry a batch of prompts; with ``n`` choices each, choice ``i`` of prompt ``p`` is
``choices[p * n + i]`` (vLLM's order). ``echo`` puts the prompt in front of each choice's text and,
with ``logprobs``, the prompt tokens' logprobs in front of the output's (the first prompt token has
none: ``null``). ``max_tokens: 0`` with ``echo`` scores a prompt without generating, which is how
lm-eval computes log-likelihoods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request

from atom.engine.outputs import RequestOutput
from atom.entrypoints.async_engine import EngineDeadError
from atom.entrypoints.errors import APIError, sse_error
from atom.entrypoints.logprobs import completion_logprobs, merge_completion_logprobs
from atom.entrypoints.protocol import CompletionRequest
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


class _CompletionJob:
    """One /v1/completions request after validation."""

    def __init__(self, ctx: ServingContext, req: CompletionRequest):
        ctx.check_model(req.model)
        self.ctx, self.req = ctx, req
        self.prompt_ids: list[list[int]] = []
        self.prompt_texts: list[str] = []
        prompts = req.prompts()
        for i, prompt in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            # Text is tokenized as LLMEngine does (special tokens added); ids are taken as given.
            ids = ctx.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            check_prompt_ids(ctx, ids, where)
            text = prompt if isinstance(prompt, str) else ctx.tokenizer.decode(ids)
            self.prompt_ids.append(ids)
            self.prompt_texts.append(text)
        # Scoring only: generate nothing visible (the engine makes one hidden token).
        self.hide_output = req.max_tokens == 0
        k = req.logprobs
        self.params = [
            sampling_params(
                req,
                resolve_max_tokens(ctx, req.requested_max_tokens(), len(ids)),
                logprobs=k,
                prompt_logprobs=k if req.echo and k is not None else None,
            )
            for ids in self.prompt_ids
        ]
        self.id = new_id("cmpl")
        self.created = now()
        n = req.n
        self.choices = [ChoiceState(index=i) for i in range(len(self.prompt_ids) * n)]

    def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        params = self.params[0] if len(self.params) == 1 else self.params
        return self.ctx.engine.generate(self.prompt_ids, params, self.req.n)

    def state_of(self, prompt_index: int, output: RequestOutput) -> ChoiceState:
        return self.choices[prompt_index * self.req.n + output.index]

    def _logprobs(self, p: int, state: ChoiceState, start: int, end: int, echo: bool, offset: int):
        """Legacy logprobs for output tokens [start, end) of a choice, preceded by the prompt's
        when ``echo``; ``offset`` is the text offset of the first token included."""
        k = self.req.logprobs
        if k is None:
            return None
        out = state.last
        parts = []
        if echo:
            if state.prompt_logprobs is None:
                raise RuntimeError("the engine returned no prompt logprobs for an echo request")
            part = completion_logprobs(
                self.ctx, self.prompt_ids[p], state.prompt_logprobs, k, offset
            )
            parts.append(part)
            offset += sum(len(t) for t in part["tokens"])
        if not self.hide_output and end > start:
            entries = (out.logprobs or [])[start:end]
            parts.append(
                completion_logprobs(self.ctx, out.token_ids[start:end], entries, k, offset)
            )
        return merge_completion_logprobs(parts)

    def response(self, items: list[tuple[int, RequestOutput]]) -> dict[str, Any]:
        for p, output in items:
            self.state_of(p, output).update(output)
        choices = []
        for state in self.choices:
            p = state.index // self.req.n
            out = state.last
            text = "" if self.hide_output else out.text
            echo_text = self.prompt_texts[p] if self.req.echo else ""
            offset = 0 if self.req.echo else len(self.prompt_texts[p])
            logprobs = self._logprobs(p, state, 0, len(out.token_ids), self.req.echo, offset)
            self.ctx.metrics.observe_request(out)
            choices.append(
                {
                    "index": state.index,
                    "text": echo_text + text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(out, self.hide_output),
                    "stop_reason": None if self.hide_output else out.stop_reason,
                }
            )
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
            "choices": choices,
            "usage": self.usage(),
        }

    def usage(self) -> dict[str, Any]:
        prompt_lens = [len(ids) for ids in self.prompt_ids]
        return usage(prompt_lens, self.choices, self.hide_output)

    async def sse_events(self, stream: AsyncIterator[tuple[int, RequestOutput]]):
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        text_offsets = [0] * len(self.choices)
        try:
            async for p, output in stream:
                state = self.state_of(p, output)
                first = state.last is None
                state.update(output)
                echo = first and self.req.echo
                text = self.prompt_texts[p] if echo else ""
                if not self.hide_output:
                    text += output.new_text
                start, end = state.num_tokens_sent, len(output.token_ids)
                if first and not self.req.echo:
                    text_offsets[state.index] = len(self.prompt_texts[p])
                logprobs = self._logprobs(p, state, start, end, echo, text_offsets[state.index])
                state.num_tokens_sent = end
                text_offsets[state.index] += len(text)
                reason = finish_reason(output, self.hide_output)
                if output.finished:
                    self.ctx.metrics.observe_request(output)
                if not text and reason is None and not (logprobs and logprobs["tokens"]):
                    continue
                chunk = self._chunk(state.index, text, logprobs, reason, output)
                if include_usage:
                    chunk["usage"] = self.usage() if continuous else None
                yield sse(chunk)
            if include_usage:
                yield sse({**self._chunk_head(), "choices": [], "usage": self.usage()})
        except EngineDeadError as exc:
            yield sse_error(f"the engine stopped: {exc}", 503)
        except (APIError, ValueError, RuntimeError) as exc:
            yield sse_error(str(exc), 500)
        yield SSE_DONE

    def _chunk_head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
        }

    def _chunk(self, index, text, logprobs, reason, output) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = None if self.hide_output else output.stop_reason
        return {**self._chunk_head(), "choices": [choice]}


async def create_completion(ctx: ServingContext, req: CompletionRequest, raw_request: Request):
    job = _CompletionJob(ctx, req)
    stream = job.stream()
    if req.stream:
        return SSEResponse(job.sse_events(stream))
    items = await collect_until_done(stream, raw_request)
    return JSONResponse(job.response(items))
