"""The KV block manager: reference counts, no leaks, prefix-cache reuse and LRU eviction.

The state machine keeps a shadow of what the KV cache holds: writing token p of a sequence stores
the whole prefix token_ids[:p + 1] in its slot (K/V depend on the prefix, not just the token).
After every rule, every computed token of every live sequence must find its own prefix in its
slot: a shared block that someone overwrote, or a prefix hit on the wrong block, shows up there.
"""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from atom.engine.block_manager import BlockManager, chain_hash
from atom.engine.sequence import Sequence
from atom.sampling_params import SamplingParams

BASES = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 9, 9, 9, 9], [7, 7, 7, 7, 7, 7]]


def make_seq(tokens: list[int], **params) -> Sequence:
    return Sequence("r", 0, tokens, SamplingParams(**params))


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.bm = BlockManager(num_blocks=12, block_size=4, enable_prefix_caching=True)
        self.waiting: list[Sequence] = []
        self.live: list[Sequence] = []
        self.kv: dict[int, tuple[int, ...]] = {}  # slot -> the prefix whose K/V it holds

    @rule(
        base=st.sampled_from(BASES),
        cut=st.integers(1, 11),
        extra=st.lists(st.integers(0, 9), max_size=6),
    )
    def add(self, base, cut, extra):
        tokens = base[:cut] + extra
        self.waiting.append(make_seq(tokens))

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def admit(self, data):
        seq = self.waiting[data.draw(st.integers(0, len(self.waiting) - 1))]
        prefix = self.bm.find_cached_prefix(seq)
        assert len(prefix) * self.bm.block_size < len(seq)  # the last token is always computed
        for i, block in enumerate(prefix):  # a hit really holds this sequence's prefix
            for j in range(self.bm.block_size):
                p = i * self.bm.block_size + j
                assert self.kv[block * self.bm.block_size + j] == tuple(seq.token_ids[: p + 1])
        room = self.bm.num_allocatable_tokens(seq, prefix)
        want = len(seq) - len(prefix) * self.bm.block_size
        n = min(room, data.draw(st.integers(1, want)))
        if n <= 0:
            return
        free_before = self.bm.num_free_blocks
        self.bm.allocate(seq, prefix, n)
        assert self.bm.num_free_blocks >= free_before - self.bm.blocks_for(len(prefix) * 4 + n)
        self.waiting.remove(seq)
        self.live.append(seq)
        self._compute(seq, n)

    def _compute(self, seq: Sequence, n: int) -> None:
        start = seq.num_computed_tokens
        for p in range(start, start + n):
            self.kv[self.bm.slot(seq, p)] = tuple(seq.token_ids[: p + 1])
        seq.num_computed_tokens = start + n
        self.bm.commit(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), new_token=st.integers(0, 9))
    def step(self, data, new_token):
        seq = self.live[data.draw(st.integers(0, len(self.live) - 1))]
        if seq.num_uncomputed_tokens == 0:
            seq.append_token(new_token)  # the previous step sampled it
        n = min(data.draw(st.integers(1, 5)), seq.num_uncomputed_tokens)
        n = min(n, self.bm.num_allocatable_tokens(seq))
        if n <= 0:
            return
        self.bm.grow(seq, n)
        self._compute(seq, n)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), preempt=st.booleans())
    def release(self, data, preempt):
        seq = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
        self.bm.free(seq)
        assert seq.block_table == [] and seq.num_computed_tokens == 0
        if preempt:
            self.waiting.append(seq)

    @invariant()
    def reference_counts_match_block_tables(self):
        held = Counter(b for s in self.live for b in s.block_table)
        for block in range(self.bm.num_blocks):
            assert self.bm.ref_counts[block] == held[block], block

    @invariant()
    def free_lists_hold_exactly_the_unreferenced_blocks(self):
        free = list(self.bm.free_uncached) + list(self.bm.evictable)
        assert len(free) == len(set(free))
        assert set(free) == {b for b in range(self.bm.num_blocks) if self.bm.ref_counts[b] == 0}
        for b in self.bm.evictable:
            assert self.bm.block_hash[b] is not None
        for b in self.bm.free_uncached:
            assert self.bm.block_hash[b] is None

    @invariant()
    def published_hashes_are_consistent(self):
        for h, block in self.bm.cached.items():
            assert self.bm.block_hash[block] == h
        assert sum(h is not None for h in self.bm.block_hash) == len(self.bm.cached)

    @invariant()
    def every_computed_token_finds_its_prefix_in_the_cache(self):
        for seq in self.live:
            assert len(seq.block_table) * self.bm.block_size >= seq.num_computed_tokens
            for p in range(seq.num_computed_tokens):
                assert self.kv[self.bm.slot(seq, p)] == tuple(seq.token_ids[: p + 1])

    def teardown(self):
        for seq in self.live:
            self.bm.free(seq)
        assert self.bm.num_free_blocks == self.bm.num_blocks  # nothing leaked
        assert all(r == 0 for r in self.bm.ref_counts)


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_cached_prefix_is_reused_and_counted():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = make_seq(list(range(10)))
    bm.allocate(a, bm.find_cached_prefix(a), 10)
    assert bm.find_cached_prefix(make_seq(list(range(10)))) == []  # not published before commit
    a.num_computed_tokens = 10
    bm.commit(a)
    b = make_seq(list(range(9)) + [99])
    prefix = bm.find_cached_prefix(b)
    assert prefix == a.block_table[:2]
    bm.allocate(b, prefix, 2)
    assert b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 1]
    assert bm.prefix_hits == 8 and bm.prefix_queries == 20
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 8
    # The freed prefix is still findable until its blocks are reused.
    assert bm.find_cached_prefix(make_seq(list(range(9)))) == prefix


def test_full_prompt_hit_still_computes_the_last_token():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = make_seq(list(range(8)))
    bm.allocate(a, [], 8)
    a.num_computed_tokens = 8
    bm.commit(a)
    b = make_seq(list(range(8)))
    assert (
        bm.find_cached_prefix(b) == a.block_table[:1]
    )  # 4 of 8 tokens: the second block holds the last token


def test_lru_evicts_least_recently_freed_and_prefers_never_published_blocks():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    seqs = []
    for base in (10, 20):
        s = make_seq([base, base + 1, base + 2])
        bm.allocate(s, [], 3)
        s.num_computed_tokens = 3
        bm.commit(s)  # publishes the first block only
        seqs.append(s)
    first_blocks = [s.block_table[0] for s in seqs]
    for s in seqs:
        bm.free(s)
    # Two never-published blocks are handed out before any published one.
    c = make_seq([1, 2, 3, 4])
    bm.allocate(c, [], 4)
    assert not set(c.block_table) & set(first_blocks)
    d = make_seq([5, 6])
    bm.allocate(d, [], 2)
    assert d.block_table == [first_blocks[0]]  # freed first, so evicted first
    assert bm.find_cached_prefix(make_seq([10, 11, 12])) == []
    assert bm.find_cached_prefix(make_seq([20, 21, 22])) == [first_blocks[1]]


def test_prompt_logprobs_skip_the_prefix_cache():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = make_seq(list(range(9)))
    bm.allocate(a, [], 9)
    a.num_computed_tokens = 9
    bm.commit(a)
    assert bm.find_cached_prefix(make_seq(list(range(9)))) != []
    assert bm.find_cached_prefix(make_seq(list(range(9)), prompt_logprobs=1)) == []


def test_without_prefix_caching_nothing_is_published():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5])
    bm.allocate(a, bm.find_cached_prefix(a), 5)
    a.num_computed_tokens = 5
    bm.commit(a)
    assert bm.cached == {} and len(a.block_hashes) == 2
    bm.free(a)
    assert bm.num_free_blocks == 4 and not bm.evictable


def test_chain_hash_depends_on_the_whole_prefix():
    assert chain_hash(None, [1, 2]) == chain_hash(None, (1, 2))
    assert chain_hash(None, [1, 2]) != chain_hash(chain_hash(None, [0, 0]), [1, 2])


def test_grow_beyond_free_blocks_raises():
    bm = BlockManager(num_blocks=2, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5])
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(a, [], 5)
