"""Continuous batching with chunked prefill, mixed prefill/decode batches and preemption.

A *scheduling step* picks, for one model forward, a set of sequences and how many of their
uncomputed tokens each one computes (``ScheduledSeq.num_tokens``), within two budgets:
``max_num_batched_tokens`` tokens in the flat batch and ``max_num_seqs`` running sequences.
It fills the batch in this order:
  1. decodes: every running sequence with exactly one uncomputed token gets it (oldest first).
     When a decode needs a new KV block and none is free, the newest running sequence not yet
     scheduled in this step is preempted (possibly the one asking): its blocks are freed and it
     goes back to the front of the waiting queue, to be recomputed from its prompt and the
     tokens it already generated (so its output does not change).
  2. prefill chunks of running sequences (a prompt longer than the token budget is computed over
     several steps), oldest first, each as large as the remaining budget and free blocks allow.
  3. waiting sequences, first come first served, while the budgets, ``max_num_seqs`` and the free
     blocks allow (after sharing what the prefix cache already holds); the first one that does not
     fit stops admission, so no request is overtaken; a step that preempted admits nothing. With ``scheduler_delay_factor > 0``
     admission waits until the oldest waiting request has waited that many times the previous
     step's duration (or nothing is running), to batch prompts together.
A long prompt therefore never stalls running streams: decodes are scheduled first and prompts
take only what is left of the budget.

After the forward, ``postprocess`` advances each scheduled sequence by its tokens and publishes the
blocks it completed in the prefix cache; a sequence whose computed tokens reached the end of its
token list is *sampled* (its last logits give its next token). Finishing and aborting free blocks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from atom.engine.block_manager import BlockManager
from atom.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step: token_ids[start : start + num_tokens]
    start: int  # == seq.num_computed_tokens when scheduled

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence, so its next token is sampled."""
        return self.start + self.num_tokens == len(self.seq)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        scheduler_delay_factor: float = 0.0,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.scheduler_delay_factor = scheduler_delay_factor
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest (smallest seq_id) first
        self.num_preemptions = 0
        self._last_step_time: float | None = None
        self._last_step_duration = 0.0

    # --- queue -------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        """Ends seq (stop, length or abort) and frees its blocks; safe to call in any state."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        seq.finish_time = time.perf_counter()

    # --- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        now = time.perf_counter()
        if self._last_step_time is not None:
            self._last_step_duration = now - self._last_step_time
        self._last_step_time = now

        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_ids: set[int] = set()
        bm = self.block_manager

        def preempt_newest_unscheduled() -> Sequence | None:
            for victim in reversed(self.running):
                if victim.seq_id not in scheduled_ids:
                    self._preempt(victim)
                    out.preempted.append(victim)
                    return victim
            return None

        # 1. Decodes, oldest first.
        for seq in [s for s in self.running if s.num_uncomputed_tokens == 1]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted by an older decode
                continue
            while bm.num_allocatable_tokens(seq) < 1:
                if preempt_newest_unscheduled() is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self._schedule(out, seq, 1, scheduled_ids)
            budget -= 1

        # 2. Prefill chunks of running sequences, oldest first, with what is left.
        for seq in [s for s in self.running if s.num_uncomputed_tokens > 1]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            want = min(seq.num_uncomputed_tokens, budget)
            # Make room by preempting newer unscheduled sequences; never preempt ourselves for a
            # prefill chunk unless nothing at all fits (then the tokens are recomputed later).
            while bm.num_allocatable_tokens(seq) < want:
                newest = next(
                    (s for s in reversed(self.running) if s.seq_id not in scheduled_ids), None
                )
                if newest is None or newest is seq:
                    break
                preempt_newest_unscheduled()
            n = min(want, bm.num_allocatable_tokens(seq))
            if n > 0:
                self._schedule(out, seq, n, scheduled_ids)
                budget -= n

        # 3. Admit waiting sequences, first come first served; not in a step that had to preempt
        #    (the freed blocks went to the decodes; re-admitting the victim would only thrash).
        if self.waiting and not out.preempted and not self._admission_delayed(now):
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.waiting[0]
                prefix = bm.find_cached_prefix(seq)
                uncomputed = len(seq) - len(prefix) * bm.block_size
                n = min(uncomputed, budget, bm.num_allocatable_tokens(seq, prefix))
                if n <= 0:
                    break
                self.waiting.popleft()
                bm.allocate(seq, prefix, n)
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                self.running.sort(key=lambda s: s.seq_id)  # a preempted seq is older than others
                self._schedule(out, seq, n, scheduled_ids, allocated=True)
                budget -= n
        # Keep the batch in age order (the runner and tests rely on a stable order).
        out.scheduled.sort(key=lambda s: s.seq.seq_id)
        return out

    def _admission_delayed(self, now: float) -> bool:
        if self.scheduler_delay_factor <= 0 or not self.running:
            return False
        oldest_wait = now - min(s.arrival_time for s in self.waiting)
        return oldest_wait < self.scheduler_delay_factor * self._last_step_duration

    def _schedule(
        self,
        out: SchedulerOutput,
        seq: Sequence,
        num_tokens: int,
        scheduled_ids: set[int],
        allocated: bool = False,
    ) -> None:
        if not allocated:
            self.block_manager.grow(seq, num_tokens)
        out.scheduled.append(ScheduledSeq(seq, num_tokens, seq.num_computed_tokens))
        scheduled_ids.add(seq.seq_id)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop seq's KV and put it at the front of the waiting queue."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # --- after the forward ---------------------------------------------------------------------
    def postprocess(self, out: SchedulerOutput) -> list[Sequence]:
        """Advances every scheduled sequence by its tokens; returns those that must append a
        sampled token now (the caller appends it, then checks stop conditions)."""
        sampled = []
        for s in out.scheduled:
            if s.seq.status is not SequenceStatus.RUNNING:  # aborted while the step ran
                continue
            s.seq.num_computed_tokens = s.start + s.num_tokens
            self.block_manager.commit(s.seq)
            if s.samples:
                sampled.append(s.seq)
        return sampled
