"""What the benchmark scripts (tools/bench_*.py) share: timing a kernel, the device copy bandwidth
that memory-bound kernels are judged against, the result header, and writing the JSON results.

Import it from a script in tools/ as ``from bench_common import ...`` (the scripts put their own
folder on sys.path when run from elsewhere).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def time_ms(fn: Callable[[], object], device: str, rep: int = 50) -> float:
    """Median milliseconds of fn: on a GPU triton's do_bench (L2 flushed between runs, about
    ``rep`` ms of runs); on the CPU the middle of 3 runs after one warm-up."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")
    fn()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return sorted(samples)[1]


def graph_time_ms(calls: list[Callable[[], object]], reps: int = 20, flush_bytes: int = 0) -> float:
    """Median milliseconds per call of ``calls`` captured together in one CUDA graph and
    replayed ``reps`` times: the GPU time of the calls without their launch cost. Each call runs
    once before the capture (compiles, warm-up). With ``flush_bytes``, a buffer that large is
    zeroed before each replay (outside the timing), so the calls' inputs are not L2-resident."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda") if flush_bytes else None
    samples = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / len(calls))
    return sorted(samples)[len(samples) // 2]


def copy_bandwidth_gbps(device: str, nbytes: int, rep: int = 50) -> float:
    """GB/s of a device-to-device copy of ``nbytes``, counting the bytes read and written: the
    bound a memory-bound kernel is compared with (timed with time_ms)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / (time_ms(lambda: dst.copy_(src), device, rep) * 1e-3) / 1e9


def device_name(device: str, cpu_name: str = "cpu") -> str:
    """The GPU's name (e.g. "NVIDIA H100 80GB HBM3"), or ``cpu_name`` off the GPU."""
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name


def file_slug(name: str) -> str:
    """A device name as part of a file name: lower case, every non-alphanumeric character '_'."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def kernel_result_header(benchmark: str, device: str, now: datetime.datetime) -> dict:
    """The first fields of a Triton kernel benchmark's JSON: what ran where, when, with what."""
    return {
        "benchmark": benchmark,
        "device": device,
        "date": now.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
    }


def result_paths(file_name: str, folder: str | Path | None = RESULTS_DIR) -> list[Path]:
    """Where a result goes: ``folder`` (skipped when None) and $OUT when that is set."""
    folders = [folder, os.environ.get("OUT")]
    return [Path(f) / file_name for f in folders if f]


def write_json(result: dict, paths: list[Path], indent: int = 1) -> list[Path]:
    """Writes ``result`` to every path (creating the folders); returns the paths."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=indent))
    return paths


class EngineStepTimers:
    """Where an LLMEngine's wall time goes, for a benchmark's diagnosis: wraps (on this engine
    only) the scheduler, the runner's synchronous step and its launch / collect halves, and the
    engine's token processing, and sums the seconds spent in each. With asynchronous scheduling
    ``collect_decode`` is mostly waiting for the GPU, so host-bound runs show a small wait and
    GPU-bound runs a large one.

        timers = EngineStepTimers(engine)
        engine.generate(...)
        print(timers.summary())
    """

    def __init__(self, engine) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.slowest: dict[str, list[float]] = {}  # the 3 longest calls (compiles show up here)
        for owner, name, label in (
            (engine.scheduler, "schedule", "schedule"),
            (engine.runner, "run", "sync_step"),
            (engine.runner, "launch_decode", "launch"),
            (engine.runner, "collect_decode", "collect_wait"),
            (engine, "_process", "process_tokens"),
        ):
            self._wrap(owner, name, label)

    def _wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)
        self.seconds[label], self.calls[label], self.slowest[label] = 0.0, 0, []

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                self.seconds[label] += took
                self.calls[label] += 1
                self.slowest[label] = sorted([*self.slowest[label], took])[-3:]

        setattr(owner, name, timed)

    def reset(self) -> None:
        for label in self.seconds:
            self.seconds[label], self.calls[label], self.slowest[label] = 0.0, 0, []

    def summary(self) -> dict:
        return {
            label: {
                "seconds": round(self.seconds[label], 4),
                "calls": self.calls[label],
                "slowest": [round(t, 4) for t in self.slowest[label]],
            }
            for label in self.seconds
        }
