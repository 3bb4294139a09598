"""One sequence: a prompt plus the tokens generated for it, and where its KV cache lives.

A request with ``n`` choices owns n sequences (``index`` 0..n-1) that share the prompt.

Progress is counted in tokens: ``token_ids`` holds the prompt followed by the output, and the first
``num_computed_tokens`` of them have their K/V in the paged cache. A scheduling step gives a
sequence ``k`` more tokens to compute (a prefill chunk, a single decode token, or the recomputation
of prompt + output after a preemption); when that reaches the end of ``token_ids`` the last token's
logits are sampled and the new token is appended.
"""

from __future__ import annotations

import enum
import itertools
import time

from atom.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not started, or preempted (all its blocks freed)
    RUNNING = "running"  # holds KV blocks and is scheduled every step
    FINISHED = "finished"


_seq_counter = itertools.count()
PLACEHOLDER_TOKEN = -1  # see Sequence.append_placeholder


class Sequence:
    def __init__(
        self,
        request_id: str,
        index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        arrival_time: float | None = None,
    ) -> None:
        self.seq_id = next(_seq_counter)  # unique, increasing: the age order of sequences
        self.request_id = request_id
        self.index = index
        self.prompt = prompt
        self.params = params
        self.seed = params.choice_seed(index)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.has_placeholder = False  # the last entry of token_ids is PLACEHOLDER_TOKEN
        # KV-cache bookkeeping, owned by the BlockManager.
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # hash chain of this sequence's computed full blocks
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache (first admission)
        self.num_preemptions = 0
        # Outputs.
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[dict[int, float] | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        self.arrival_time = time.perf_counter() if arrival_time is None else arrival_time
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    # --- token views -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs still to compute: then every prompt position must really be computed,
        so this sequence skips the prefix cache."""
        return (
            self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens
        )

    def append_token(self, token_id: int) -> None:
        """The next sampled token: fills the placeholder if there is one, else appends."""
        if self.has_placeholder:
            self.token_ids[-1] = token_id
            self.has_placeholder = False
        else:
            self.token_ids.append(token_id)

    def append_placeholder(self) -> None:
        """Stands in for the next token while the step that samples it is still running, so that
        the step after it can be scheduled already (asynchronous scheduling, see LLMEngine); that
        step reads the real token on the device. ``append_token`` replaces it."""
        assert not self.has_placeholder, f"{self} already has a placeholder"
        self.token_ids.append(PLACEHOLDER_TOKEN)
        self.has_placeholder = True

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}#{self.index}, "
            f"{self.status.value}, tokens={len(self)}, computed={self.num_computed_tokens})"
        )
