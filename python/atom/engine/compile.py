"""Compilation levels (``--level``) and the torch.compile of the decode step.

    level  torch.compile of the decode step   CUDA/HIP graphs of decode steps
    0      no                                  no            (plain eager: the reference)
    1      no                                  yes
    2      yes (inductor)                      no
    3      yes (inductor)                      yes           (the default)

``--enforce-eager`` turns the graphs off at every level. On the CPU both are off: the engine
runs eagerly whatever the level.

What is compiled: the decode step ``(input_ids [B], positions [B], metadata) -> (logits [B, V]
fp32, greedy ids [B])``, the function the graphs capture, with a dynamic batch dimension (one
compiled graph serves every capture size; dynamo specializes B = 1 separately, so two
compiles). The native ops (atom._C) are single graph nodes through their fake impls; the
Python-launched kernels (Triton attention, MLA, MoE) become opaque custom ops
(atom/kernels/opaque.py). Inductor writes the KV cache and the fused norms' outputs in place
(checked on the generated code: no copies of the cache), and fuses what is left around them:
the logits' fp32 cast with the argmax, the embedding gather.
Prefill and mixed steps always run eagerly: their cost is GEMMs and attention over thousands of
tokens, and their metadata carries host lists (per-sequence lengths that the attention dispatch
reads) that would make dynamo recompile at every step.

If compiling fails (an op dynamo cannot trace, a backend error), the engine logs why and runs
the decode step eagerly; ``ModelRunner.fast_path`` says what actually runs.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

LEVELS = {
    0: "eager (no torch.compile, no graphs)",
    1: "CUDA graphs of the eager decode step",
    2: "torch.compile (inductor) of the decode step, no graphs",
    3: "torch.compile (inductor) of the decode step in CUDA graphs",
}


@dataclass(frozen=True)
class FastPathPlan:
    """What a level asks for on this device (before anything is tried)."""

    compile: bool
    graphs: bool

    @classmethod
    def for_config(cls, level: int, enforce_eager: bool, on_gpu: bool) -> FastPathPlan:
        if level not in LEVELS:
            raise ValueError(f"level={level!r} must be one of {sorted(LEVELS)}")
        if not on_gpu:
            return cls(compile=False, graphs=False)
        return cls(compile=level >= 2, graphs=level in (1, 3) and not enforce_eager)


def compile_decode_step(fn: Callable, backend: str = "inductor") -> Callable:
    """torch.compile of the decode step: one full graph (an unexpected graph break is an error,
    not a silent slowdown), dynamic batch dimension. Compilation itself happens at the first
    call (the runner warms up every batch size before capturing graphs).

    ``fn`` (a function or bound method) is compiled through a copy with its own code object:
    dynamo keeps compiled code per code object, up to a limit of entries, so engines sharing
    one (several engines or models in one process) would crowd each other out; this way an
    engine's compiled code is its own and goes away with it."""
    return torch.compile(_with_own_code(fn), backend=backend, fullgraph=True, dynamic=True)


def _with_own_code(fn: Callable) -> Callable:
    func = getattr(fn, "__func__", fn)
    copy = types.FunctionType(
        func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
        func.__closure__,
    )  # fmt: skip
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    owner = getattr(fn, "__self__", None)
    return copy if owner is None else types.MethodType(copy, owner)


@contextlib.contextmanager
def warm_up_settings(compiled: bool) -> Iterator[None]:
    """Settings for the warm-up run that compiles the decode step. No duck sizing: a batch size
    that happens to equal another dimension during the first trace (256 rows, 256 blocks per
    sequence) would otherwise be tied to it and force a recompile for every other size. And a
    hit of dynamo's recompile limit is an error there (then the runner falls back and says so),
    not a silent switch to uncompiled code."""
    if not compiled:
        yield
        return
    from torch.fx.experimental import _config as fx_config

    with contextlib.ExitStack() as stack:
        if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
            stack.enter_context(torch._dynamo.config.patch(fail_on_recompile_limit_hit=True))
        if hasattr(fx_config, "use_duck_shape"):
            stack.enter_context(fx_config.patch(use_duck_shape=False))
        yield
