"""The paged KV cache's bookkeeping: which blocks each sequence owns, and the prefix cache.

The cache is ``num_blocks`` blocks of ``block_size`` token slots (layout in atom.forward_context).
A sequence's ``block_table[i]`` holds its tokens ``i * block_size ... (i + 1) * block_size - 1``.

Prefix caching (when enabled): a block that is *full* and whose K/V has been *written* gets a hash
that names its whole prefix,
    hash_i = H(hash_{i-1}, token_ids of block i)      (H = 128-bit BLAKE2b, hash_{-1} = empty),
and is published in ``cached`` (hash -> block). A new sequence whose first blocks hash the same
shares those blocks by reference count instead of computing them again. Publishing happens in
``commit`` (after the step that computed the block), never at allocation, so a sequence can never
read a block whose K/V is still being written. A block whose reference count drops to zero keeps
its contents and stays findable until it is reused: free blocks that never held a published
prefix are handed out first, then published ones in least-recently-freed (LRU) order, which evicts
their hash. A sequence always computes at least its last token (its logits are needed), so a
prefix hit covers at most ``len(seq) - 1`` tokens, whole blocks only.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

from atom.engine.sequence import Sequence


def chain_hash(prev: int | None, tokens: list[int] | tuple[int, ...]) -> int:
    """The hash of a full block given the hash of the block before it (None for the first)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"" if prev is None else prev.to_bytes(16, "little"))
    h.update(array("q", tokens).tobytes())
    return int.from_bytes(h.digest(), "little")


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks  # set while published
        self.cached: dict[int, int] = {}  # published hash -> block id
        self.free_uncached: deque[int] = deque(range(num_blocks))
        self.evictable: OrderedDict[int, None] = OrderedDict()  # free published blocks, LRU first
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found

    # --- sizes -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_uncached) + len(self.evictable)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- admission of a new (or preempted) sequence ------------------------------------------
    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks of the prefix cache that hold seq's first tokens (whole blocks, fewer than
        len(seq) tokens). Pure lookup: nothing is taken until ``allocate``."""
        if not self.enable_prefix_caching or seq.wants_prompt_logprobs:
            return []
        hits: list[int] = []
        prev = None
        bs = self.block_size
        for i in range((len(seq) - 1) // bs):
            prev = chain_hash(prev, seq.token_ids[i * bs : (i + 1) * bs])
            block = self.cached.get(prev)
            if block is None:
                break
            hits.append(block)
        return hits

    def num_allocatable_tokens(self, seq: Sequence, cached_prefix: list[int] | None = None) -> int:
        """How many tokens past what seq has computed (or, for a new sequence, past its cached
        prefix) fit in its blocks plus every free block."""
        if cached_prefix is not None:  # admission: the hits that sit in the free pool are not free
            reused_free = sum(1 for b in cached_prefix if self.ref_counts[b] == 0)
            capacity = (len(cached_prefix) + self.num_free_blocks - reused_free) * self.block_size
            return capacity - len(cached_prefix) * self.block_size
        capacity = (len(seq.block_table) + self.num_free_blocks) * self.block_size
        return capacity - seq.num_computed_tokens

    def allocate(self, seq: Sequence, cached_prefix: list[int], num_tokens: int) -> None:
        """Admits seq: shares ``cached_prefix`` and allocates blocks for its next ``num_tokens``
        tokens. Caller checked ``num_allocatable_tokens``."""
        assert not seq.block_table, f"{seq} already holds blocks"
        prev = None
        for i, block in enumerate(cached_prefix):
            self._take_ref(block)
            seq.block_table.append(block)
            prev = chain_hash(prev, seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            seq.block_hashes.append(prev)
        seq.num_computed_tokens = len(cached_prefix) * self.block_size
        if self.enable_prefix_caching and not seq.wants_prompt_logprobs:
            # Counted once per admission (a preempted sequence that comes back counts again).
            self.prefix_queries += seq.num_prompt_tokens
            self.prefix_hits += min(seq.num_computed_tokens, seq.num_prompt_tokens)
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)
        self.grow(seq, num_tokens)

    # --- running sequences ----------------------------------------------------------------
    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Makes seq's block table cover its next ``num_tokens`` tokens."""
        needed = self.blocks_for(seq.num_computed_tokens + num_tokens) - len(seq.block_table)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"out of KV blocks: {seq} needs {needed}, {self.num_free_blocks} free"
            )
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())

    def commit(self, seq: Sequence) -> None:
        """After a step computed seq's tokens up to ``num_computed_tokens``: hashes its newly
        full blocks and publishes them in the prefix cache."""
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            prev = seq.block_hashes[-1] if seq.block_hashes else None
            h = chain_hash(prev, seq.token_ids[i * bs : (i + 1) * bs])
            seq.block_hashes.append(h)
            if self.enable_prefix_caching and h not in self.cached:
                block = seq.block_table[i]
                self.cached[h] = block
                self.block_hash[block] = h

    def free(self, seq: Sequence) -> None:
        """Releases every block of seq (finished, aborted or preempted)."""
        # Last blocks first, so that under LRU a prefix's tail is evicted before its head.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is not None:
                    self.evictable[block] = None
                else:
                    self.free_uncached.append(block)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    # --- helpers ---------------------------------------------------------------------------
    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + (
            position % self.block_size
        )

    def _take_ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.evictable[block]
        self.ref_counts[block] += 1

    def _take_free_block(self) -> int:
        if self.free_uncached:
            block = self.free_uncached.popleft()
        else:
            block, _ = self.evictable.popitem(last=False)  # least recently freed
            del self.cached[self.block_hash[block]]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def reset_prefix_cache(self) -> None:
        """Forgets every published prefix that no running sequence uses."""
        while self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.block_hash[block]]
            self.block_hash[block] = None
            self.free_uncached.append(block)
