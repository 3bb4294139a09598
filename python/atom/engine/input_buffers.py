"""Host-to-device transfer of a step's inputs through pinned staging buffers.

The runner builds every per-step input (token ids, positions, slots, lengths, block tables) as
Python lists on the host. ``torch.tensor(values, device="cuda")`` would copy each from pageable
memory, which the CUDA driver stages synchronously. Here each list is written into a preallocated
page-locked (pinned) host buffer and copied with ``non_blocking=True``: the host never waits for
the device while preparing a step, and the step's one wait is for its sampled tokens.

Reuse rule: a non-blocking copy reads its pinned source only when the GPU stream reaches it, so a
buffer may not be rewritten before then. ``begin()`` waits for the event recorded after the
previous step's copies. In steady decoding that event has long completed (the previous step
ended by reading its sampled tokens); a step that samples nothing (a non-final prefill chunk)
can leave it pending, and then the next step waits here for it, not for its whole forward.

On the CPU nothing is pinned and ``to_device`` returns a copy, so a step's tensors never alias
the buffers that the next step refills.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class HostStaging:
    """Named, growable host buffers (pinned on a GPU) and the copies out of them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._buffers: dict[str, torch.Tensor] = {}
        self._copied: torch.cuda.Event | None = None

    def begin(self) -> None:
        """Call before writing the buffers of a new step (see the reuse rule above)."""
        if self._copied is not None:
            if not self._copied.query():  # usually done: then no synchronizing call at all
                self._copied.synchronize()
            self._copied = None

    def end(self) -> None:
        """Call after the last copy of a step has been issued."""
        if self.pinned:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _buffer(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            size = max(numel, 2 * buf.numel() if buf is not None else 0, 64)
            buf = torch.zeros(size, dtype=dtype, pin_memory=self.pinned)
            self._buffers[name] = buf
        return buf

    def put(
        self,
        name: str,
        values: Sequence[int],
        dtype: torch.dtype,
        pad_to: int | None = None,
        pad_value: int = 0,
    ) -> torch.Tensor:
        """Writes ``values`` (then ``pad_value`` up to ``pad_to`` entries) into buffer ``name``;
        returns the host view [pad_to or len(values)]."""
        n = len(values)
        total = n if pad_to is None else pad_to
        if total < n:
            raise ValueError(f"pad_to={pad_to} is shorter than the {n} values of {name!r}")
        host = self._buffer(name, total, dtype)[:total]
        arr = host.numpy()
        arr[:n] = values
        arr[n:] = pad_value
        return host

    def put_rows(
        self, name: str, rows: Sequence[Sequence[int]], width: int, dtype: torch.dtype = torch.int32
    ) -> torch.Tensor:
        """Writes each row into a [len(rows), width] host view, left-aligned. Entries past a row's
        end are whatever the buffer held (valid ids from earlier steps, or 0 when new): readers
        of block tables never look past a sequence's length."""
        host = self._buffer(name, len(rows) * width, dtype)[: len(rows) * width].view(-1, width)
        arr = host.numpy()
        for i, row in enumerate(rows):
            if len(row) > width:
                raise ValueError(f"row {i} of {name!r} has {len(row)} entries, more than {width}")
            arr[i, : len(row)] = row
        return host

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A new device tensor with the host view's contents (asynchronous on a GPU)."""
        if not self.pinned:
            return host.clone()
        return host.to(self.device, non_blocking=True)

    def copy_into(self, dst: torch.Tensor, host: torch.Tensor) -> None:
        """dst (a persistent device tensor of host's shape) <- host, asynchronously on a GPU."""
        dst.copy_(host, non_blocking=self.pinned)
