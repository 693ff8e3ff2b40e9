"""The engine core: scheduler + model runner, stepped by a frontend (in-process or in its own
process). It speaks only token ids: tokenization, detokenization and stop strings live in the
frontend (`InputProcessor`, `OutputProcessor`).
"""
from __future__ import annotations

import itertools
import logging
from typing import Optional

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.distributed.executor import make_model_runner
from engine.model_runner import InFlight, RunnerOutput
from engine.outputs import EngineCoreOutput, EngineCoreRequest, SeqDelta
from engine.sampling_params import SamplingParams
from engine.scheduler import PreemptionCost, Scheduler
from engine.scheduler_output import ScheduledSeq, SchedulerOutput
from engine.sequence import Request, Sequence
from engine.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.runner = make_model_runner(config)  # rank 0's executor under tensor parallelism
        self.block_manager = BlockManager(
            self.runner.num_gpu_blocks, self.runner.num_cpu_blocks, config.cache.block_size,
            enable_prefix_caching=config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager, self._cost_model())
        self.async_scheduling = config.runner.async_scheduling
        self.structured_output = StructuredOutputManager(config.model, self.runner.vocab_size)
        self.runner.logits_processors.append(self.structured_output.processor)
        self._failed: list[EngineCoreOutput] = []  # requests failed before scheduling
        self.speculator = None
        if config.speculative is not None:
            from engine.spec_decode.speculator import Speculator
            self.speculator = Speculator(config, self.runner)
        self.runner.capture_graphs()  # after the proposer set what the target returns
        self._inflight: Optional[InFlight] = None
        self._seq_ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.peak_physical_blocks = 0
        self.kv_slots_allocated_sum = 0  # summed over steps: fragmentation = 1 - used/allocated
        self.kv_slots_used_sum = 0
        self.logical_blocks_sum = 0
        self.physical_blocks_sum = 0
        self.num_steps = 0

    def _cost_model(self) -> PreemptionCost:
        params = sum(p.numel() for p in self.runner.model.parameters())
        on_gpu = self.runner.device.type == "cuda"
        return PreemptionCost(
            bytes_per_block=self.runner.bytes_per_block,
            swap_bytes_per_s=20e9 if on_gpu else 5e9,
            flops_per_token=2.0 * params,
            flops_per_s=3e14 if on_gpu else 5e10,
        )

    # ---- requests ----------------------------------------------------------------------------
    @property
    def num_gpu_blocks(self) -> int:
        return self.runner.num_gpu_blocks

    def add_request(self, req: EngineCoreRequest) -> None:
        params = SamplingParams(**req.sampling_params)
        seq_ids = [next(self._seq_ids) for _ in range(params.num_seqs)]
        request = Request(req.request_id, req.prompt_token_ids, params, seq_ids,
                          req.eos_token_id, arrival_time=req.arrival_time)
        request.final_only = req.final_only
        if params.use_beam_search:
            from engine.beam_search import BeamSearchState
            request.beam_state = BeamSearchState(request)
        if params.structured_outputs is not None:
            self.structured_output.add(request)  # scheduled once its grammar has compiled
            return
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            if not self.structured_output.abort(rid):
                self.scheduler.abort_request(rid)

    def _admit_compiled(self) -> None:
        """Hand requests whose grammar has compiled to the scheduler (in arrival order)."""
        ready, failed = self.structured_output.pop_ready()
        for req in ready:
            self.scheduler.add_request(req)
        for req, error in failed:
            self._failed.append(EngineCoreOutput(request_id=req.request_id, seqs=[],
                                                 finished=True, error=error))

    def stop_seqs(self, request_id: str, indices: list[int]) -> None:
        self.scheduler.stop_seqs(request_id, indices)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do for one rank)."""
        stop = getattr(self.runner, "shutdown", None)
        if stop is not None:
            stop()

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished_requests() or self._inflight is not None
                or self.structured_output.num_waiting > 0 or bool(self._failed))

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[EngineCoreOutput]:
        """One iteration. With async scheduling the next step is scheduled and launched while
        the previous one still runs on the GPU: sequences that just sampled hold a PLACEHOLDER
        token, which the new step reads on the device; the host learns the tokens (stop checks,
        outputs) after the launch. Outputs therefore trail the launch by one step."""
        self._admit_compiled()
        outputs, self._failed = self._failed, []
        if not self.async_scheduling:
            if self.speculator is not None:
                self.speculator.propose(self.scheduler.running)
            sched_out = self.scheduler.schedule()
            if sched_out.is_empty and not sched_out.has_block_ops:
                return outputs
            result = self.runner.execute(sched_out)
            self._begin(sched_out)
            return outputs + self._update(sched_out, result, resolve=False)
        prev, self._inflight = self._inflight, None
        if prev is not None and not prev.overlappable:
            outputs += self._finish(prev)
            prev = None
        if self.speculator is not None:  # sequences still holding a placeholder draft nothing
            self.speculator.propose(self.scheduler.running)
        sched_out = self.scheduler.schedule()
        cur = None
        if not sched_out.is_empty or sched_out.has_block_ops:
            # inputs are built from the old state; sampling that reads the latest tokens on the
            # host waits for `prev` below, while this step's forward pass runs
            defer = prev is not None and self._sampling_reads_tokens(sched_out)
            cur = self.runner.launch(sched_out, prev, sample=not defer)
            self._begin(sched_out)
            cur.overlappable = self._add_placeholders(sched_out)
        if prev is not None:
            outputs += self._finish(prev)
        if cur is not None:
            # A deferred sampling (a grammar's mask) runs on the runner's sampling thread: its
            # mask fill overlaps returning these outputs and scheduling the next step.
            self.runner.sample(cur, background=True)
        self._inflight = cur
        return outputs

    def _finish(self, step: InFlight) -> list[EngineCoreOutput]:
        return self._update(step.sched, self.runner.finish(step), resolve=step.overlappable)

    def _overlappable(self, req: Request) -> bool:
        """Requests whose next step may be scheduled and its forward pass launched before the
        host knows their latest token.

        `min_tokens` needs only the count of output tokens (placeholders included), never their
        values, so it does not stop the overlap (clients such as benchmarks send min_tokens =
        max_tokens on every request). A grammar (the next mask) and penalties (the tokens seen)
        need the latest token, but only at sampling: such steps launch their forward pass, then
        sample once the previous step's tokens are known (`_sampling_reads_tokens`), where the
        runner allows it. A request that may draft (speculation, batch small enough) needs its
        tokens before proposing."""
        return (req.single_seq and req.beam_state is None
                and (not _reads_tokens(req) or self.runner.defers_sampling)
                and not (self.speculator is not None and self.speculator.drafting(req)))

    @staticmethod
    def _sampling_reads_tokens(out: SchedulerOutput) -> bool:
        """Whether some request sampled in `out` builds its sampling from its latest tokens on
        the host (a grammar's mask, penalties)."""
        return any(s.sample_seqs and _reads_tokens(s.request) for s in out.scheduled)

    def _add_placeholders(self, out: SchedulerOutput) -> bool:
        overlappable = self._overlappable
        seqs: list[Sequence] = []
        for s in out.scheduled:
            if s.sample_seqs:
                if not overlappable(s.request):
                    return False
                seqs += s.sample_seqs
        for seq in seqs:
            seq.append_placeholder()
        return True

    def _account(self, out: SchedulerOutput) -> None:
        """Per-step KV accounting: allocated vs used slots, logical vs physical blocks."""
        bm, running = self.block_manager, self.scheduler.running
        usage = None
        if not bm.enable_prefix_caching:
            # No sharing possible while every running request has one live sequence:
            # O(num_seqs) instead of a walk over every block.
            blocks = used = num_live = 0
            for r in running:
                for s in r.seqs:
                    if not s.is_finished:
                        num_live += 1
                        blocks += len(s.block_table)
                        used += s.num_computed_tokens
            if num_live == len(running):
                usage = {"logical_blocks": blocks, "physical_blocks": blocks,
                         "slots_allocated": blocks * bm.block_size, "slots_used": used}
        if usage is None:
            # Blocks may be shared: count them exactly.
            usage = bm.usage([s for r in running for s in r.live_seqs()])
        self.num_steps += 1
        self.kv_slots_allocated_sum += usage["slots_allocated"]
        self.kv_slots_used_sum += usage["slots_used"]
        self.logical_blocks_sum += usage["logical_blocks"]
        self.physical_blocks_sum += usage["physical_blocks"]
        self.peak_physical_blocks = max(self.peak_physical_blocks, bm.gpu.num_used)

    def _begin(self, out: SchedulerOutput) -> None:
        """Bookkeeping known once a step is launched: its tokens' KV is being computed."""
        self._account(out)
        register = (self.block_manager.register_computed
                    if self.block_manager.enable_prefix_caching else None)
        prompt_tokens = 0
        for s in out.scheduled:
            seq = s.seq
            computed = seq.num_computed_tokens
            prompt_len = s.request.prompt_len
            if computed < prompt_len:
                prompt_tokens += min(s.num_tokens, prompt_len - computed)
            seq.num_computed_tokens = computed + s.num_tokens
            if register is not None:
                register(seq)
        self.prompt_tokens_total += prompt_tokens

    def _update(self, out: SchedulerOutput, result: RunnerOutput,
                resolve: bool) -> list[EngineCoreOutput]:
        """Apply a finished step's samples. `resolve`: its tokens replace placeholders.

        Requests are handled in the order of their first scheduled sequence. A one-sequence
        request (not beam search) takes the fast path: it cannot fork, and its only sequence is
        the one that sampled.
        """
        sched = self.scheduler
        sampled = result.sampled
        if result.prompt_logprobs:
            plp = result.prompt_logprobs
            for s in out.scheduled:  # once per scheduled sequence, as each carries the chunk
                rid = s.request.request_id
                if rid in plp:
                    # A prompt recomputed after preemption (or a prefix-cache hit shorter than
                    # what was gathered) repeats positions already held: keep the first values.
                    have = len(s.request.prompt_logprobs)
                    first = result.prompt_logprobs_first.get(rid, have)
                    s.request.prompt_logprobs.extend(plp[rid][max(0, have - first):])
        # Requests with several sequences (or beams): all of their scheduled sequences together.
        groups: dict[str, list[ScheduledSeq]] = {}
        for s in out.scheduled:
            req = s.request
            if not req.single_seq or req.beam_state is not None:
                groups.setdefault(req.request_id, []).append(s)
        order: list[Request] = []  # every scheduled request once, in order
        finished: list[Request] = []  # requests in which a sequence finished this step
        num_sampled = 0
        for s in out.scheduled:
            req = s.request
            if req.single_seq and req.beam_state is None:
                order.append(req)
                if not s.sample_seqs:
                    continue  # a prefill chunk: nothing sampled
                seq = s.seq  # for one sequence, sample_seqs == [seq]
                if seq.num_draft:
                    num_sampled += self.speculator.apply(req, seq, result.verified[seq.seq_id],
                                                         sched)
                    if seq.is_finished:
                        finished.append(req)
                    continue
                if not _apply_sample(seq, sampled, resolve):
                    continue
                num_sampled += 1
                if sched.check_stop(req, seq):
                    finished.append(req)
                continue
            group = groups.pop(req.request_id, None)
            if group is None:
                continue  # handled with its first scheduled sequence
            order.append(req)
            finished.append(req)  # may have finished: retirement checks
            if req.beam_state is not None:
                req.beam_state.step(group, result, sched)
                continue
            num_sampled += self._apply_samples(req, group, result, resolve)
        self.generation_tokens_total += num_sampled
        if finished:
            sched.retire(finished)
            for req in finished:
                if req.is_finished and req.request_id in sched.requests:
                    # Preempted while this step was in flight, then finished by its result.
                    sched.abort_request(req.request_id)
        outputs = []
        for req in order:
            o = self._output(req)
            if o is not None:
                outputs.append(o)
        return outputs

    def _apply_samples(self, req: Request, group: list[ScheduledSeq],
                       result: RunnerOutput, resolve: bool) -> int:
        """Append (or resolve) the samples of a request with several sequences (a verified
        sequence's accepted tokens, stops checked as they are appended); forks siblings and
        checks stops. Returns the number of tokens applied."""
        sched = self.scheduler
        n = 0
        plain: list[Sequence] = []
        for s in group:
            for seq in s.sample_seqs:
                if seq.num_draft:
                    n += self.speculator.apply(req, seq, result.verified[seq.seq_id], sched)
                else:
                    n += _apply_sample(seq, result.sampled, resolve)
                    plain.append(seq)
        # Fork before stop checks: a leader that finishes at once must not take the prompt
        # blocks its siblings are about to share.
        if req.needs_fork():
            sched.fork_siblings(req)
        for seq in plain:
            if not seq.is_finished:
                sched.check_stop(req, seq)
        return n

    def _output(self, req: Request) -> Optional[EngineCoreOutput]:
        if req.beam_state is not None:
            return req.beam_state.output() if req.is_finished else None
        finished = req.is_finished
        if req.final_only and not finished:
            return None  # new tokens and logprobs stay counted in the sequences until then
        deltas = []
        for seq in req.seqs:
            n = seq.num_new_outputs
            report_finish = seq.is_finished and not seq.finish_reported
            if n == 0 and not report_finish:
                continue
            end = len(seq.token_ids) - seq.num_pending
            deltas.append(SeqDelta(
                index=seq.index,
                token_ids=seq.token_ids[end - n:end] if n else [],
                cumulative_logprob=seq.cumulative_logprob,
                logprobs=seq.new_logprobs or None,
                finish_reason=seq.status.finish_reason,
                stop_reason=seq.stop_reason,
            ))
            seq.num_new_outputs = 0
            if seq.new_logprobs:
                seq.new_logprobs = []
            seq.finish_reported = seq.is_finished
        new_plp = None
        if req.params.prompt_logprobs is not None:
            new_plp = req.prompt_logprobs[req.num_prompt_logprobs_reported:]
            req.num_prompt_logprobs_reported = len(req.prompt_logprobs)
        if not deltas and not new_plp:
            return None
        return EngineCoreOutput(request_id=req.request_id, seqs=deltas, finished=finished,
                                prompt_logprobs=new_plp or None,
                                num_cached_tokens=req.num_cached_tokens)

    # ---- introspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        bm, sched = self.block_manager, self.scheduler
        total = bm.gpu.num_blocks
        alloc = self.kv_slots_allocated_sum
        return {
            "num_running": len(sched.running),
            "num_waiting": len(sched.waiting),
            "num_swapped": len(sched.swapped),
            "num_preemptions": sched.num_preemptions,
            "num_free_blocks": bm.gpu.num_free,
            "num_total_blocks": total,
            "num_free_cpu_blocks": bm.cpu.num_free,
            "num_total_cpu_blocks": bm.cpu.num_blocks,
            "num_swapped_out_blocks": bm.cpu.num_used,
            "kv_cache_usage": (total - bm.gpu.num_free) / total if total else 0.0,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "prefix_cache_queries": bm.prefix_cache_queries,
            "prefix_cache_hits": bm.prefix_cache_hits,
            "prefix_cache_query_tokens": bm.prefix_cache_queries,
            "prefix_cache_hit_tokens": bm.prefix_cache_hits,
            "peak_blocks": self.peak_physical_blocks,
            "num_steps": self.num_steps,
            "kv_slots_allocated": alloc,
            "kv_slots_used": self.kv_slots_used_sum,
            "kv_waste_frac": 1.0 - self.kv_slots_used_sum / alloc if alloc else 0.0,
            "logical_blocks": self.logical_blocks_sum,
            "physical_blocks": self.physical_blocks_sum,
            "sharing_saved_frac": (1.0 - self.physical_blocks_sum / self.logical_blocks_sum
                                   if self.logical_blocks_sum else 0.0),
            "block_size": bm.block_size,
            "quantization": self.runner.quantization,
            "weight_bytes": self.runner.weight_bytes,
            "kv_cache_dtype": str(self.runner.kv_dtype).removeprefix("torch."),
            "bytes_per_block": self.runner.bytes_per_block,
            **(self.speculator.metrics.stats() if self.speculator is not None else {}),
        }


def _apply_sample(seq: Sequence, sampled: dict, resolve: bool) -> bool:
    """Give `seq` its token from this step (`resolve`: in place of its placeholder); False when
    it was stopped or aborted while the step was in flight."""
    if seq.is_finished:
        return False
    tok, lp, top = sampled[seq.seq_id]
    if resolve:
        seq.resolve_placeholder(tok, lp)
    else:
        seq.append_token(tok, lp)
    if top is not None:
        seq.new_logprobs.append(top)
    return True


def _reads_tokens(req: Request) -> bool:
    """The request's sampling reads its latest tokens on the host."""
    return req.grammar is not None or req.has_penalties
