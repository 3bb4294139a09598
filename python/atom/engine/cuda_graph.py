"""CUDA/HIP graphs of decode-only steps: capture once per batch size, replay every step.

A decode-only step (every scheduled sequence computes exactly one new token) of ``n`` sequences
runs as the graph captured for the smallest capture size ``B >= n``. Its inputs live in
persistent device buffers (same storage at capture and at every replay, new contents each step):

    input_ids      [R] int64     token of sequence b; padding 0
    positions      [R] int64     its position (seq_len - 1); padding 0
    slot_mapping   [R] int64     its KV-cache slot; padding -1 (the cache write skips it)
    seq_lens       [R] int32     context length after this token; padding 0 (reads nothing)
    cu_seqlens_q   [R + 1] int32 arange: one query token per row, padding rows included
    block_tables   [R, max_blocks_per_seq] int32, max_blocks_per_seq = ceil(max_model_len /
                   block_size); a row's entries past its sequence's blocks are never read
(R = the largest capture size + 1; a batch of size B uses the first B rows.)

A padding row is a sequence of length 0 whose token writes nothing to the cache; the split-K
decode kernels (attention and MLA) write zeros for it (see atom.kernels.triton.attention_decode).
Rows are independent in every layer, so padding changes no real row's result.

The captured function returns (logits [B, vocab] fp32, greedy token ids [B] int64); both are
graph outputs kept alive here and overwritten by the next replay. The attention kernels size
their grids from host values only: the metadata of a captured batch says ``max_seqlen_q = 1``
and ``max_seqlen_k = max_model_len``, which fixes the number of context splits of the decode
kernels at capture for the longest possible context (short contexts leave splits empty, which
cost one early-exiting program each). The KV caches bound to the layers at capture must stay
bound (same tensors) for as long as the graphs are used.

All graphs share one memory pool; they are captured largest first so that the smaller ones
reuse the largest one's intermediate memory. With ``capture=False`` (the CPU, or debugging) the
same padded persistent-buffer path runs eagerly: the inputs and results are those a graph
would see, without the graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from atom.engine.input_buffers import HostStaging
from atom.forward_context import AttentionMetadata

logger = logging.getLogger(__name__)

# forward(input_ids [B], positions [B], meta) -> (logits [B, V] fp32, greedy ids [B] int64)
DecodeForward = Callable[
    [torch.Tensor, torch.Tensor, AttentionMetadata], tuple[torch.Tensor, torch.Tensor]
]


@dataclass
class DecodeBatch:
    """The host side of a decode-only step of n sequences (one new token each)."""

    input_ids: list[int]  # [n]
    positions: list[int]  # [n]
    slots: list[int]  # [n]
    seq_lens: list[int]  # [n]
    block_tables: list[list[int]]  # n rows, each at most max_blocks_per_seq long

    @property
    def num_seqs(self) -> int:
        return len(self.input_ids)


def capture_sizes_for(sizes: Sequence[int], largest_batch: int) -> tuple[int, ...]:
    """The configured sizes that can occur (<= the largest decode batch); if none is that small,
    the largest batch itself, so that small batches still get a graph."""
    usable = sorted({s for s in sizes if s <= largest_batch})
    return tuple(usable) if usable else (largest_batch,)


class DecodeGraphs:
    def __init__(
        self,
        forward: DecodeForward,
        sizes: Sequence[int],
        max_blocks_per_seq: int,
        max_seqlen_k: int,
        device: torch.device,
        staging: HostStaging,
        capture: bool = True,
    ) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError(f"capture sizes {tuple(sizes)} must be positive integers")
        self.forward = forward
        self.sizes = tuple(sorted(set(sizes)))
        self.max_blocks_per_seq = max_blocks_per_seq
        self.max_seqlen_k = max_seqlen_k
        self.device = device
        self.staging = staging
        self.use_graphs = capture
        # One spare row, never part of a batch: every batch is then a strict slice of its
        # buffer (torch.compile guards on whether a view covers its whole base, and would
        # compile the largest size separately).
        rows = self.sizes[-1] + 1
        kw = {"device": device}
        self.input_ids = torch.zeros(rows, dtype=torch.int64, **kw)
        self.positions = torch.zeros(rows, dtype=torch.int64, **kw)
        self.slot_mapping = torch.full((rows,), -1, dtype=torch.int64, **kw)
        self.seq_lens = torch.zeros(rows, dtype=torch.int32, **kw)
        self.cu_seqlens_q = torch.arange(rows + 1, dtype=torch.int32, **kw)
        self.block_tables = torch.zeros(rows, max_blocks_per_seq, dtype=torch.int32, **kw)
        # The host mirror of block_tables and the rows it holds: a step rewrites (and copies)
        # only the rows that changed since (a decode step changes few: a sequence gets a new
        # block every block_size tokens), instead of n rows of Python ints every step.
        self._host_tables = torch.zeros(
            rows, max_blocks_per_seq, dtype=torch.int32, pin_memory=staging.pinned
        )
        self._host_rows: list[list[int] | None] = [None] * rows
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.capture_seconds = 0.0

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def size_for(self, num_seqs: int) -> int | None:
        """The padded batch size of a decode step of num_seqs sequences, None if too large."""
        for size in self.sizes:
            if size >= num_seqs:
                return size
        return None

    def metadata(self, size: int) -> AttentionMetadata:
        """Views of the persistent buffers for a batch of ``size`` rows."""
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            max_seqlen_q=1,
            max_seqlen_k=self.max_seqlen_k,
        )

    def _run_forward(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.input_ids[:size], self.positions[:size], self.metadata(size))

    @torch.inference_mode()
    def capture(self) -> None:
        """Runs the step once per size, largest first (this compiles what torch.compile and
        Triton compile, outside any capture), then captures one graph per size into one shared
        pool. The buffers hold padding (slot -1, length 0) meanwhile, so the KV cache is never
        written. Without graphs only the warm-up runs."""
        start = time.perf_counter()
        if not self.use_graphs:
            for size in reversed(self.sizes):
                self._run_forward(size)
            self.capture_seconds = time.perf_counter() - start
            return
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            self._run_forward(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = self._run_forward(size)
            self._graphs[size] = graph
            self._outputs[size] = outputs
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        logger.info(
            "captured decode graphs for batch sizes %s in %.1f s", self.sizes, self.capture_seconds
        )

    def _update_host_tables(self, tables: list[list[int]]) -> tuple[int, int] | None:
        """Writes the rows that differ from what the mirror holds; returns the range of rows
        [lo, hi) to copy to the device, None if nothing changed."""
        arr = self._host_tables.numpy()
        lo = hi = None
        for i, table in enumerate(tables):
            if self._host_rows[i] == table:
                continue
            if len(table) > self.max_blocks_per_seq:
                raise ValueError(
                    f"a block table of {len(table)} blocks exceeds max_blocks_per_seq="
                    f"{self.max_blocks_per_seq}"
                )
            arr[i, : len(table)] = table
            self._host_rows[i] = list(table)
            lo = i if lo is None else lo
            hi = i + 1
        return None if lo is None else (lo, hi)

    @torch.inference_mode()
    def run(
        self,
        batch: DecodeBatch,
        prev_tokens: torch.Tensor | None = None,
        prev_rows: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies the step's inputs into the persistent buffers (padding the batch) and replays
        the graph of its size. Returns (logits [n, V] fp32, greedy ids [n] int64), views of the
        graph's outputs: valid until the next run.

        With ``prev_tokens`` (a device tensor: the tokens an earlier step sampled, still unknown
        to the host), row b's input token is ``prev_tokens[prev_rows[b]]`` (``prev_tokens[b]``
        without rows) instead of ``batch.input_ids[b]``, gathered on the device."""
        n = batch.num_seqs
        size = self.size_for(n)
        if size is None or n == 0:
            raise ValueError(f"no decode graph for {n} sequences (sizes {self.sizes})")
        st = self.staging
        st.begin()
        st.copy_into(self.input_ids[:size], st.put("g_ids", batch.input_ids, torch.int64, size))
        st.copy_into(self.positions[:size], st.put("g_pos", batch.positions, torch.int64, size))
        slots = st.put("g_slots", batch.slots, torch.int64, size, pad_value=-1)
        st.copy_into(self.slot_mapping[:size], slots)
        lens = st.put("g_lens", batch.seq_lens, torch.int32, size, pad_value=0)
        st.copy_into(self.seq_lens[:size], lens)
        changed = self._update_host_tables(batch.block_tables)
        if changed:
            lo, hi = changed
            st.copy_into(self.block_tables[lo:hi], self._host_tables[lo:hi])
        if prev_tokens is not None:
            if prev_rows is None:
                self.input_ids[:n].copy_(prev_tokens[:n])
            else:
                rows = st.to_device(st.put("g_prev_rows", prev_rows, torch.int64))
                torch.index_select(prev_tokens, 0, rows, out=self.input_ids[:n])
        st.end()
        if self.use_graphs:
            self._graphs[size].replay()
            logits, greedy = self._outputs[size]
        else:
            logits, greedy = self._run_forward(size)
        return logits[:n], greedy[:n]
