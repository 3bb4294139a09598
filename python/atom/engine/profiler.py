"""The torch profiler behind ``start_profile`` / ``stop_profile``.

Traces go to ``{torch_profiler_dir}/rank_0/`` (one process, one rank; multi-rank engines will use
``rank_{r}/`` or ``dp{d}_tp{r}/``) as gzip-compressed TensorBoard traces, readable with
``tensorboard --logdir`` or chrome://tracing. ``profiler_more`` (ATOM_PROFILER_MORE=1) also records
tensor shapes, Python stacks and memory.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


class TorchProfiler:
    def __init__(self, trace_dir: str | None, more: bool, rank_name: str = "rank_0") -> None:
        self.trace_dir = None if trace_dir is None else os.path.join(trace_dir, rank_name)
        self.more = more
        self._profiler: torch.profiler.profile | None = None

    @property
    def active(self) -> bool:
        return self._profiler is not None

    def start(self) -> None:
        if self.trace_dir is None:
            raise RuntimeError(
                "profiling needs a trace directory: pass --torch-profiler-dir "
                "(torch_profiler_dir=...) or set ATOM_TORCH_PROFILER_DIR"
            )
        if self._profiler is not None:
            raise RuntimeError("the profiler is already running; call stop_profile() first")
        os.makedirs(self.trace_dir, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(
            activities=activities,
            record_shapes=self.more,
            with_stack=self.more,
            profile_memory=self.more,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir, use_gzip=True),
        )
        self._profiler.start()
        logger.info("torch profiler started; traces go to %s", self.trace_dir)

    def stop(self) -> str:
        """Stops and writes the trace; returns the trace directory."""
        if self._profiler is None:
            raise RuntimeError("the profiler is not running; call start_profile() first")
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        logger.info("torch profiler stopped; traces written to %s", self.trace_dir)
        return self.trace_dir
