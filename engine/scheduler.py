"""Iteration-level scheduler: one token budget per step, FCFS, preemption of whole requests.

Every step each running sequence is given `min(uncomputed tokens, remaining budget)` tokens: a
prefill chunk and a decode are the same thing (catch `num_computed_tokens` up with the tokens
held), so chunked prefill and mixed prefill/decode steps need no special case.

Queues hold requests in arrival order (`Request.order`). When the GPU pool cannot hold the next
step of a running request, the most recently arrived running request is preempted as a whole:
swapped to the CPU pool or freed for recompute. Swapped requests come back (FCFS) before any
waiting request is admitted; if one cannot come back while nothing runs, it falls back to
recompute so the queue never deadlocks.
"""
from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from engine.block_manager import BlockManager
from engine.config import SchedulerConfig
from engine.scheduler_output import ScheduledSeq, SchedulerOutput
from engine.sequence import Request, Sequence, SequenceStatus

_order = itertools.count()


@dataclass(frozen=True)
class PreemptionCost:
    """Estimates for `preemption_mode="auto"`: move bytes or recompute tokens, whichever is cheaper."""

    bytes_per_block: int
    swap_bytes_per_s: float
    flops_per_token: float
    flops_per_s: float

    def prefer_swap(self, num_blocks: int, num_tokens: int) -> bool:
        swap_s = 2 * num_blocks * self.bytes_per_block / self.swap_bytes_per_s  # out and back in
        recompute_s = num_tokens * self.flops_per_token / self.flops_per_s
        return swap_s < recompute_s


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 cost: Optional[PreemptionCost] = None):
        self.config = config
        self.bm = block_manager
        self.cost = cost
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # Blocks kept free when admitting new work, so admission does not at once force a
        # preemption of what is already running.
        self.watermark = int(0.01 * block_manager.gpu.num_blocks)

    # ---- queue management ------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        request.order = next(_order)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def num_running_seqs(self) -> int:
        n = 0
        for r in self.running:
            if r.single_seq:
                n += not r.seqs[0].is_finished
            else:
                n += len(r.live_seqs())
        return n

    def abort_request(self, request_id: str) -> Optional[Request]:
        """Finish every sequence of the request as aborted and free its blocks at once."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        for queue in (self.waiting, self.swapped):
            if req in queue:
                queue.remove(req)
        if req in self.running:
            self.running.remove(req)
        for seq in req.live_seqs():
            self.finish_seq(req, seq, SequenceStatus.FINISHED_ABORTED)
        self._retire(req)
        return req

    def finish_seq(self, req: Request, seq: Sequence, status: SequenceStatus) -> None:
        pool = self.bm.cpu if seq.status == SequenceStatus.SWAPPED else self.bm.gpu
        seq.drop_placeholders()
        seq.drop_drafts()
        seq.status = status
        self.bm.free_seq(seq, pool)

    def _retire(self, req: Request) -> None:
        """Drop a finished request from the scheduler's bookkeeping."""
        self.requests.pop(req.request_id, None)
        req.metrics.finished_time = time.time()

    @staticmethod
    def _insert_ordered(queue, req: Request) -> None:
        if not queue or queue[-1].order < req.order:
            queue.append(req)  # the common case: it arrived after everything queued
            return
        keys = [r.order for r in queue]
        idx = bisect.bisect(keys, req.order)
        queue.insert(idx, req)

    # ---- scheduling --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.num_preempted:
            budget = self._schedule_swapped(out, budget)
        if not self.swapped and not out.num_preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Running requests in arrival order, each as many tokens as the budget allows; when
        the GPU pool runs short, the most recently arrived running request is preempted."""
        bm = self.bm
        gpu = bm.gpu
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.single_seq:
                # `_plan` for one sequence (no siblings to fork): everything it holds, budget
                # permitting; it samples once the step catches up with its last token.
                seq = req.seqs[0]
                if seq.num_draft:
                    self._fit_drafts(seq, budget, gpu.num_free)
                computed, held = seq.num_computed_tokens, len(seq.token_ids)
                n = min(held - computed, budget)
                plan = ([ScheduledSeq(req, seq, n, [seq] if computed + n == held else [])]
                        if n > 0 and not seq.is_finished else [])
            else:
                plan = self._plan(req, budget)
            need = sum(bm.blocks_needed(s.seq, s.num_tokens) for s in plan)
            preempted_self = False
            while gpu.num_free < need:
                victim = running.pop()
                self._preempt(victim, out)
                if victim is req:
                    preempted_self = True
                    break
            if preempted_self:
                break
            budget -= self._commit(plan, out)
            i += 1
        return budget

    def _schedule_swapped(self, out: SchedulerOutput, budget: int) -> int:
        while self.swapped and budget > 0:
            req = self.swapped[0]
            if self.num_running_seqs() + len(req.live_seqs()) > self.config.max_num_seqs:
                break
            plan = self._plan(req, budget)  # token counts only: no block is touched yet
            if not self.bm.can_swap_in(req, {s.seq.seq_id: s.num_tokens for s in plan}):
                break
            self.swapped.popleft()
            out.blocks_to_swap_in.extend(self.bm.swap_in(req))
            for seq in req.live_seqs():
                seq.status = SequenceStatus.RUNNING
            self._insert_ordered(self.running, req)
            budget -= self._commit(plan, out)
        if self.swapped and not self.running and not out.scheduled:
            # Nothing runs, so nothing will free blocks: recompute instead of waiting forever.
            req = self.swapped.popleft()
            self._reset_for_recompute(req, self.bm.cpu)
            self._insert_ordered(self.waiting, req)
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        num_seqs = self.num_running_seqs()
        while self.waiting and budget > 0:
            req = self.waiting[0]
            if num_seqs + len(req.live_seqs()) > self.config.max_num_seqs:
                break
            leader = req.leader
            hit, limit = 0, 0
            if not leader.block_table:
                limit = req.prefix_match_limit()
                hit = self.bm.match_prefix(leader, limit)
            plan = self._plan(req, budget)
            need = sum(self.bm.blocks_needed(s.seq, s.num_tokens) for s in plan)
            if not plan or self.bm.num_free_gpu_blocks - need < self.watermark:
                if limit and self.bm.enable_prefix_caching:
                    self.bm.undo_prefix_match(leader, hit, limit)
                break
            self.waiting.popleft()
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = time.time()
                req.num_cached_tokens = hit
            for seq in req.live_seqs():
                seq.status = SequenceStatus.RUNNING
            num_seqs += len(req.live_seqs())
            self._insert_ordered(self.running, req)
            budget -= self._commit(plan, out)

    def _fit_drafts(self, seq: Sequence, budget: int, free_blocks: int) -> None:
        """Draft tokens are optional: those past the budget are dropped (not chunked), and all
        of them when their slots would need more than `free_blocks` (never preempt for them)."""
        computed, held = seq.num_computed_tokens, len(seq.token_ids)
        n = min(held - computed, budget)
        if computed + n < held:
            seq.drop_drafts(held - computed - n)
        if self.bm.blocks_needed(seq, len(seq.token_ids) - computed) > free_blocks:
            seq.drop_drafts()

    def _plan(self, req: Request, budget: int) -> list[ScheduledSeq]:
        """Tokens each live sequence of `req` runs this step within `budget`."""
        live = req.live_seqs()
        leader = live[0]
        # Siblings hold no blocks until the leader has computed the prompt; then they fork.
        unforked = [s for s in live[1:] if not s.block_table]
        plan: list[ScheduledSeq] = []
        free = self.bm.gpu.num_free  # what this plan's drafts may take
        for seq in live:
            if budget <= 0:
                break
            if seq in unforked:
                continue
            if seq.num_draft:
                self._fit_drafts(seq, budget, free)
            n = seq.num_uncomputed_tokens
            if unforked and seq is leader:
                n = min(n, req.prompt_len - seq.num_computed_tokens)
            n = min(n, budget)
            if n <= 0:
                continue
            sample: list[Sequence] = []
            if seq.num_computed_tokens + n == seq.num_tokens:
                sample = [seq]
                if seq is leader:
                    sample += [s for s in unforked if s.num_tokens == req.prompt_len]
            plan.append(ScheduledSeq(req, seq, n, sample))
            budget -= n
            free -= self.bm.blocks_needed(seq, n)
        return plan

    def _commit(self, plan: list[ScheduledSeq], out: SchedulerOutput) -> int:
        allocate = self.bm.allocate_slots
        scheduled = out.scheduled
        total = 0
        for s in plan:
            copies = allocate(s.seq, s.num_tokens)
            if copies:
                out.blocks_to_copy.extend(copies)
            scheduled.append(s)
            total += s.num_tokens
        out.num_batched_tokens += total  # invariant: the sum of num_tokens over out.scheduled
        return total

    # ---- preemption --------------------------------------------------------------------------
    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        live = req.live_seqs()
        for seq in live:
            seq.drop_drafts()  # they are proposed again once the request runs
        mode = self.config.preemption_mode
        if mode == "auto":
            blocks = self.bm.distinct_blocks(live)
            tokens = sum(s.num_computed_tokens for s in live)
            mode = "swap" if self.cost is None or self.cost.prefer_swap(blocks, tokens) else "recompute"
        if mode == "swap" and self.bm.can_swap_out(req):
            out.blocks_to_swap_out.extend(self.bm.swap_out(req))
            for seq in live:
                seq.status = SequenceStatus.SWAPPED
            self._insert_ordered(self.swapped, req)
        else:
            self._reset_for_recompute(req, self.bm.gpu)
            self._insert_ordered(self.waiting, req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        out.num_preempted += 1

    def _reset_for_recompute(self, req: Request, pool) -> None:
        for seq in req.live_seqs():
            self.bm.free_seq(seq, pool)
            seq.reset_for_recompute()
            seq.status = SequenceStatus.WAITING

    # ---- after the step ----------------------------------------------------------------------
    def fork_siblings(self, req: Request) -> None:
        """Siblings adopt the leader's prompt blocks once the prompt's KV is complete."""
        leader = req.leader
        for seq in req.live_seqs()[1:]:
            if not seq.block_table:
                self.bm.fork(leader, seq, req.prompt_len)
                seq.status = SequenceStatus.RUNNING

    def check_stop(self, req: Request, seq: Sequence) -> bool:
        """Token-level stop conditions; stop strings are the frontend's (see OutputProcessor).
        True when `seq` finished here."""
        p = req.params
        token_ids = seq.token_ids
        known = len(token_ids) - seq.num_pending  # tokens whose ids the host knows
        last = token_ids[known - 1]
        n_out = known - seq.prompt_len
        status = None
        if n_out >= p.min_tokens:
            if not p.ignore_eos and last == req.eos_token_id:
                status = SequenceStatus.FINISHED_STOPPED
            elif p.stop_token_ids and last in p.stop_token_ids:
                status = SequenceStatus.FINISHED_STOPPED
                seq.stop_reason = last
        if req.grammar is not None and req.grammar.advance(seq) and status is None:
            status = SequenceStatus.FINISHED_STOPPED  # the grammar is complete
        if status is None and ((p.max_tokens is not None and n_out >= p.max_tokens)
                               or known >= self.config.max_model_len):
            status = SequenceStatus.FINISHED_LENGTH
        if status is None:
            return False
        self.finish_seq(req, seq, status)
        return True

    def retire_finished(self) -> list[Request]:
        """Remove requests whose sequences have all finished from the running queue."""
        return self.retire(self.running)

    def retire(self, candidates: list[Request]) -> list[Request]:
        """Like `retire_finished`, but only `candidates` (requests in which a sequence finished
        since the last retirement) are looked at: O(running) once, only when one is done."""
        gone = {id(r) for r in candidates if r.is_finished}
        if not gone:
            return []
        # Only running requests retire here (one preempted while its step was in flight is
        # aborted by the engine core instead), in running order.
        done = [r for r in self.running if id(r) in gone]
        self.running = [r for r in self.running if id(r) not in gone]
        for r in done:
            self._retire(r)
        return done

    def stop_seqs(self, request_id: str, indices: list[int]) -> None:
        """The frontend saw a stop string in these sequences: finish them and free their blocks."""
        req = self.requests.get(request_id)
        if req is None:
            return
        for seq in req.seqs:
            if seq.index in indices and not seq.is_finished:
                self.finish_seq(req, seq, SequenceStatus.FINISHED_STOPPED)
        if req.is_finished:
            self.abort_request(request_id)
