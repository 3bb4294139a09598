"""Runs the model on one scheduling step: flat token batch in, sampled tokens out.

Per step, ``prepare_inputs`` turns the scheduled sequences into one ``StepInput`` (every tensor the
forward reads: token ids, positions, the attention metadata, which hidden rows need logits), and
``execute`` runs the forward on it. The inputs cross to the device through pinned staging buffers
without waiting (atom.engine.input_buffers); reading the sampled tokens is the step's one
host-device synchronization.

Decode-only steps take the fast path when there is one (``_setup_fast_path``, atom.engine.compile
for the levels): ``decode_step_forward`` (model, LM head and greedy argmax of a padded batch) runs
on persistent buffers, replayed as a CUDA/HIP graph and/or compiled (atom.engine.cuda_graph).
Steps whose sampled rows are all plain greedy take the argmax without the sampler.

Logits are computed only where they are used: the last token of every sequence that samples in
this step, plus the positions whose next-token distribution is a requested prompt logprob.

The KV cache (one K and one V tensor per attention layer, [num_blocks, block_size, num_kv_heads,
head_dim]) is allocated here. Its size: ``num_kv_blocks`` if given; on the CPU
``cpu_kv_cache_bytes``; on a GPU, what ``gpu_memory_utilization`` of the device leaves after the
weights and the peak activation memory of a profile forward at full batch size
(atom.engine.startup_steps, which also warms the JIT kernels up on a GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from atom import kernels
from atom.config import EngineConfig
from atom.engine.compile import FastPathPlan, compile_decode_step, warm_up_settings
from atom.engine.cuda_graph import DecodeBatch, DecodeGraphs, capture_sizes_for
from atom.engine.input_buffers import HostStaging
from atom.engine.sampler import Sampler, SamplerOutput, token_logprobs
from atom.engine.scheduler import ScheduledSeq, SchedulerOutput
from atom.engine.sequence import Sequence
from atom.engine.startup_steps import profile_forward, warm_up_kernels
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
class LaunchedDecode:
    """A plain-greedy decode-only step launched without waiting for its tokens (see
    ``ModelRunner.launch_decode``)."""

    scheduled: list[ScheduledSeq]
    greedy: torch.Tensor  # [n] int64 on the device (graph output: valid until the next replay)
    host_tokens: torch.Tensor  # [n] int64 on the host, filled by an asynchronous copy
    copied: torch.cuda.Event | None  # recorded after that copy (None on the CPU)


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
        self.max_blocks_per_seq = -(-config.max_model_len // config.block_size)
        self.staging = HostStaging(self.device)
        # Two host buffers for the tokens of launched decode steps: a step's tokens are read
        # after the next step was launched, which copies into the other buffer.
        self._token_buffers: list[torch.Tensor] = []
        self._next_token_buffer = 0
        self.decode_graphs: DecodeGraphs | None = None  # set by _setup_fast_path
        self.model = build_model(mc, self.device, load_dummy=config.load_dummy)
        self.model.eval()
        self.small_batch_layers = 0
        if platform.is_gpu and config.small_batch_tokens > 0:
            enable = getattr(self.model, "enable_small_batch", None)
            if enable is not None:
                self.small_batch_layers = enable(config.small_batch_tokens)
            logger.info(
                "fused small-batch form (<= %d tokens) in %d layers",
                config.small_batch_tokens, self.small_batch_layers,
            )  # fmt: skip
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
        if self.device.type == "cuda":
            warm_up_kernels(self)
        self.fast_path = self._setup_fast_path()
        logger.info("decode fast path: %s", self.fast_path)

    # --- decode fast path --------------------------------------------------------------------
    def _setup_fast_path(self) -> str:
        """Compiles the decode step and captures its graphs as ``level`` and ``enforce_eager`` ask
        (atom.engine.compile). Returns what decode steps run as, for logs and benchmarks. A
        failure falls back one rung (compiled -> eager step, graphs -> none) with a warning."""
        cfg = self.config
        plan = FastPathPlan.for_config(cfg.level, cfg.enforce_eager, self.device.type == "cuda")
        if not (plan.compile or plan.graphs):
            return "eager"
        # A decode batch holds at most max_num_seqs sequences and max_num_batched_tokens tokens.
        largest = min(cfg.max_num_seqs, cfg.max_num_batched_tokens)
        sizes = capture_sizes_for(cfg.cudagraph_capture_sizes, largest)
        attempts = [(plan.compile, plan.graphs)]
        if plan.compile and plan.graphs:
            attempts.append((False, True))
        notes = []
        for compiled, graphs in attempts:
            forward = self.decode_step_forward
            if compiled:
                forward = compile_decode_step(self.decode_step_forward)
            self.decode_graphs = DecodeGraphs(
                forward, sizes, self.max_blocks_per_seq, cfg.max_model_len, self.device,
                self.staging, capture=graphs,
            )  # fmt: skip
            try:
                with warm_up_settings(compiled):  # torch.compile compiles in this warm-up
                    self.decode_graphs.capture()
            except Exception as e:  # noqa: BLE001 - any failure: fall back, say why
                what = "torch.compile" if compiled else "graph capture"
                logger.warning("decode fast path: %s failed, falling back: %r", what, e)
                notes.append(f"{what} failed: {type(e).__name__}: {str(e)[:200]}")
                self.decode_graphs = None
                torch.cuda.synchronize(self.device)
                continue
            done = " + ".join(
                (["torch.compile (inductor)"] if compiled else [])
                + ([f"CUDA graphs for batch sizes {sizes}"] if graphs else [])
            )
            return "; ".join([done, *notes])
        return "; ".join(["eager", *notes])

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
        profile_forward(self)
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
        """Device tensors of the step, each copied once from a pinned host buffer without
        waiting (atom.engine.input_buffers)."""
        st = self.staging
        width = max(1, max(len(t) for t in block_tables))
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        st.begin()
        meta = AttentionMetadata(
            cu_seqlens_q=st.to_device(st.put("cu_seqlens_q", cu, torch.int32)),
            seq_lens=st.to_device(st.put("seq_lens", seq_lens, torch.int32)),
            block_tables=st.to_device(st.put_rows("block_tables", block_tables, width)),
            slot_mapping=st.to_device(st.put("slot_mapping", slots, torch.int64)),
            max_seqlen_q=max(query_lens),
            max_seqlen_k=max(seq_lens),
            seq_lens_cpu=list(seq_lens),
            query_lens_cpu=list(query_lens),
        )
        step = StepInput(
            input_ids=st.to_device(st.put("input_ids", input_ids, torch.int64)),
            positions=st.to_device(st.put("positions", positions, torch.int64)),
            attn_metadata=meta,
            logits_indices=st.to_device(st.put("logits_indices", logits_rows, torch.int64)),
            sample_seqs=sample_seqs,
            prompt_logprob_rows=prompt_logprob_rows or [],
        )
        st.end()
        return step

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """The forward: returns logits [len(logits_indices), vocab] fp32."""
        hidden = self.model(step.input_ids, step.positions, step.attn_metadata)  # [T, H]
        return self.model.compute_logits(hidden[step.logits_indices])

    def decode_step_forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The function that CUDA graphs capture (and torch.compile compiles): a decode batch
        [B] -> (logits [B, vocab] fp32, greedy token ids [B] int64). The argmax rides along in
        the graph so that a greedy step reads back B integers and launches no sampling kernels
        (kernels.greedy_argmax: a many-program Triton argmax on GPUs, torch's under compile)."""
        logits = self.model.compute_logits(self.model(input_ids, positions, meta))
        return logits, kernels.greedy_argmax(logits)

    def _uses_decode_path(self, scheduled: list[ScheduledSeq]) -> bool:
        graphs = self.decode_graphs
        return (
            graphs is not None
            and len(scheduled) <= graphs.max_batch_size
            and all(s.num_tokens == 1 and not s.seq.wants_prompt_logprobs for s in scheduled)
        )

    @torch.inference_mode()
    def run(self, sched: SchedulerOutput) -> RunnerOutput:
        if self._uses_decode_path(sched.scheduled):
            return self._run_decode(sched.scheduled)
        step = self.prepare_inputs(sched.scheduled)
        logits = self.execute(step)
        num_sample = len(step.sample_seqs)
        sampled = self._sample(logits[:num_sample], None, step.sample_seqs)
        prompt_lps: dict[int, list[dict[int, float]]] = {}
        row = num_sample
        for rows in step.prompt_logprob_rows:
            lps = torch.log_softmax(logits[row : row + rows.num_rows].float(), dim=-1)
            prompt_lps[rows.seq.seq_id] = token_logprobs(
                lps, rows.targets, [rows.seq.params.prompt_logprobs] * rows.num_rows
            )
            row += rows.num_rows
        return RunnerOutput(sampled, prompt_lps)

    def _decode_batch(self, scheduled: list[ScheduledSeq]) -> DecodeBatch:
        bs = self.block_size
        ids, positions, slots, lens, tables = [], [], [], [], []
        for s in scheduled:
            seq, p = s.seq, s.start
            table = seq.block_table
            ids.append(max(seq.token_ids[p], 0))  # a placeholder's row is filled on the device
            positions.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            lens.append(p + 1)
            tables.append(table)
        return DecodeBatch(ids, positions, slots, lens, tables)

    # --- decode steps launched without waiting (asynchronous scheduling) ----------------------
    def can_launch_decode(self, scheduled: list[ScheduledSeq]) -> bool:
        """Whether ``launch_decode`` can run this step: decode-only on the fast path, and every
        sequence samples plainly greedily (its token is the argmax the step computes anyway)."""
        return self._uses_decode_path(scheduled) and all(
            s.samples and _plain_greedy(s.seq) for s in scheduled
        )

    @torch.inference_mode()
    def launch_decode(
        self, scheduled: list[ScheduledSeq], after: LaunchedDecode | None = None
    ) -> LaunchedDecode:
        """Launches a decode step (``can_launch_decode``) and returns without waiting; its tokens
        come from ``collect_decode``. With ``after``, a launched step not collected yet, each
        sequence's input token is the one ``after`` sampled for it, taken on the device (on the
        host it is still a placeholder). Its sequences must be among ``after``'s."""
        prev_tokens = prev_rows = None
        if after is not None:
            prev_tokens = after.greedy
            row_of = {s.seq.seq_id: i for i, s in enumerate(after.scheduled)}
            rows = [row_of[s.seq.seq_id] for s in scheduled]
            prev_rows = None if rows == list(range(len(rows))) else rows
        _, greedy = self.decode_graphs.run(self._decode_batch(scheduled), prev_tokens, prev_rows)
        n = len(scheduled)
        host = self._token_buffer(n)
        host.copy_(greedy, non_blocking=self.staging.pinned)
        copied = None
        if self.staging.pinned:
            copied = torch.cuda.Event()
            copied.record()
        return LaunchedDecode(scheduled, greedy, host, copied)

    def collect_decode(self, launched: LaunchedDecode) -> RunnerOutput:
        """Waits for a launched step's tokens (only for them: later launched work keeps the GPU
        busy meanwhile). The step's one host-device synchronization."""
        if launched.copied is not None:
            launched.copied.synchronize()
        tokens = launched.host_tokens.tolist()
        return RunnerOutput(
            {s.seq.seq_id: (t, None) for s, t in zip(launched.scheduled, tokens)}, {}
        )

    def _token_buffer(self, n: int) -> torch.Tensor:
        if not self._token_buffers or self._token_buffers[0].numel() < n:
            size = max(n, self.config.max_num_seqs)
            self._token_buffers = [
                torch.zeros(size, dtype=torch.int64, pin_memory=self.staging.pinned)
                for _ in range(2)
            ]
        buf = self._token_buffers[self._next_token_buffer]
        self._next_token_buffer ^= 1
        return buf[:n]

    def _run_decode(self, scheduled: list[ScheduledSeq]) -> RunnerOutput:
        """A decode-only step on the persistent padded buffers (a CUDA-graph replay on a GPU)."""
        logits, greedy = self.decode_graphs.run(self._decode_batch(scheduled))
        rows = [i for i, s in enumerate(scheduled) if s.samples]
        if len(rows) != len(scheduled):  # 1-token prefill chunks that do not sample
            index = torch.tensor(rows, dtype=torch.int64).to(self.device, non_blocking=True)
            logits, greedy = logits[index], greedy[index]
        return RunnerOutput(self._sample(logits, greedy, [scheduled[i].seq for i in rows]), {})

    def _sample(
        self, logits: torch.Tensor, greedy: torch.Tensor | None, seqs: list[Sequence]
    ) -> dict[int, tuple[int, dict[int, float] | None]]:
        """seq_id -> (next token, logprobs) for seqs, row i of logits [len(seqs), V] (and of
        greedy [len(seqs)], the rows' argmax, when the forward computed it). Steps where every
        row is plain greedy (no penalties, logprobs or min_tokens left) take the argmax: what
        the sampler would pick, without its kernels. Reading the tokens is the step's one
        host-device synchronization."""
        if not seqs:
            return {}
        if all(_plain_greedy(seq) for seq in seqs):
            tokens = (kernels.greedy_argmax(logits) if greedy is None else greedy).tolist()
            return {seq.seq_id: (tok, None) for seq, tok in zip(seqs, tokens)}
        out: SamplerOutput = self.sampler(logits, seqs)
        return {seq.seq_id: (tok, lp) for seq, tok, lp in zip(seqs, out.token_ids, out.logprobs)}


def _plain_greedy(seq: Sequence) -> bool:
    p = seq.params
    return (
        p.greedy
        and not p.has_penalties
        and p.logprobs is None
        and seq.num_output_tokens >= p.min_tokens
    )
