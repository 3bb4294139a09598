"""How one request wants its tokens chosen and when it wants generation to stop.

Field meanings follow the OpenAI / vLLM conventions:
- ``temperature == 0`` is greedy (argmax; ties go to the lowest token id, as ``torch.argmax`` does).
- ``top_k`` (0 or -1 = off), ``top_p`` (1.0 = off) and ``min_p`` (0.0 = off) filter the distribution
  after temperature; they only matter when sampling.
- ``seed`` makes a request's sampling reproducible whatever else shares the batch.
- ``presence_penalty`` / ``frequency_penalty`` (OpenAI, over the output tokens so far) and
  ``repetition_penalty`` (Hugging Face, over prompt and output tokens) change the logits first.
- ``min_tokens`` blocks EOS and ``stop_token_ids`` until that many tokens were generated.
- ``stop_strings`` end generation when they appear in the text (also across token boundaries); the
  matched stop string and everything after it is cut from the output.
- ``logprobs = k`` returns, per output token, the log-probability of the sampled token and of the
  k most likely tokens; ``prompt_logprobs = k`` does the same for every prompt token after the first.
  Log-probabilities are those of the model's raw distribution (log_softmax of the logits, before
  penalties, temperature and filtering), as vLLM returns by default.
- ``n`` independent choices of one prompt; with a seed, choice i samples with a seed derived from
  (seed, i) (choice 0 uses the seed itself).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 64
    ignore_eos: bool = False
    stop_strings: list[str] | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        self.stop_strings = list(self.stop_strings or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"SamplingParams.{name}={value!r} must be a number")
        _check(self.temperature >= 0.0, "temperature", self.temperature, "must be >= 0")
        _check_int(self.max_tokens, "max_tokens", minimum=1)
        _check(0.0 < self.top_p <= 1.0, "top_p", self.top_p, "must be in (0, 1]")
        _check_int(self.top_k, "top_k", minimum=-1)
        _check(0.0 <= self.min_p <= 1.0, "min_p", self.min_p, "must be in [0, 1]")
        if self.seed is not None:
            _check_int(self.seed, "seed", minimum=0)
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", self.presence_penalty,
               "must be in [-2, 2]")  # fmt: skip
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", self.frequency_penalty,
               "must be in [-2, 2]")  # fmt: skip
        _check(self.repetition_penalty > 0.0, "repetition_penalty", self.repetition_penalty,
               "must be > 0")  # fmt: skip
        _check_int(self.min_tokens, "min_tokens", minimum=0)
        _check(self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
               f"must be <= max_tokens ({self.max_tokens})")  # fmt: skip
        for s in self.stop_strings:
            _check(isinstance(s, str) and s != "", "stop_strings", s, "must be non-empty strings")
        for t in self.stop_token_ids:
            _check_int(t, "stop_token_ids", minimum=0)
        if self.logprobs is not None:
            _check_int(self.logprobs, "logprobs", minimum=0)
        if self.prompt_logprobs is not None:
            _check_int(self.prompt_logprobs, "prompt_logprobs", minimum=0)
        _check_int(self.n, "n", minimum=1)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def choice_seed(self, index: int) -> int | None:
        """The seed of choice ``index`` of an n > 1 request: derived from (seed, index), so that the
        choices differ from each other yet each is reproducible; choice 0 keeps the seed itself."""
        if self.seed is None:
            return None
        if index == 0:
            return self.seed
        return (self.seed * 1_000_003 + index * 7_919) % (2**63 - 1)


def _check(ok: bool, name: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name}={value!r} {why}")


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SamplingParams.{name}={value!r} must be an integer")
    if value < minimum:
        raise ValueError(f"SamplingParams.{name}={value!r} must be >= {minimum}")
