"""Beam search over a request's sequences, with the semantics of HF transformers' `generate`.

A request with `use_beam_search=True` runs `width = best_of` sequences, one per live beam. Each
engine step computes one new token per beam; the runner reports, for every beam whose tokens are
all computed, the top `2 * width` tokens of its next-token distribution
(`RunnerOutput.beam_candidates`). Once every live beam has reported for the current length, one
beam step runs, exactly as transformers does it (`generate(num_beams=width, do_sample=False)`):

1. candidates are the top `2 * width` of `beam score + log_softmax` over all live beams (at the
   first step only the first beam: all beams hold the same prompt);
2. a candidate ranked among the top `width` that ends the beam (EOS or a stop token, or any token
   when the maximum length is reached) becomes a finished hypothesis scored
   `sum_logprobs / generated_len ** length_penalty`; the `width` best hypotheses are kept;
3. the `width` best candidates that do not end become the next live beams;
4. the search stops at the maximum length, or once `width` hypotheses exist and either
   `early_stopping is True` or the best live beam can no longer beat the worst hypothesis
   (transformers' heuristic, including its "never" variant).

Scores are accumulated in fp32, as transformers does, so near-ties break the same way.

Beams live in the request's `Sequence` objects, which keep their identity (seq ids, block
tables). Invariants between steps: every live beam's tokens are the prompt plus its outputs, all
of equal length; `seq.cumulative_logprob` is the beam's fp32 running score. A parent that keeps a
child continues in its own sequence; a further child takes over the sequence of a dropped beam,
whose blocks are released and replaced by a fork of the parent's (copy-on-write makes the shared
partial block private on the first write).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from engine.outputs import EngineCoreOutput, SeqDelta
from engine.sequence import Request, Sequence, SequenceStatus

if TYPE_CHECKING:  # imported for type hints only: the scheduler imports the sequence module too
    from engine.model_runner import RunnerOutput
    from engine.scheduler import Scheduler
    from engine.scheduler_output import ScheduledSeq


@dataclass
class Hypothesis:
    """A finished beam: its output tokens, raw summed logprob and length-penalised score."""

    token_ids: list[int]
    logprob: float
    score: float
    finish_reason: str


@dataclass
class _Candidate:
    parent: Sequence
    token_id: int
    score: float  # fp32 running score: parent's score + logprob of token_id
    ends: bool  # the beam would finish with this token


class BeamSearchState:
    """Beam search bookkeeping of one request: pending candidates, hypotheses, completion."""

    def __init__(self, request: Request):
        p = request.params
        self.request = request
        self.width = len(request.seqs)
        self.length_penalty = float(p.length_penalty)
        self.early_stopping = p.early_stopping
        # Tokens that end a beam; with ignore_eos EOS is an ordinary token.
        self.terminators = set(p.stop_token_ids or [])
        if not p.ignore_eos and request.eos_token_id is not None:
            self.terminators.add(request.eos_token_id)
        # Live beams in rank order (best first): transformers' beam index, used to break ties
        # and to pick "the first beam" at step one.
        self.order: list[Sequence] = list(request.seqs)
        # seq_id -> (token ids, logprobs) reported for the beams' current length.
        self.pending: dict[int, tuple[list[int], list[float]]] = {}
        self.hypotheses: list[Hypothesis] = []  # sorted best first, at most `width`
        self.done = False

    # ---- limits ------------------------------------------------------------------------------
    def max_new_tokens(self, scheduler: Scheduler) -> int:
        """Generated length at which every beam stops (max_tokens and max_model_len)."""
        req = self.request
        limit = scheduler.config.max_model_len - req.prompt_len
        if req.params.max_tokens is not None:
            limit = min(limit, req.params.max_tokens)
        return max(1, limit)

    # ---- the step ----------------------------------------------------------------------------
    def step(self, scheduled: list[ScheduledSeq], result: RunnerOutput, scheduler: Scheduler) -> None:
        """Collect this engine step's candidates; run a beam step once every live beam has them."""
        if self.done:
            return
        req = self.request
        if req.needs_fork():
            # After a recompute preemption the leader recomputed the prompt alone: the other
            # beams re-adopt its prompt blocks, then recompute their own outputs.
            scheduler.fork_siblings(req)
        for s in scheduled:
            for seq in s.sample_seqs:
                if seq.seq_id in result.beam_candidates:
                    self.pending[seq.seq_id] = result.beam_candidates[seq.seq_id]
        live = [s for s in self.order if not s.is_finished]
        first = live[0].num_output_tokens == 0
        reporters = live[:1] if first else live
        if not all(s.seq_id in self.pending for s in reporters):
            return  # some beam is still catching up (token budget, or recompute after preemption)
        self._beam_step(reporters, scheduler)
        self.pending.clear()

    def _candidates(self, beams: list[Sequence], gen_len: int, final: bool) -> list[_Candidate]:
        """The top 2*width continuations over `beams`, best first (fp32 scores)."""
        p = self.request.params
        ban = self.terminators if gen_len < p.min_tokens else set()
        rows: list[tuple[float, int, int, int]] = []  # (score, beam rank, position, token)
        for rank, seq in enumerate(beams):
            ids, lps = self.pending[seq.seq_id]
            base = torch.tensor(seq.cumulative_logprob, dtype=torch.float32)
            scores = (torch.tensor(lps, dtype=torch.float32) + base).tolist()
            rows.extend((sc, rank, pos, tok) for pos, (tok, sc) in enumerate(zip(ids, scores))
                        if tok not in ban)
        # Descending score; ties go to the lower beam rank, then the better-ranked token, like
        # topk over transformers' flattened (beam, vocab) scores.
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        return [_Candidate(beams[rank], tok, sc, final or tok in self.terminators)
                for sc, rank, _, tok in rows[:2 * self.width]]

    def _beam_step(self, beams: list[Sequence], scheduler: Scheduler) -> None:
        gen_len = beams[0].num_output_tokens
        new_len = gen_len + 1
        max_new = self.max_new_tokens(scheduler)
        final = new_len >= max_new
        cands = self._candidates(beams, gen_len, final)

        # Hypotheses: only candidates ranked within the top `width` may finish.
        divisor = float(new_len) ** self.length_penalty
        for c in cands[:self.width]:
            if c.ends:
                score = (torch.tensor(c.score, dtype=torch.float32) / divisor).item()
                reason = "length" if c.token_id not in self.terminators else "stop"
                self._add_hypothesis(Hypothesis(c.parent.output_token_ids + [c.token_id],
                                                c.score, score, reason))
        running = [c for c in cands if not c.ends][:self.width]
        if final or not running:
            self._finish(scheduler)
            return
        self._reassign(running, scheduler)
        if self._search_is_done(running[0].score, new_len, max_new):
            self._finish(scheduler)

    def _add_hypothesis(self, hyp: Hypothesis) -> None:
        # Stable: an equal score never displaces an earlier hypothesis.
        idx = len(self.hypotheses)
        while idx > 0 and self.hypotheses[idx - 1].score < hyp.score:
            idx -= 1
        self.hypotheses.insert(idx, hyp)
        del self.hypotheses[self.width:]

    def _search_is_done(self, best_running: float, new_len: int, max_new: int) -> bool:
        """transformers' stopping rule, evaluated after the beams grew to `new_len` tokens."""
        if len(self.hypotheses) < self.width:
            return False
        if self.early_stopping is True:
            return True
        length = max_new if (self.early_stopping == "never" and self.length_penalty > 0) else new_len
        best = (torch.tensor(best_running, dtype=torch.float32)
                / (float(length) ** self.length_penalty)).item()
        return best <= self.hypotheses[-1].score

    def _reassign(self, running: list[_Candidate], scheduler: Scheduler) -> None:
        """Map the new beams onto sequence objects: forks first, then appends."""
        bm = scheduler.bm
        kept: set[int] = set()
        extra: list[_Candidate] = []
        owner: list[tuple[Sequence, _Candidate]] = []
        for c in running:
            if c.parent.seq_id in kept:
                extra.append(c)
            else:
                kept.add(c.parent.seq_id)
                owner.append((c.parent, c))
        free_seqs = [s for s in self.order if not s.is_finished and s.seq_id not in kept]
        assert len(free_seqs) == len(extra), "beam count must stay constant"
        # All parents are forked before any of them grows: children copy the parent's state.
        for seq, c in zip(free_seqs, extra):
            parent = c.parent
            bm.fork(parent, seq)  # frees seq's old blocks, shares the parent's computed blocks
            seq.token_ids = list(parent.token_ids)
            seq.token_array = None  # its penalty history is the parent's now
            seq.num_new_outputs = parent.num_new_outputs
            seq.status = parent.status
            owner.append((seq, c))
        for seq, c in owner:
            seq.append_token(c.token_id, 0.0)
            seq.cumulative_logprob = c.score
        rank = {id(c): i for i, c in enumerate(running)}
        self.order = [seq for seq, c in sorted(owner, key=lambda sc: rank[id(sc[1])])]

    def _finish(self, scheduler: Scheduler) -> None:
        """The search is over: free every beam so the scheduler retires the request."""
        self.done = True
        for seq in self.request.live_seqs():
            scheduler.finish_seq(self.request, seq, SequenceStatus.FINISHED_STOPPED)

    # ---- results -----------------------------------------------------------------------------
    def output(self) -> Optional[EngineCoreOutput]:
        """The n best hypotheses, each replacing its choice's whole output."""
        req = self.request
        if not self.done:
            # Finished without a completed search (aborted): report nothing.
            return EngineCoreOutput(request_id=req.request_id, seqs=[], finished=True)
        seqs = [SeqDelta(index=i, token_ids=list(h.token_ids), cumulative_logprob=h.logprob,
                         finish_reason=h.finish_reason, replace=True)
                for i, h in enumerate(self.hypotheses[:req.params.n])]
        plp = list(req.prompt_logprobs) if req.params.prompt_logprobs is not None else None
        return EngineCoreOutput(request_id=req.request_id, seqs=seqs, finished=True,
                                prompt_logprobs=plp, num_cached_tokens=req.num_cached_tokens)
