"""Which implementation of an op runs where.

Every op has a torch reference; faster backends register themselves when they are usable:
``aiter`` (ROCm, when installed), ``native`` (the compiled ``atom._C`` ops: CPU twins always, CUDA/HIP
kernels when the build had a GPU toolchain), ``triton``, ``batched`` (torch code faster than the
reference's per-sequence loops: decode attention on the CPU). ``pick(op, device_type)`` returns the first
registered implementation in ``preference`` order for that device type and logs the choice once.
The order can be changed through ``set_preference`` (EngineConfig does, from its ``kernel_backends``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

DEFAULT_PREFERENCE = ("aiter", "native", "triton", "batched", "torch")

# op name -> backend name -> (implementation, device types it runs on)
_IMPLS: dict[str, dict[str, tuple[Callable, frozenset[str]]]] = {}
_preference: tuple[str, ...] = DEFAULT_PREFERENCE


def register(op: str, backend: str, devices: tuple[str, ...] = ("cpu", "cuda")):
    """Decorator: ``fn`` implements ``op`` for ``backend`` on the given torch device types."""

    def wrap(fn: Callable) -> Callable:
        backends = _IMPLS.setdefault(op, {})
        if backend in backends:
            raise ValueError(f"op {op!r} already has a {backend!r} implementation")
        backends[backend] = (fn, frozenset(devices))
        _pick_cached.cache_clear()
        return fn

    return wrap


def set_preference(order: tuple[str, ...] | list[str]) -> None:
    global _preference
    unknown = set(order) - set(DEFAULT_PREFERENCE)
    if unknown:
        raise ValueError(f"unknown kernel backends {sorted(unknown)}; known: {DEFAULT_PREFERENCE}")
    _preference = tuple(order) if "torch" in order else (*order, "torch")
    _pick_cached.cache_clear()


def available(op: str) -> dict[str, frozenset[str]]:
    """Backend name -> device types, for ``op`` (used by tests and benchmarks)."""
    return {name: devices for name, (_, devices) in _IMPLS.get(op, {}).items()}


def get(op: str, backend: str) -> Callable:
    try:
        return _IMPLS[op][backend][0]
    except KeyError:
        raise ValueError(
            f"op {op!r} has no {backend!r} implementation; it has {sorted(_IMPLS.get(op, {}))}"
        ) from None


def pick(op: str, device_type: str) -> Callable:
    return _pick_cached(op, device_type, _preference)


@functools.cache
def _pick_cached(op: str, device_type: str, preference: tuple[str, ...]) -> Callable:
    backends = _IMPLS.get(op)
    if not backends:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(_IMPLS)}")
    for name in preference:
        if name in backends and device_type in backends[name][1]:
            if not torch.compiler.is_compiling():  # a log call would break a dynamo trace
                logger.info("kernel %s on %s: %s", op, device_type, name)
            return backends[name][0]
    raise ValueError(f"no implementation of {op!r} runs on {device_type!r}: {sorted(backends)}")
