"""``LLMEngine``: the programmatic API (SPEC §1) over scheduler, model runner and detokenizer.

    engine = LLMEngine()                      # the embedded SmolLM2; any EngineConfig field is a keyword
    outs = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=16))
    outs[0]["text"], outs[0]["token_ids"], outs[0]["ttft"], ...

Streaming and the contract with the server: atom/engine/outputs.py. Times are seconds on the
``time.perf_counter`` clock (only their differences mean something). All methods run on one thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC

from atom.config import EngineConfig
from atom.engine.block_manager import BlockManager
from atom.engine.detokenizer import TextStream
from atom.engine.model_runner import ModelRunner, RunnerOutput
from atom.engine.outputs import EngineStats, RequestOutput
from atom.engine.profiler import TorchProfiler
from atom.engine.scheduler import Scheduler
from atom.engine.sequence import Sequence
from atom.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

StreamCallback = Callable[[RequestOutput], None]


class _Request:
    """One prompt with its n choices (sequences) and their text streams."""

    def __init__(self, request_id, prompt, prompt_token_ids, params, tokenizer, callback):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.callback = callback
        self.seqs = [
            Sequence(request_id, i, prompt_token_ids, params, prompt) for i in range(params.n)
        ]
        self.streams = [
            TextStream(tokenizer, prompt_token_ids, params.stop_strings) for _ in range(params.n)
        ]
        self.num_sent = [0] * params.n  # output tokens already handed to the callback

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(self, model: str | None = None, **kwargs) -> None:
        self.config = config = EngineConfig.create(model, **kwargs)
        if config.kernel_backends is not None:
            from atom.kernels import registry

            registry.set_preference(config.kernel_backends)
        from transformers import AutoTokenizer

        mc = config.model_config
        self.model_config = mc
        self.tokenizer = AutoTokenizer.from_pretrained(
            mc.model_path, trust_remote_code=config.trust_remote_code
        )
        self.runner = ModelRunner(config)
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            scheduler_delay_factor=config.scheduler_delay_factor,
        )
        self.profiler = TorchProfiler(config.torch_profiler_dir, config.profiler_more)
        self.requests: dict[str, _Request] = {}
        self._ids = itertools.count()
        self._eos = frozenset(mc.eos_token_ids)
        self.num_steps = 0
        self.num_generated_tokens = 0
        self.num_finished_requests = 0
        self.error: str | None = None
        # A launched step whose tokens are not collected yet: (SchedulerOutput, LaunchedDecode).
        self._launched = None

    # --- requests --------------------------------------------------------------------------
    def add_request(
        self,
        prompt_or_tokens_list,
        sampling_params_list: SamplingParams | SequenceABC[SamplingParams] | None = None,
        stream_callback: StreamCallback | None = None,
    ) -> list[str]:
        """Queues prompts (strings or token-id lists; one prompt alone is accepted too) with one
        SamplingParams for all or one per prompt. Returns one request id per prompt. Every prompt
        is checked first: one bad prompt raises ValueError and queues nothing."""
        prompts = _as_prompt_list(prompt_or_tokens_list)
        params = _as_params_list(sampling_params_list, len(prompts))
        prepared = [(p, *self._tokenize(p)) for p in prompts]
        ids = []
        for (_, text, tokens), sp in zip(prepared, params):
            request_id = str(next(self._ids))
            req = _Request(request_id, text, tokens, sp, self.tokenizer, stream_callback)
            self.requests[request_id] = req
            for seq in req.seqs:
                self.scheduler.add(seq)
            ids.append(request_id)
        return ids

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text, tokens = prompt, self.tokenizer.encode(prompt)
        else:
            text, tokens = None, list(prompt)
            vocab = self.model_config.vocab_size
            for t in tokens:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                    raise ValueError(f"prompt token id {t!r} is not an integer in [0, {vocab})")
        if not tokens:
            raise ValueError(f"prompt {prompt!r} is empty (no tokens)")
        limit = self.config.max_model_len
        if len(tokens) >= limit:
            raise ValueError(
                f"prompt of {len(tokens)} tokens is too long: max_model_len={limit} leaves no room "
                "for an output token"
            )
        return text, tokens

    def abort_request(self, request_id: str) -> None:
        """Ends every choice of the request now (finish_reason "abort", one last callback) and
        frees its KV blocks. Unknown or already finished ids are ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        for seq in req.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
                self._emit(req, seq)

    def is_finished(self) -> bool:
        return not self.has_unfinished_requests()

    def has_unfinished_requests(self) -> bool:
        """Also true while a launched step is still to be collected (one more ``step()``)."""
        return self.scheduler.has_unfinished() or self._launched is not None

    # --- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Runs one scheduling step (see atom.engine.scheduler); calls the stream callbacks of
        the choices that advanced and returns the choices that finished in this step.

        Asynchronous scheduling (``async_scheduling``, on by default): a decode-only step whose
        sequences all sample greedily is launched on the GPU and left running; the next call
        schedules and launches the step after it before it waits for the first one's tokens,
        so the host work of a step (scheduling, input preparation, detokenization, stop checks,
        callbacks) overlaps the GPU work of the next one instead of leaving the GPU idle. That
        next step takes its input tokens on the device; on the host each sequence holds a
        placeholder until the tokens arrive (``Sequence.append_placeholder``). A sequence that
        turns out to have stopped (EOS, a stop string) has computed one token too many, which is
        dropped: its blocks are freed only after that step was launched, and GPU work that could
        reuse them is queued behind it. A step launched this way returns its outputs one call
        later (a call that only launches returns none)."""
        if self._launched is not None:
            return self._step_after_launch()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        if self.config.async_scheduling and self.runner.can_launch_decode(sched.scheduled):
            self._launched = (sched, self._run(self.runner.launch_decode, sched.scheduled))
            self.num_steps += 1
            return []
        result = self._run(self.runner.run, sched)
        self.num_steps += 1
        self._record_prompt_logprobs(result)
        return self._process(result, self.scheduler.postprocess(sched))

    def _run(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise

    def _step_after_launch(self) -> list[RequestOutput]:
        """Collects the launched step, launching the one after it first when that is safe."""
        sched, launched = self._launched
        self._launched = None
        sampled = self.scheduler.postprocess(sched)  # host bookkeeping only: no tokens needed
        self._launched = self._launch_next(sched, launched, sampled)
        result = self._run(self.runner.collect_decode, launched)
        return self._process(result, sampled)

    def _launch_next(self, sched, launched, sampled: list[Sequence]):
        """Schedules and launches the decode step that follows ``launched`` before its tokens are
        known, if every running sequence was in it and nothing else could run instead: no new
        request could be admitted, no block is short (no preemption). Sequences that stop by
        length with the token being sampled sit this step out. Returns (SchedulerOutput,
        LaunchedDecode) or None (then the next call runs a normal step)."""
        scheduler, bm = self.scheduler, self.block_manager
        running = scheduler.running
        if not running or len(running) != len(sched.scheduled) or len(sampled) != len(running):
            return None
        if scheduler.waiting and len(running) < scheduler.max_num_seqs:
            return None  # a waiting request may be admitted: let a normal step do it
        limit = self.config.max_model_len
        going_on = [
            seq
            for seq in sampled
            if seq.num_output_tokens + 1 < seq.params.max_tokens and len(seq) + 1 < limit
        ]
        if not going_on:
            return None
        needed = sum(bm.blocks_for(len(seq) + 1) - len(seq.block_table) for seq in going_on)
        if needed > bm.num_free_blocks:
            return None
        for seq in going_on:
            seq.append_placeholder()
        nxt = scheduler.schedule()
        assert not nxt.preempted and [s.seq for s in nxt.scheduled] == going_on, nxt
        step = self._run(self.runner.launch_decode, nxt.scheduled, launched)
        self.num_steps += 1
        return nxt, step

    def _process(self, result: RunnerOutput, sampled: list[Sequence]) -> list[RequestOutput]:
        """Appends the sampled tokens, applies the stop rules and emits the outputs."""
        touched: dict[str, list[Sequence]] = {}
        for seq in sampled:
            token, logprobs = result.sampled[seq.seq_id]
            self._append_token(seq, token, logprobs)
            touched.setdefault(seq.request_id, []).append(seq)
        finished_outputs = []
        for request_id, seqs in touched.items():
            req = self.requests.get(request_id)
            if req is None:
                continue
            for seq in seqs:
                if self.requests.get(request_id) is not req:  # aborted by a failing callback
                    break
                if req.callback is None and not seq.is_finished:
                    continue  # nobody to hand it to: the final output carries everything
                out = self._emit(req, seq)
                if out.finished:
                    finished_outputs.append(out)
            if req.finished and self.requests.pop(request_id, None) is not None:
                self.num_finished_requests += 1
        return finished_outputs

    def _record_prompt_logprobs(self, result: RunnerOutput) -> None:
        if not result.prompt_logprobs:
            return
        by_id = {s.seq_id: s for r in self.requests.values() for s in r.seqs}
        for seq_id, entries in result.prompt_logprobs.items():
            if seq_id in by_id:
                by_id[seq_id].prompt_logprobs.extend(entries)

    def _append_token(self, seq: Sequence, token: int, logprobs: dict[int, float] | None) -> None:
        """Appends a sampled token and applies the stop rules, in vLLM's order: EOS / stop token
        (not detokenized), then stop strings (cut from the text), then the length limits."""
        seq.append_token(token)
        self.num_generated_tokens += 1
        if seq.first_token_time is None:
            seq.first_token_time = time.perf_counter()
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        p = seq.params
        stream = self.requests[seq.request_id].streams[seq.index]
        n_out = seq.num_output_tokens
        can_stop = n_out >= p.min_tokens
        reason, stop_reason = None, None
        if can_stop and not p.ignore_eos and token in self._eos:
            reason = "stop"
        elif can_stop and token in p.stop_token_ids:
            reason, stop_reason = "stop", token
        else:
            stop_string = stream.add_token(token, check_stop=can_stop)
            if stop_string is not None:
                reason, stop_reason = "stop", stop_string
        if reason is None and (n_out >= p.max_tokens or len(seq) >= self.config.max_model_len):
            reason = "length"
        if reason is not None:
            if not isinstance(stop_reason, str):
                stream.finish()
            self.scheduler.finish(seq, reason, stop_reason)

    def _emit(self, req: _Request, seq: Sequence) -> RequestOutput:
        """Builds the choice's RequestOutput and hands it to the request's callback. A callback
        that raises aborts only its own request."""
        finished = seq.is_finished
        stream = req.streams[seq.index]
        new_ids = seq.output_token_ids[req.num_sent[seq.index] :]
        req.num_sent[seq.index] = seq.num_output_tokens
        new_text = stream.take_new_text(finished)
        out = RequestOutput(
            request_id=req.request_id,
            index=seq.index,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            token_ids=seq.output_token_ids,
            new_token_ids=new_ids,
            text=stream.text[: stream.emitted],
            new_text=new_text,
            finished=finished,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            logprobs=None if seq.logprobs is None else list(seq.logprobs),
            prompt_logprobs=None if seq.prompt_logprobs is None else list(seq.prompt_logprobs),
            num_cached_tokens=seq.num_cached_tokens,
            arrival_time=seq.arrival_time,
            first_token_time=seq.first_token_time,
            finish_time=seq.finish_time,
        )
        if req.callback is not None:
            try:
                req.callback(out)
            except Exception:
                logger.exception(
                    "stream callback of request %s failed; aborting it", req.request_id
                )
                req.callback = None
                self.abort_request(req.request_id)
        return out

    # --- convenience -------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None) -> list[dict]:
        """Runs prompts to completion; one dict per prompt, in order, with text, token_ids,
        latency, finish_reason, num_tokens_input, num_tokens_output, ttft, tpot (seconds), plus
        stop_reason, num_cached_tokens, and logprobs / prompt_logprobs when asked for. With
        n > 1 the dict describes choice 0 and ``choices`` lists all n."""
        ids = self.add_request(prompts, sampling_params)
        done: dict[str, dict[int, RequestOutput]] = {i: {} for i in ids}
        n_of = {i: self.requests[i].params.n for i in ids}
        remaining = sum(n_of.values())
        while remaining:
            for out in self.step():
                if out.request_id in done:
                    done[out.request_id][out.index] = out
                    remaining -= 1
        results = []
        for i in ids:
            choices = [_as_dict(done[i][k]) for k in range(n_of[i])]
            result = dict(choices[0])
            if n_of[i] > 1:
                result["choices"] = choices
            results.append(result)
        return results

    def get_stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=bm.num_blocks,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            healthy=self.error is None,
            error=self.error,
            extra={
                "num_preemptions": self.scheduler.num_preemptions,
                "num_steps": self.num_steps,
                "num_generated_tokens": self.num_generated_tokens,
                "num_finished_requests": self.num_finished_requests,
                "block_size": self.config.block_size,
            },
        )

    def start_profile(self) -> None:
        self.profiler.start()

    def stop_profile(self) -> str:
        """Stops the profiler and writes its trace; returns the trace directory."""
        return self.profiler.stop()

    def print_mtp_statistics(self) -> None:
        print("MTP Statistics: speculative decoding (MTP) is not enabled; no draft tokens.")


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(
            f"prompts must be a non-empty list of strings or token-id lists, got {prompts!r}"
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [list(prompts)]  # one tokenized prompt
    for p in prompts:
        if not isinstance(p, (str, list, tuple)):
            raise ValueError(f"prompt {p!r} is neither a string nor a list of token ids")
    return list(prompts)


def _as_params_list(params, num_prompts: int) -> list[SamplingParams]:
    if params is None:
        params = SamplingParams()
    if isinstance(params, SamplingParams):
        return [params] * num_prompts
    params = list(params)
    if len(params) != num_prompts:
        raise ValueError(f"{len(params)} SamplingParams for {num_prompts} prompts")
    for p in params:
        if not isinstance(p, SamplingParams):
            raise ValueError(f"sampling params {p!r} is not a SamplingParams")
    return params


def _as_dict(out: RequestOutput) -> dict:
    latency = (out.finish_time or out.arrival_time) - out.arrival_time
    first = out.first_token_time if out.first_token_time is not None else out.finish_time
    ttft = (first or out.arrival_time) - out.arrival_time
    num_out = len(out.token_ids)
    tpot = (latency - ttft) / (num_out - 1) if num_out > 1 else 0.0
    d = {
        "text": out.text,
        "token_ids": list(out.token_ids),
        "latency": latency,
        "finish_reason": out.finish_reason,
        "num_tokens_input": len(out.prompt_token_ids),
        "num_tokens_output": num_out,
        "ttft": ttft,
        "tpot": tpot,
        "stop_reason": out.stop_reason,
        "num_cached_tokens": out.num_cached_tokens,
    }
    if out.logprobs is not None:
        d["logprobs"] = out.logprobs
    if out.prompt_logprobs is not None:
        d["prompt_logprobs"] = out.prompt_logprobs
    return d
