"""The sampler against plain torch math and Hugging Face's logits processors."""

from __future__ import annotations

import pytest
import torch

from atom.engine.sampler import Sampler
from atom.engine.sequence import Sequence
from atom.sampling_params import SamplingParams

V = 37
EOS = 5


def seq(prompt=(1, 2, 3), output=(), **params) -> Sequence:
    s = Sequence("r", 0, list(prompt), SamplingParams(**params))
    for t in output:
        s.append_token(t)
    return s


def sampler(seed: int = 0) -> Sampler:
    return Sampler([EOS], torch.device("cpu"), seed=seed)


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    logits = torch.randn(4, V)
    logits[2, 7] = logits[2, 30] = 100.0
    out = sampler()(logits, [seq(temperature=0.0) for _ in range(4)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.token_ids[2] == 7


def test_seeded_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    row = torch.randn(1, V)
    alone = [sampler(seed=1)(row, [seq(seed=42, temperature=1.0)]).token_ids[0] for _ in range(3)]
    assert len(set(alone)) == 1  # reproducible
    others = torch.randn(4, V)
    batch = torch.cat([others[:2], row, others[2:]])
    seqs = [seq(temperature=0.8), seq(temperature=0.0), seq(seed=42, temperature=1.0)]
    seqs += [seq(temperature=1.3, top_k=3), seq(seed=7)]
    assert sampler(seed=9)(batch, seqs).token_ids[2] == alone[0]


def test_seeded_draws_change_with_the_position():
    row = torch.zeros(1, V)  # uniform: any fixed token would be a bug
    drawn = set()
    for n in range(12):
        drawn.add(sampler()(row, [seq(output=[0] * n, seed=3)]).token_ids[0])
    assert len(drawn) > 3


def empirical(logits_row: torch.Tensor, params: dict, n: int = 4000) -> torch.Tensor:
    s = sampler(seed=123)
    rows = logits_row.expand(n, -1).clone()
    out = s(rows, [seq(**params) for _ in range(n)]).token_ids
    return torch.bincount(torch.tensor(out), minlength=V).float() / n


def test_samples_follow_softmax_of_logits_over_temperature():
    logits = torch.linspace(-2, 2, V)
    freq = empirical(logits, {"temperature": 0.7})
    expected = torch.softmax(logits / 0.7, dim=-1)
    assert (freq - expected).abs().max() < 0.03


def test_top_k_top_p_min_p_keep_only_their_tokens():
    logits = torch.linspace(-3, 3, V)  # token V-1 most likely
    freq = empirical(logits, {"top_k": 4}, n=1000)
    assert set(freq.nonzero().view(-1).tolist()) <= set(range(V - 4, V))
    probs = torch.softmax(logits, -1)
    order = probs.argsort(descending=True)
    nucleus = (probs[order].cumsum(0) - probs[order] < 0.6).sum().item()
    freq = empirical(logits, {"top_p": 0.6}, n=1000)
    assert set(freq.nonzero().view(-1).tolist()) <= set(order[:nucleus].tolist())
    keep = (probs >= 0.3 * probs.max()).nonzero().view(-1).tolist()
    freq = empirical(logits, {"min_p": 0.3}, n=1000)
    assert set(freq.nonzero().view(-1).tolist()) <= set(keep)
    # Within the kept set, the renormalized distribution.
    freq = empirical(logits, {"top_k": 3}, n=6000)
    expected = torch.softmax(logits[-3:], -1)
    assert (freq[-3:] - expected).abs().max() < 0.03


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(1, V)
    s = seq(prompt=(1, 2, 3, 3), output=(9, 30), repetition_penalty=1.7, temperature=0.0)
    ours = logits.clone()
    sampler()._apply_penalties(ours, [s])
    ids = torch.tensor([s.token_ids])
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_frequency_and_presence_penalties_use_output_counts():
    logits = torch.randn(1, V)
    s = seq(prompt=(4, 4), output=(9, 9, 9, 11), frequency_penalty=0.5, presence_penalty=0.25)
    ours = logits.clone()
    sampler()._apply_penalties(ours, [s])
    expected = logits.clone()
    expected[0, 9] -= 0.5 * 3 + 0.25
    expected[0, 11] -= 0.5 + 0.25
    torch.testing.assert_close(ours, expected)  # prompt tokens (4) untouched


def test_min_tokens_blocks_eos_and_stop_tokens():
    logits = torch.zeros(1, V)
    logits[0, EOS] = 50.0
    logits[0, 8] = 40.0
    s = seq(output=(1,), min_tokens=3, stop_token_ids=[8], temperature=0.0)
    assert sampler()(logits, [s]).token_ids[0] not in (EOS, 8)
    s = seq(output=(1, 1, 1), min_tokens=3, stop_token_ids=[8], temperature=0.0)
    assert sampler()(logits, [s]).token_ids[0] == EOS


def test_logprobs_are_raw_log_softmax_with_top_k():
    logits = torch.randn(2, V)
    seqs = [seq(logprobs=3, temperature=0.0, repetition_penalty=1.5), seq(temperature=0.0)]
    out = sampler()(logits, seqs)
    lp = torch.log_softmax(logits[0], -1)
    top = lp.topk(3)
    d = out.logprobs[0]
    assert list(d)[0] == out.token_ids[0]
    for tok, val in zip(top.indices.tolist(), top.values.tolist()):
        assert d[tok] == pytest.approx(val, abs=1e-6)
    assert d[out.token_ids[0]] == pytest.approx(lp[out.token_ids[0]].item(), abs=1e-6)
    assert out.logprobs[1] is None


def test_filtered_tokens_are_never_drawn_even_with_extreme_logits():
    logits = torch.full((1, V), -1e4)
    logits[0, 3] = 1e4
    for seed in range(20):
        assert sampler()(logits, [seq(seed=seed, top_k=1)]).token_ids[0] == 3
