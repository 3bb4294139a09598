"""Runs the model on one scheduling step: flat token batch in, sampled tokens out.

Per step, ``prepare_inputs`` turns the scheduled sequences into one ``StepInput`` (every tensor the
forward reads: token ids, positions, the attention metadata, which hidden rows need logits), and
``execute`` runs the forward on it. Keeping the step's whole input in one object is what lets the
GPU fast path capture a step in a CUDA graph against persistent buffers and replay it with new
contents.

Logits are computed only where they are used: the last token of every sequence that samples in
this step, plus the positions whose next-token distribution is a requested prompt logprob.

The KV cache (one K and one V tensor per attention layer, [num_blocks, block_size, num_kv_heads,
head_dim]) is allocated here. Its size: ``num_kv_blocks`` if given; on the CPU
``cpu_kv_cache_bytes``; on a GPU, what ``gpu_memory_utilization`` of the device leaves after the
weights and the peak activation memory of a profile forward at full batch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from atom.config import EngineConfig
from atom.engine.sampler import Sampler, SamplerOutput, token_logprobs
from atom.engine.scheduler import ScheduledSeq, SchedulerOutput
from atom.engine.sequence import Sequence
from atom.forward_context import AttentionMetadata
from atom.platforms import current_platform

logger = logging.getLogger(__name__)


@dataclass
class PromptLogprobRows:
    seq: Sequence
    num_rows: int  # rows of the logits (after the sampling rows), in order
    targets: list[int]  # the prompt token each row's distribution is scored on


@dataclass
class StepInput:
    """Everything the forward of one step reads. T = total new tokens, S = sequences."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor  # [R] int64: hidden rows that go through compute_logits
    sample_seqs: list[Sequence]  # the first len(sample_seqs) logits rows, one per sequence
    prompt_logprob_rows: list[PromptLogprobRows] = field(default_factory=list)


@dataclass
class RunnerOutput:
    sampled: dict[int, tuple[int, dict[int, float] | None]]  # seq_id -> (token, logprobs)
    prompt_logprobs: dict[int, list[dict[int, float]]]  # seq_id -> new prompt logprob entries


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        from atom.models import build_model

        assert config.model_config is not None, "use EngineConfig.create()"
        self.config = config
        self.model_config = mc = config.model_config
        platform = current_platform()
        self.device = torch.device("cuda", 0) if platform.is_gpu else torch.device("cpu")
        self.block_size = config.block_size
        self.model = build_model(mc, self.device, load_dummy=config.load_dummy)
        self.model.eval()
        self.attn_layers = list(self.model.attention_layers())
        if config.kv_cache_dtype == "fp8":
            self.kv_dtype = platform.fp8_dtype
        else:
            self.kv_dtype = mc.dtype  # unquantized: the model's own dtype
        # fp8 caches hold K/V / scale with a per-tensor scale of 1.0 (no calibration yet).
        self._kv_scale = None
        if self.kv_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
            self._kv_scale = torch.ones((), dtype=torch.float32, device=self.device)
        self.sampler = Sampler(mc.eos_token_ids, self.device, seed=config.seed)
        self.num_blocks = self._choose_num_blocks()
        capacity = self.num_blocks * self.block_size
        if capacity < config.max_model_len:
            raise ValueError(
                f"the KV cache holds {capacity} tokens ({self.num_blocks} blocks), fewer than "
                f"max_model_len={config.max_model_len}: lower max_model_len or give the cache more "
                "memory (cpu_kv_cache_bytes / gpu_memory_utilization / num_kv_blocks)"
            )
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        logger.info(
            "KV cache: %d blocks of %d tokens (%.1f MiB, %s) on %s",
            self.num_blocks, self.block_size,
            self.num_blocks * self.bytes_per_block / 2**20, self.kv_dtype, self.device,
        )  # fmt: skip

    # --- KV cache --------------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        itemsize = torch.empty((), dtype=self.kv_dtype).element_size()
        # A layer with ``needs_v_cache = False`` (MLA: its values are the cached latents) has
        # only a K cache.
        per_token = sum(
            (1 + getattr(layer, "needs_v_cache", True)) * layer.num_kv_heads * layer.head_dim
            for layer in self.attn_layers
        )
        return per_token * self.block_size * itemsize

    def _choose_num_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cpu":
            return max(1, self.config.cpu_kv_cache_bytes // self.bytes_per_block)
        return self._gpu_num_blocks()

    def _gpu_num_blocks(self) -> int:
        """Blocks that fit in gpu_memory_utilization * total memory, after the weights and the
        peak memory of a forward over a full batch (max_num_batched_tokens tokens)."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._profile_forward()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        non_torch = (total - free) - torch.cuda.memory_reserved(self.device)  # CUDA context, NCCL
        available = total * self.config.gpu_memory_utilization - peak - max(non_torch, 0)
        torch.cuda.empty_cache()
        num_blocks = int(available // self.bytes_per_block)
        if num_blocks < 1:
            raise ValueError(
                f"no GPU memory left for the KV cache (peak {peak / 2**30:.2f} GiB of "
                f"{total / 2**30:.2f} GiB, gpu_memory_utilization="
                f"{self.config.gpu_memory_utilization}); raise gpu_memory_utilization or lower "
                "max_num_batched_tokens"
            )
        return num_blocks

    @torch.inference_mode()
    def _profile_forward(self) -> None:
        cfg = self.config
        num_tokens = min(cfg.max_num_batched_tokens, cfg.max_num_seqs * cfg.max_model_len)
        num_seqs = min(cfg.max_num_seqs, num_tokens)
        lens = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
        blocks_per_seq = [-(-n // self.block_size) for n in lens]
        caches = self._allocate_kv_cache(sum(blocks_per_seq))
        tables, next_block = [], 0
        for nb in blocks_per_seq:
            tables.append(list(range(next_block, next_block + nb)))
            next_block += nb
        step = self._build_step_input(
            input_ids=[0] * num_tokens,
            positions=[p for n in lens for p in range(n)],
            query_lens=lens,
            seq_lens=lens,
            block_tables=tables,
            slots=[
                t[p // self.block_size] * self.block_size + p % self.block_size
                for t, n in zip(tables, lens)
                for p in range(n)
            ],  # fmt: skip
            logits_rows=[sum(lens[: i + 1]) - 1 for i in range(num_seqs)],
            sample_seqs=[],
        )
        self.execute(step)
        del caches
        # Unbind the profile caches so that their memory is freed (rebind the real ones, if any).
        if getattr(self, "kv_caches", None):
            for layer, (k, v) in zip(self.attn_layers, self.kv_caches):
                layer.bind_kv_cache(k, v, self._kv_scale, self._kv_scale)
        else:
            self._allocate_kv_cache(0)

    def _allocate_kv_cache(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = []
        scale = self._kv_scale
        for layer in self.attn_layers:
            shape = (num_blocks, self.block_size, layer.num_kv_heads, layer.head_dim)
            k = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            v_shape = shape if getattr(layer, "needs_v_cache", True) else (0, *shape[1:])
            v = torch.zeros(v_shape, dtype=self.kv_dtype, device=self.device)
            layer.bind_kv_cache(k, v, scale, scale)
            caches.append((k, v))
        return caches

    # --- one step ----------------------------------------------------------------------------
    def prepare_inputs(self, scheduled: list[ScheduledSeq]) -> StepInput:
        input_ids, positions, slots, logits_rows = [], [], [], []
        query_lens, seq_lens, tables, sample_seqs = [], [], [], []
        lp_rows: list[PromptLogprobRows] = []
        lp_indices: list[int] = []
        bs = self.block_size
        for s in scheduled:
            seq, start, end = s.seq, s.start, s.start + s.num_tokens
            first_row = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(end - start)
            seq_lens.append(end)
            tables.append(table)
            if s.samples:
                logits_rows.append(first_row + end - start - 1)
                sample_seqs.append(seq)
            if seq.wants_prompt_logprobs:
                # Position p's logits score prompt token p + 1; entries 1.. are filled in order.
                lo = max(start, len(seq.prompt_logprobs) - 1)
                hi = min(end, seq.num_prompt_tokens - 1)
                if hi > lo:
                    lp_indices.extend(first_row + p - start for p in range(lo, hi))
                    lp_rows.append(PromptLogprobRows(seq, hi - lo, seq.token_ids[lo + 1 : hi + 1]))
        return self._build_step_input(
            input_ids, positions, query_lens, seq_lens, tables, slots,
            logits_rows + lp_indices, sample_seqs, lp_rows,
        )  # fmt: skip

    def _build_step_input(
        self,
        input_ids: list[int],
        positions: list[int],
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        slots: list[int],
        logits_rows: list[int],
        sample_seqs: list[Sequence],
        prompt_logprob_rows: list[PromptLogprobRows] | None = None,
    ) -> StepInput:
        dev = self.device
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables]  # pad: a valid block id
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        meta = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_seqlen_q=max(query_lens),
            max_seqlen_k=max(seq_lens),
            seq_lens_cpu=list(seq_lens),
            query_lens_cpu=list(query_lens),
        )
        return StepInput(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            attn_metadata=meta,
            logits_indices=torch.tensor(logits_rows, dtype=torch.int64, device=dev),
            sample_seqs=sample_seqs,
            prompt_logprob_rows=prompt_logprob_rows or [],
        )

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """The forward: returns logits [len(logits_indices), vocab] fp32."""
        hidden = self.model(step.input_ids, step.positions, step.attn_metadata)  # [T, H]
        return self.model.compute_logits(hidden[step.logits_indices])

    @torch.inference_mode()
    def run(self, sched: SchedulerOutput) -> RunnerOutput:
        step = self.prepare_inputs(sched.scheduled)
        logits = self.execute(step)
        num_sample = len(step.sample_seqs)
        sampled: dict[int, tuple[int, dict[int, float] | None]] = {}
        if num_sample:
            out: SamplerOutput = self.sampler(logits[:num_sample], step.sample_seqs)
            for seq, tok, lp in zip(step.sample_seqs, out.token_ids, out.logprobs):
                sampled[seq.seq_id] = (tok, lp)
        prompt_lps: dict[int, list[dict[int, float]]] = {}
        row = num_sample
        for rows in step.prompt_logprob_rows:
            lps = torch.log_softmax(logits[row : row + rows.num_rows].float(), dim=-1)
            prompt_lps[rows.seq.seq_id] = token_logprobs(
                lps, rows.targets, [rows.seq.params.prompt_logprobs] * rows.num_rows
            )
            row += rows.num_rows
        return RunnerOutput(sampled, prompt_lps)
