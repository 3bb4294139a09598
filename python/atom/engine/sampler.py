"""Turns the logits of the sequences that sample in a step into their next tokens.

Per row, in this order (vLLM's order):
  1. raw log-probabilities for ``logprobs``: log_softmax of the model's logits, untouched by
     anything below (vLLM's default ``raw_logprobs``);
  2. penalties: repetition (Hugging Face's rule over prompt + output tokens t:
     l_t <- l_t / r if l_t > 0 else l_t * r), then frequency and presence (OpenAI's rule over the
     output so far: l_t <- l_t - f * count_t - p * [count_t > 0]);
  3. ``min_tokens``: EOS and ``stop_token_ids`` get -inf until enough tokens were generated;
  4. greedy rows (temperature 0): argmax, ties to the lowest id;
  5. other rows: l / temperature, then top-k, top-p (smallest set of most likely tokens whose
     probability reaches p), min-p (drop tokens with p_t < min_p * max p), softmax, and a draw by
     the exponential race  argmax_t p_t / E_t  with E_t ~ Exp(1) i.i.d. (exactly a sample of p).
     A seeded row draws its E from a generator seeded with H(seed, number of tokens generated so
     far), so its tokens depend on nothing else in the batch, nor on preemption; other rows share
     the engine's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atom import kernels
from atom.engine.sequence import Sequence


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[dict[int, float] | None]  # per row: {sampled: lp, top ids: lp}, or None


def _mix_seed(seed: int, step: int) -> int:
    """A 63-bit seed for draw number ``step`` of a request seeded with ``seed`` (an LCG step)."""
    return (seed * 6364136223846793005 + step * 1442695040888963407 + 1) % (2**63 - 1)


def token_logprobs(
    logprobs: torch.Tensor, tokens: list[int], num_top: list[int]
) -> list[dict[int, float]]:
    """logprobs: [R, V] fp32 log-probabilities; per row i, {tokens[i]: lp} plus the num_top[i]
    most likely tokens (token id -> lp), the chosen token first."""
    rows = []
    max_top = max(num_top, default=0)
    top_vals = top_ids = None
    if max_top > 0:
        top_vals, top_ids = logprobs.topk(max_top, dim=-1)
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device).view(-1, 1)).view(-1)
    chosen = chosen.tolist()
    for i, tok in enumerate(tokens):
        d = {tok: chosen[i]}
        for j in range(num_top[i]):
            d.setdefault(top_ids[i][j], top_vals[i][j])
        rows.append(d)
    return rows


class Sampler:
    def __init__(
        self, eos_token_ids: list[int] | tuple[int, ...], device: torch.device, seed: int = 0
    ):
        self.eos_token_ids = list(eos_token_ids)
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), V] fp32, row i the next-token logits of seqs[i]."""
        assert logits.shape[0] == len(seqs)
        logits = logits.float()
        num_rows, vocab = logits.shape
        want_lp = [s.params.logprobs is not None for s in seqs]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_lp) else None
        logits = logits.clone()
        self._apply_penalties(logits, seqs)
        self._apply_min_tokens(logits, seqs)

        tokens = torch.empty(num_rows, dtype=torch.long, device=logits.device)
        greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
        rand = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if greedy:
            idx = torch.tensor(greedy, device=logits.device)
            tokens[idx] = kernels.greedy_argmax(logits[idx])
        if rand:
            idx = torch.tensor(rand, device=logits.device)
            tokens[idx] = self._sample(logits[idx], [seqs[i] for i in rand])
        token_list = tokens.tolist()

        out_lp: list[dict[int, float] | None] = [None] * num_rows
        lp_rows = [i for i in range(num_rows) if want_lp[i]]
        if lp_rows:
            idx = torch.tensor(lp_rows, device=logits.device)
            dicts = token_logprobs(
                raw_logprobs[idx],
                [token_list[i] for i in lp_rows],
                [seqs[i].params.logprobs for i in lp_rows],
            )
            for i, d in zip(lp_rows, dicts):
                out_lp[i] = d
        return SamplerOutput(token_list, out_lp)

    # --- logit processing --------------------------------------------------------------------
    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        vocab = logits.shape[1]
        for i, seq in enumerate(seqs):
            p = seq.params
            if not p.has_penalties:
                continue
            row = logits[i]
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(seq.token_ids)), device=logits.device)
                vals = row[seen]
                row[seen] = torch.where(
                    vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
                )
            if (p.frequency_penalty or p.presence_penalty) and seq.num_output_tokens:
                out = torch.tensor(seq.output_token_ids, device=logits.device)
                counts = torch.bincount(out, minlength=vocab)[:vocab].float()
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()

    def _apply_min_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for i, seq in enumerate(seqs):
            p = seq.params
            if seq.num_output_tokens < p.min_tokens:
                banned = [
                    t for t in (*self.eos_token_ids, *p.stop_token_ids) if t < logits.shape[1]
                ]
                if banned:
                    logits[i, banned] = float("-inf")

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """logits: [R, V] of rows with temperature > 0. Returns [R] int64 token ids."""
        num_rows, vocab = logits.shape
        dev = logits.device
        temps = torch.tensor([s.params.temperature for s in seqs], device=dev).view(-1, 1)
        logits = logits / temps
        top_k = [s.params.top_k if 0 < s.params.top_k < vocab else 0 for s in seqs]
        top_p = [s.params.top_p for s in seqs]
        filt = [i for i in range(num_rows) if top_k[i] or top_p[i] < 1.0]
        if filt:
            idx = torch.tensor(filt, device=dev)
            k = torch.tensor([top_k[i] or vocab for i in filt], device=dev).view(-1, 1)
            p = torch.tensor([top_p[i] for i in filt], device=dev).view(-1, 1)
            logits[idx] = _top_k_top_p(logits[idx], k, p)
        min_p = [s.params.min_p for s in seqs]
        if any(min_p):
            mp = torch.tensor(min_p, device=dev).view(-1, 1)
            probs = torch.softmax(logits, dim=-1)
            cutoff = mp * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < cutoff, float("-inf"))
        probs = torch.softmax(logits, dim=-1)

        noise = torch.empty_like(probs)
        unseeded = [i for i, s in enumerate(seqs) if s.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), vocab, device=dev).exponential_(
                generator=self.generator
            )
        for i, s in enumerate(seqs):
            if s.seed is not None:
                g = torch.Generator(device=dev)
                g.manual_seed(_mix_seed(s.seed, s.num_output_tokens))
                noise[i] = torch.empty(vocab, device=dev).exponential_(generator=g)
        # E = 0 would turn a dropped token (p = 0) into 0/0 = NaN, which argmax would pick.
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        return (probs / noise).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, k: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """logits: [R, V]; k: [R, 1] int (V = off); p: [R, 1] (1.0 = off). Returns the filtered
    logits (dropped tokens at -inf)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=logits.device).view(1, -1)
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the more likely tokens
    drop = (before >= p) & (p < 1.0)  # the first token always stays (before == 0 < p)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
