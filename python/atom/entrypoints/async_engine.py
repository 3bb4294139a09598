"""The engine behind an asyncio server: one background thread owns the engine and steps it.

Threading contract (python/atom/engine/outputs.py): every engine method runs on the engine thread.
The event loop never calls the engine directly; it queues *commands* (add, abort, profile, stats)
that the engine thread runs between two steps, and gets their results through futures. Outputs
travel back the other way: the stream callbacks that ``step()`` calls collect outputs in a list,
and after the step one ``call_soon_threadsafe`` hands the whole batch to the event loop, which
routes each output to the asyncio queue of its request.

    event loop                         engine thread
    generate() --add command-->        drain commands -> engine.add_request(..., callback)
               <--ids (future)--       step() -> callbacks collect outputs
    queue.get() <--batch of outputs--  call_soon_threadsafe(dispatch, batch)

When there is no work the thread blocks on the command queue, so an idle server uses no CPU.
If ``step()`` raises, the engine is dead: every open request gets ``EngineDeadError``, /health
turns 503, and new requests are refused.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from atom.engine.outputs import EngineStats, RequestOutput

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop stopped after an error; no request can be served any more."""


class _Submission:
    """One ``add_request`` call as the engine thread sees it (touched only on that thread)."""

    def __init__(self, num_choices: int):
        self.request_ids: list[str] | None = None
        self.prompt_index: dict[str, int] = {}
        self.cancelled = False
        self.finished: set[tuple[str, int]] = set()
        self.num_choices = num_choices  # per request id (the n of its SamplingParams)


class AsyncEngine:
    def __init__(self, engine: Any, idle_wait_s: float = 1.0):
        self.engine = engine
        self._idle_wait_s = idle_wait_s
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="atom-engine-loop", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._pending: list[
            tuple[asyncio.Queue, tuple[int, RequestOutput]]
        ] = []  # engine thread only
        self._live_queues: set[asyncio.Queue] = set()  # event loop only
        self._last_stats = EngineStats()
        self.num_steps = 0

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._commands.put(lambda: None)  # wake the thread if it waits for work
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    @property
    def last_stats(self) -> EngineStats:
        """The statistics read after the latest step (no waiting on the engine thread)."""
        return self._last_stats

    @property
    def error(self) -> str | None:
        if self._error is not None:
            return f"{type(self._error).__name__}: {self._error}"
        if self._loop is not None and not self._thread.is_alive() and not self._stopping:
            return "the engine loop thread is not running"
        return None

    # ---- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                if self.engine.is_finished():
                    # Idle: block until a command arrives (bounded so shutdown is noticed).
                    try:
                        command = self._commands.get(timeout=self._idle_wait_s)
                    except queue.Empty:
                        command = None
                    if command is not None:
                        command()
                self._run_commands()
                if not self.engine.is_finished():
                    self.engine.step()
                    self.num_steps += 1
                self._flush_outputs()
                self._last_stats = self.engine.get_stats()
        except BaseException as exc:  # noqa: BLE001 - any failure ends the engine
            logger.exception("the engine loop died")
            self._error = exc
            self._flush_outputs()
            self._last_stats.healthy = False
            self._last_stats.error = f"{type(exc).__name__}: {exc}"
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._fail_all_live)
            self._run_commands()  # let waiting commands see the dead engine

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _flush_outputs(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_dispatch, batch)

    # ---- commands ----------------------------------------------------------------------------
    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread between two steps; return its result."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def command() -> None:
            if self._error is not None or threading.current_thread() is not self._thread:
                result, error = None, EngineDeadError(self.error or "the engine loop stopped")
            else:
                try:
                    result, error = fn(self.engine), None
                except Exception as exc:  # handed to the caller, the engine lives on
                    result, error = None, exc
            loop.call_soon_threadsafe(_resolve, future, result, error)

        self._commands.put(command)
        if self._error is not None or not self._thread.is_alive():
            # The engine thread sets _error before its last drain of the queue, so a command
            # queued after that drain is seen here; run on this thread, each answers dead.
            self._run_commands()
        return await future

    async def get_stats(self) -> EngineStats:
        """Current engine statistics; after the engine died, the last ones with healthy=False."""
        if not self.is_alive:
            stats = self._last_stats
            stats.healthy, stats.error = False, self.error
            return stats
        return await self.call(lambda engine: engine.get_stats())

    async def generate(
        self, prompts: list[list[int]], params: Any, num_choices: int
    ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Submit prompts (token ids) with one SamplingParams (or one per prompt) and yield
        ``(prompt_index, output)`` for every RequestOutput as it arrives, until each of the
        len(prompts) * num_choices choices finished. Leaving the iterator early (client gone,
        cancellation) aborts what is still running and frees its KV blocks."""
        self._check_alive()
        outputs: asyncio.Queue = asyncio.Queue()
        submission = _Submission(num_choices)
        self._live_queues.add(outputs)

        def collect(output: RequestOutput) -> None:  # engine thread, inside step()
            if output.finished:
                submission.finished.add((output.request_id, output.index))
            self._pending.append((outputs, (submission.prompt_index[output.request_id], output)))

        def add(engine) -> None:
            if submission.cancelled:
                return
            ids = list(engine.add_request(prompts, params, stream_callback=collect))
            if len(ids) != len(prompts):
                raise RuntimeError(f"add_request returned {len(ids)} ids for {len(prompts)}")
            submission.request_ids = ids
            submission.prompt_index = {rid: i for i, rid in enumerate(ids)}

        expected = len(prompts) * num_choices
        done: set[tuple[str, int]] = set()
        try:
            await self.call(add)
            while len(done) < expected:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                _, output = item
                if output.finished:
                    done.add((output.request_id, output.index))
                yield item
        finally:
            self._live_queues.discard(outputs)
            if len(done) < expected and self.is_alive:
                self._commands.put(lambda: self._abort(submission))

    def _abort(self, submission: _Submission) -> None:  # engine thread
        submission.cancelled = True
        for request_id in submission.request_ids or []:
            if all((request_id, i) in submission.finished for i in range(submission.num_choices)):
                continue
            try:
                self.engine.abort_request(request_id)
            except Exception:  # an abort must never take the loop down
                logger.exception("abort_request(%s) failed", request_id)
        self._last_stats = self.engine.get_stats()

    def _check_alive(self) -> None:
        if not self.is_alive:
            raise EngineDeadError(self.error or "the engine loop is not running")

    def _fail_all_live(self) -> None:  # event loop
        error = EngineDeadError(self.error or "the engine loop died")
        for q in list(self._live_queues):
            q.put_nowait(error)


def _dispatch(batch: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, output in batch:
        q.put_nowait(output)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
