"""Request and response bodies of the OpenAI-compatible API (pydantic models).

Requests are validated strictly: a string where a number belongs is a 400, never silently coerced
(OpenAI's own server behaves the same). Unknown fields are ignored, as OpenAI clients send fields
that do not concern us (``user``, ``logit_bias`` of 0, ...). Ranges follow OpenAI's documentation;
the engine's ``SamplingParams`` checks them once more.

Response bodies are built as plain dicts by the serving modules (``serving_chat``,
``serving_completion``); ``Usage`` and ``ErrorBody`` are the shared pieces with a fixed shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

# Strict scalars: JSON `"5"` for an int, or `1` for a bool, is a type error (400).
Float = Annotated[float, Field(strict=True)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
# Number of alternatives per token that we return, as OpenAI allows (0..20).
TopLogprobs = Annotated[int, Field(strict=True, ge=0, le=20)]

DEFAULT_MAX_TOKENS = 256  # seeds/003 §1.2


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    # Also put `usage` (so far) into every chunk, as vLLM's `continuous_usage_stats` does.
    continuous_usage_stats: StrictBool = False


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # A string, a list of text parts (OpenAI's content-part form) or None (assistant tool calls).
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SamplingFields(_Strict):
    """Fields shared by both endpoints. Ranges as OpenAI documents them (penalties in [-2, 2],
    temperature in [0, 2], top_p in (0, 1]); top_k/min_p/repetition_penalty as vLLM accepts."""

    model: str | None = None
    temperature: Float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=-1)
    min_p: Float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: Float | None = Field(default=None, gt=0.0, le=10.0)
    max_tokens: NonNegInt | None = None
    min_tokens: NonNegInt = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[NonNegInt] | None = None
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    n: StrictInt = Field(default=1, ge=1, le=128)
    user: str | None = None

    @model_validator(mode="after")
    def _check_stop(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 16:
            raise ValueError(f"stop: at most 16 stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop: stop strings must not be empty")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] | None = None
    # seeds/003 §1.2: `prompt` is an alias of `messages` on the chat endpoint.
    prompt: list[ChatMessage] | None = None
    max_completion_tokens: NonNegInt | None = None
    logprobs: StrictBool = False
    top_logprobs: TopLogprobs | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: StrictBool = True
    # Continue the last (assistant) message instead of opening a new turn.
    continue_final_message: StrictBool = False

    @model_validator(mode="after")
    def _check_chat(self):
        if self.messages is None:
            self.messages = self.prompt
        if not self.messages:
            raise ValueError("messages: at least one message is required")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            # As in vLLM: both at once would open a new turn after the message to continue.
            self.add_generation_prompt = False
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message: the last message must be the assistant's")
        return self

    def requested_max_tokens(self) -> int | None:
        # `max_completion_tokens` is OpenAI's newer name; it wins when both are set.
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


# A completion prompt: text, a batch of texts, token ids, or a batch of token-id lists.
CompletionPrompt = str | list[str] | list[NonNegInt] | list[list[NonNegInt]]


class CompletionRequest(SamplingFields):
    prompt: CompletionPrompt
    echo: StrictBool = False
    logprobs: TopLogprobs | None = None
    best_of: StrictInt | None = Field(default=None, ge=1)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt: must not be empty")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError(f"best_of: only best_of == n is supported, got {self.best_of}")
        if self.suffix:
            raise ValueError("suffix: not supported")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts, each a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        if all(isinstance(x, str) for x in p) or all(isinstance(x, list) for x in p):
            return list(p)
        raise ValueError("prompt: a batch must be all strings or all token-id lists")


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's shape; lm-eval's remote tokenizer uses it)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Strict):
    tokens: list[NonNegInt]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Timing fields of seeds/003 §1.3, in seconds (None when not measurable, e.g. no output).
    ttft_s: float | None = None
    tpot_s: float | None = None
    latency_s: float | None = None
    prompt_tokens_details: dict[str, int] | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None
