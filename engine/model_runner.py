"""Runs the model for one scheduled step: block copies, the forward pass, sampling.

Owns the model, the GPU KV pool (one K and one V tensor per layer, laid out
`[num_blocks, block_size, num_kv_heads, head_dim]`) and the CPU swap pool of the same layout.
"""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from engine.attention.backend import get_attention_backend
from engine.config import EngineConfig
from engine.distributed import parallel_state
from engine.layers.attention import attention_layers, bind_kv_caches
from engine.model_inputs import ModelInputs, build_model_inputs
from engine.sampler import PendingSample, Sampler, SamplingMetadata, compute_prompt_logprobs
from engine.scheduler_output import SchedulerOutput
from engine.token_history import penalty_token_tensors
from engine.transfer import to_device

logger = logging.getLogger(__name__)

GiB = 1 << 30


@dataclass
class RunnerOutput:
    # seq_id -> (token id, logprob of the token, {token: logprob} incl. top-k or None)
    sampled: dict[int, tuple[int, float, Optional[dict[int, float]]]] = field(default_factory=dict)
    # request_id -> new prompt_logprobs entries, and the prompt position of the first of them
    prompt_logprobs: dict[str, list[Optional[dict[int, float]]]] = field(default_factory=dict)
    prompt_logprobs_first: dict[str, int] = field(default_factory=dict)
    # Beam search: seq_id -> (top 2*width token ids, their logprobs) of the raw distribution.
    beam_candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    # Speculative decoding: seq_id -> engine.spec_decode.verifier.Verified of its verify chunk.
    verified: dict = field(default_factory=dict)


@dataclass
class InFlight:
    """A launched step: its schedule, its samples (possibly still on their way to the host)."""

    sched: SchedulerOutput
    result: RunnerOutput = field(default_factory=RunnerOutput)
    rows: list = field(default_factory=list)
    pending: Optional[PendingSample] = None
    logits: Optional[torch.Tensor] = None  # computed, not yet sampled (see ModelRunner.sample)
    row_of_seq: dict[int, int] = field(default_factory=dict)
    # True when every sequence sampled here got a placeholder token (the next step may be
    # scheduled before this one's tokens are known).
    overlappable: bool = False
    # Sampling running on the runner's sampling thread (`ModelRunner.sample(background=True)`).
    sampling: Optional[Future] = None
    # Verify chunks' outcome on its way to the host (engine/spec_decode/verifier.py).
    verify: Optional[Any] = None

    def wait_sampled(self) -> None:
        """Wait for a background sampling launch (re-raising its error)."""
        if self.sampling is not None:
            future, self.sampling = self.sampling, None
            future.result()


class ModelRunner:
    # A sequence whose sampling reads its latest tokens (grammar, penalties) may overlap steps:
    # its sampling waits for the previous step's tokens (`launch(sample=False)` then `sample`).
    # The tensor-parallel executor cannot.
    defers_sampling = True

    def __init__(self, config: EngineConfig):
        from engine.loader.model_loader import load_model, weight_bytes

        self.config = config
        self.device = config.runner.device
        self.dtype = config.model.dtype
        self.block_size = config.cache.block_size
        self.model = load_model(config.model, self.device)
        self.weight_bytes = weight_bytes(self.model)
        qc = config.model.quant_config
        self.quantization = qc.describe() if qc is not None else None
        self.vocab_size = _vocab_size(config.model.hf_config)
        self.backend = get_attention_backend(config.runner.attention_backend, self.device,
                                             self.dtype)
        self.sampler = Sampler(config.model.seed)
        # Hooks that transform logits before sampling (see SamplingMetadata.from_rows).
        self.logits_processors: list = []
        self._sampling_pool: Optional[ThreadPoolExecutor] = None  # see `sample(background=)`
        # Hooks called after every forward pass as `observer(sched, inputs, hidden, aux)`:
        # `aux` holds the auxiliary hidden states a model returns beside its final ones (see
        # LlamaForCausalLM.set_aux_hidden_layers), or None. The EAGLE-3 proposer reads them.
        self.forward_observers: list = []
        self.verifier = None
        if config.speculative is not None:
            from engine.spec_decode.verifier import Verifier
            self.verifier = Verifier(self.vocab_size)
        layers = attention_layers(self.model)
        if not layers:
            raise ValueError("model has no Attention layers")
        self.num_layers = len(layers)
        self.num_kv_heads = layers[0].num_kv_heads
        self.head_dim = layers[0].head_dim
        self.kv_dtype = (torch.float8_e4m3fn if config.cache.kv_cache_dtype.startswith("fp8")
                         else self.dtype)
        logger.info("weights: %s, %.1f MiB; KV cache dtype %s",
                    self.quantization or f"dense {self.dtype}", self.weight_bytes / (1 << 20),
                    self.kv_dtype)
        self.bytes_per_block = (2 * self.num_layers * self.block_size * self.num_kv_heads
                                * self.head_dim * torch.finfo(self.kv_dtype).bits // 8)
        self.num_gpu_blocks = self._decide_num_gpu_blocks()
        self.num_cpu_blocks = self._decide_num_cpu_blocks()
        self.gpu_cache = self._alloc_cache(self.num_gpu_blocks, self.device)
        self.cpu_cache = self._alloc_cache(self.num_cpu_blocks, torch.device("cpu"),
                                           pin=self.device.type == "cuda")
        bind_kv_caches(self.model, self.gpu_cache, self.backend)
        if self.device.type == "cuda":
            self._warm_up_attention(layers)
        # Captured by `capture_graphs`, once whatever shapes the model's outputs is set (an
        # EAGLE-3 proposer's auxiliary hidden-state layers).
        self.graphs = None

    def capture_graphs(self) -> None:
        """Capture the CUDA graphs (CUDA, Triton backend, not `enforce_eager`); the graphs
        return what the model returns then, auxiliary hidden states included."""
        cfg = self.config.runner
        if (self.graphs is None and self.device.type == "cuda" and not cfg.enforce_eager
                and self.backend.name == "triton"):
            from engine.cuda_graphs import CudaGraphRunner
            self.graphs = CudaGraphRunner(self)
            self.graphs.capture()

    # ---- KV pool sizing --------------------------------------------------------------------
    def _decide_num_gpu_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        if self.device.type != "cuda":
            return max(1, int(cache.cpu_kv_cache_space * GiB) // self.bytes_per_block)
        peak = self._profile_peak_activation_bytes()
        free, total = torch.cuda.mem_get_info(self.device)
        used_now = total - free
        budget = total * cache.gpu_memory_utilization - used_now - peak
        num = int(budget // self.bytes_per_block)
        if parallel_state.tp_size() > 1:  # every rank holds the same block ids: the smallest pool
            num = int(parallel_state.all_reduce_min(torch.tensor([num], device=self.device)))
        if num < 1:
            raise ValueError(
                "gpu_memory_utilization: no memory left for the KV cache after weights and "
                f"activations ({used_now / GiB:.1f} GiB used, peak activations {peak / GiB:.1f} GiB "
                f"of {total / GiB:.1f} GiB); raise gpu_memory_utilization or lower "
                "max_num_batched_tokens")
        logger.info("KV cache: %d blocks (%.2f GiB)", num, num * self.bytes_per_block / GiB)
        return num

    def _decide_num_cpu_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_cpu_blocks is not None:
            return cache.num_cpu_blocks
        return int(cache.swap_space * GiB) // self.bytes_per_block

    def _alloc_cache(self, num_blocks: int, device: torch.device, pin: bool = False):
        shape = (num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        caches = []
        for _ in range(self.num_layers):
            k = torch.empty(shape, dtype=self.kv_dtype, device=device, pin_memory=pin)
            v = torch.empty(shape, dtype=self.kv_dtype, device=device, pin_memory=pin)
            caches.append((k, v))
        return caches

    @torch.inference_mode()
    def _profile_peak_activation_bytes(self) -> int:
        """Peak memory of a forward over a full token budget, measured with a scratch cache."""
        sched = self.config.scheduler
        n = min(sched.max_num_batched_tokens, sched.max_model_len)
        nblocks = -(-n // self.block_size)
        scratch = self._alloc_cache(nblocks, self.device)
        bind_kv_caches(self.model, scratch, self.backend)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        from engine.model_inputs import dummy_prefill_inputs
        inputs = dummy_prefill_inputs(n, self.block_size, self.device)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        self.model.compute_logits(hidden[-min(n, sched.max_num_seqs):])
        # The LM head runs outside CUDA graphs on the sampled rows: compile the GEMM variants of
        # decode-sized row counts (gpu_kernels/skinny_gemm.py's tuned tiles) now, not in a step.
        for rows in (1, 2, 4, 8, 16):
            self.model.compute_logits(hidden[:rows])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del scratch, hidden
        torch.cuda.empty_cache()
        return int(peak * 1.1)

    def _warm_up_attention(self, layers) -> None:
        """Compile the attention kernels' variants now rather than inside users' first steps."""
        seen = set()
        for layer in layers:
            key = (layer.num_heads, layer.head_dim, layer.sliding_window)
            if key not in seen:
                seen.add(key)
                self.backend.warm_up(layer, self.config.model.max_model_len)
        torch.cuda.synchronize(self.device)

    # ---- one step ----------------------------------------------------------------------------
    def _block_ops(self, out: SchedulerOutput) -> None:
        if out.blocks_to_swap_out:
            self._swap(self.gpu_cache, self.cpu_cache, out.blocks_to_swap_out)
        if out.blocks_to_swap_in:
            self._swap(self.cpu_cache, self.gpu_cache, out.blocks_to_swap_in)
        if out.blocks_to_copy:
            src = to_device([s for s, _ in out.blocks_to_copy], torch.int64, self.device)
            dst = to_device([d for _, d in out.blocks_to_copy], torch.int64, self.device)
            for k, v in self.gpu_cache:
                k, v = _raw(k), _raw(v)
                k.index_copy_(0, dst, k.index_select(0, src))
                v.index_copy_(0, dst, v.index_select(0, src))

    @staticmethod
    def _swap(src_cache, dst_cache, pairs: list[tuple[int, int]]) -> None:
        src_dev = src_cache[0][0].device
        dst_dev = dst_cache[0][0].device
        src = torch.tensor([s for s, _ in pairs], device=src_dev)
        dst = torch.tensor([d for _, d in pairs], device=dst_dev)
        for (sk, sv), (dk, dv) in zip(src_cache, dst_cache):
            sk, sv, dk, dv = _raw(sk), _raw(sv), _raw(dk), _raw(dv)
            dk.index_copy_(0, dst, sk.index_select(0, src).to(dst_dev))
            dv.index_copy_(0, dst, sv.index_select(0, src).to(dst_dev))

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        return self.finish(self.launch(out))

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prev: Optional["InFlight"] = None,
               sample: bool = True) -> "InFlight":
        """Queue the step's GPU work and start copying its samples to the host.

        Tokens sampled by `prev` (still in flight) are read on the device wherever this step
        computes one of its placeholders. With `sample=False` the step stops at its logits:
        `sample(step)` finishes it once the host knows what sampling needs (e.g. `prev`'s tokens
        for a grammar's mask), while the forward pass runs.
        """
        self._block_ops(out)
        step = InFlight(out)
        if out.is_empty:
            return step
        pad = self.graphs.block_table_width if self.graphs else 0
        inputs = build_model_inputs(out, self.block_size, self.device, pad_block_tables_to=pad)
        if prev is not None:
            prev.wait_sampled()  # its tokens feed this step's placeholders, on the same stream
        if inputs.placeholder_rows:
            self._fill_placeholders(inputs, prev)
        hidden, aux = self._forward(inputs)
        for observe in self.forward_observers:
            observe(out, inputs, hidden, aux)
        self._prompt_logprobs(out, inputs, hidden, step.result)
        if inputs.verify_spans:
            self._verify(out, inputs, hidden, step)
        step.rows = [(s.request, q) for s in out.scheduled for q in s.sample_seqs
                     if not q.num_draft]
        if not step.rows:
            return step
        idx = to_device(inputs.sample_rows, torch.int64, self.device)
        logits = self.model.compute_logits(hidden.index_select(0, idx)).float()
        self._beam_candidates(step.rows, logits, step.result)
        step.logits = logits
        if sample:
            self.sample(step)
        return step

    def sample(self, step: "InFlight", background: bool = False) -> None:
        """Launch the sampling of a step launched with `sample=False` (no-op otherwise).

        `background`: on the runner's sampling thread, so that the host's work on the masks
        (xgrammar's bitmask fill, which releases the GIL) overlaps what the engine does next:
        returning outputs, scheduling and building the next step. `launch(prev=step)` and
        `finish(step)` wait for it."""
        if step.logits is None:
            return
        if not background:
            self._sample_now(step, None)
            return
        if self._sampling_pool is None:
            self._sampling_pool = ThreadPoolExecutor(1, thread_name_prefix="pagedserve-sample")
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        # Penalties read the sequences' tokens, which this thread goes on changing: read here.
        penalty_tokens = (penalty_token_tensors(step.rows, self.vocab_size, self.device)
                          if any(req.has_penalties for req, _ in step.rows) else None)
        step.sampling = self._sampling_pool.submit(self._sample_now, step, stream, penalty_tokens)

    @torch.inference_mode()
    def _sample_now(self, step: "InFlight", stream: Optional["torch.cuda.Stream"],
                    penalty_tokens: Optional[tuple] = None) -> None:
        # The launching thread's device and stream: kernels queue behind the step's forward pass.
        with contextlib.ExitStack() as ctx:
            if stream is not None:
                ctx.enter_context(torch.cuda.device(stream.device))
                ctx.enter_context(torch.cuda.stream(stream))
            meta = SamplingMetadata.from_rows(step.rows, self.vocab_size, self.device,
                                              self.logits_processors, penalty_tokens)
            step.pending = self.sampler.launch(step.logits, meta)
        step.logits = None
        step.row_of_seq = {seq.seq_id: i for i, (_, seq) in enumerate(step.rows)}

    def finish(self, step: "InFlight") -> RunnerOutput:
        """Wait for the step's samples; the RunnerOutput of `launch`'s step."""
        step.wait_sampled()
        self.sample(step)
        if step.verify is not None:
            step.result.verified, step.verify = step.verify.result(), None
        if step.pending is not None:
            sampled = step.pending.result()
            for (_, seq), tok, lp, top in zip(step.rows, sampled.token_ids, sampled.logprobs,
                                              sampled.top_logprobs):
                step.result.sampled[seq.seq_id] = (tok, lp, top)
            step.pending = None
        return step.result

    def _fill_placeholders(self, inputs: ModelInputs, prev: Optional["InFlight"]) -> None:
        if prev is None or prev.pending is None:
            raise RuntimeError("placeholder tokens without an in-flight step to read them from")
        rows = [r for r, _ in inputs.placeholder_rows]
        src = [prev.row_of_seq[sid] for _, sid in inputs.placeholder_rows]
        dst = to_device(rows, torch.int64, self.device)
        inputs.input_ids.index_copy_(
            0, dst, prev.pending.tokens.index_select(0, to_device(src, torch.int64, self.device)))

    def _verify(self, out: SchedulerOutput, inputs: ModelInputs, hidden: torch.Tensor,
                step: "InFlight") -> None:
        """Verify chunks: logits at every position of the chunk, through the verifier."""
        rows = [r for _, first, n in inputs.verify_spans for r in range(first, first + n)]
        idx = to_device(rows, torch.int64, self.device)
        logits = self.model.compute_logits(hidden.index_select(0, idx)).float()
        seqs = [(out.scheduled[i].request, out.scheduled[i].seq) for i, _, _ in inputs.verify_spans]
        step.verify = self.verifier.launch(logits, seqs)  # read by `finish`

    @staticmethod
    def _beam_candidates(rows, logits: torch.Tensor, result: RunnerOutput) -> None:
        for i, (req, seq) in enumerate(rows):
            if req.params.use_beam_search:
                lp = torch.log_softmax(logits[i], dim=-1)
                top = torch.topk(lp, 2 * req.params.best_of)
                result.beam_candidates[seq.seq_id] = (top.indices.tolist(), top.values.tolist())

    def _forward(self, inputs: ModelInputs) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(final hidden states, auxiliary hidden states or None)."""
        if self.graphs is not None and self.graphs.can_run(inputs):
            return self.graphs.run(inputs)
        out = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        return out if isinstance(out, tuple) else (out, None)

    def _prompt_logprobs(self, out: SchedulerOutput, inputs: ModelInputs, hidden: torch.Tensor,
                         result: RunnerOutput) -> None:
        for i, first_row, n in inputs.prompt_logprob_spans:
            s = out.scheduled[i]
            req, start = s.request, s.start
            entries: list[Optional[dict[int, float]]] = [None] if start == 0 else []
            # Row r predicts the token at position start + r + 1; only prompt tokens count.
            num = min(n, req.prompt_len - 1 - start)
            if num > 0:
                logits = self.model.compute_logits(hidden[first_row:first_row + num]).float()
                targets = req.prompt_token_ids[start + 1:start + 1 + num]
                entries += compute_prompt_logprobs(logits, targets, req.params.prompt_logprobs)
            result.prompt_logprobs[req.request_id] = entries
            result.prompt_logprobs_first[req.request_id] = 0 if start == 0 else start + 1


def _raw(cache: torch.Tensor) -> torch.Tensor:
    """Block copies move bytes: fp8 caches as uint8 (index_copy_ has no fp8 kernels)."""
    return cache.view(torch.uint8) if cache.element_size() == 1 else cache


def _vocab_size(hf_config) -> int:
    text = getattr(hf_config, "text_config", None) or hf_config
    return int(getattr(text, "vocab_size"))
