"""What the engine core sees of speculative decoding: propose before a step, apply after it.

Before scheduling, `propose` appends draft tokens to each decoding sequence (as
`Sequence.num_draft` trailing tokens). The scheduler needs no branch for them: the sequence
simply holds more uncomputed tokens, so its next chunk is the k+1-token verify (last real token
and drafts), counted in the token budget and given KV slots like any chunk; drafts that do not
fit the budget are dropped. The runner hands the chunk's per-position logits to the `Verifier`,
and `apply` keeps the accepted tokens, rolls `num_computed_tokens` back to the KV that is valid
and frees the blocks only rejected drafts used.
"""
from __future__ import annotations

from engine.config import EngineConfig
from engine.sequence import Request, Sequence, SequenceStatus
from engine.spec_decode.config import SpeculativeConfig
from engine.spec_decode.metrics import SpecDecodeMetrics
from engine.spec_decode.proposer import Proposer, speculates
from engine.spec_decode.verifier import Verified


def build_proposer(config: EngineConfig, runner) -> Proposer:
    """The configured proposer; `runner` is the target's ModelRunner."""
    spec: SpeculativeConfig = config.speculative
    if spec.method == "ngram":
        from engine.spec_decode.ngram import NgramProposer
        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    if spec.method == "draft_model":
        from engine.spec_decode.draft_model import DraftModelProposer
        return DraftModelProposer(config, runner.vocab_size, runner.num_gpu_blocks)
    if spec.method == "eagle3":
        from engine.spec_decode.eagle3 import Eagle3Proposer
        return Eagle3Proposer(config, runner)
    raise ValueError(f"speculative_config.method: {spec.method!r} is not implemented")


class Speculator:
    def __init__(self, config: EngineConfig, runner):
        self.k = config.speculative.num_speculative_tokens
        self.disable_by_batch_size = config.speculative.disable_by_batch_size
        self.max_model_len = config.scheduler.max_model_len
        self.proposer = build_proposer(config, runner)
        self.metrics = SpecDecodeMetrics(self.k)
        self.active = True  # the last `propose` drafted (the batch was small enough)

    eligible = staticmethod(speculates)

    def propose(self, running: list[Request]) -> None:
        seqs: list[Sequence] = []
        limits: list[int] = []
        live: set[int] = set()
        for req in running:
            if not self.eligible(req):
                continue
            for seq in req.seqs:
                if seq.is_finished or seq.status != SequenceStatus.RUNNING:
                    continue
                live.add(seq.seq_id)
                seq.drop_drafts()  # stale ones from a step that did not schedule this sequence
                n = len(seq.token_ids)
                if seq.num_computed_tokens != n - 1 or seq.num_pending or not seq.block_table:
                    continue  # still prefilling (or a sibling not yet forked)
                # Drafts past max_tokens or max_model_len could never be emitted.
                limit = min(self.k, self.max_model_len - n)
                max_tokens = req.params.max_tokens
                if max_tokens is not None:
                    limit = min(limit, max_tokens - seq.num_output_tokens - 1)
                if limit > 0:
                    seqs.append(seq)
                    limits.append(limit)
        self.proposer.release(live)
        self.active = (self.disable_by_batch_size is None
                       or len(live) <= self.disable_by_batch_size)
        if not seqs or not self.active:
            return  # nothing to draft for, or a batch large enough to decode plainly
        for seq, draft in zip(seqs, self.proposer.propose(seqs, limits)):
            if draft:
                seq.add_drafts(draft)

    def drafting(self, req: Request) -> bool:
        """Whether `req`'s next step may carry drafts. Its tokens must then reach the host
        before that step is scheduled (proposals read them), so with async scheduling its
        steps do not overlap; in batches too large to draft for, they do."""
        return self.active and self.eligible(req)

    def apply(self, req: Request, seq: Sequence, verified: Verified, scheduler) -> int:
        """Replace `seq`'s drafts by the verified tokens, stopping where a stop condition hits;
        returns the number of tokens appended."""
        self.metrics.record(verified.num_draft, verified.num_accepted)
        seq.drop_drafts()
        computed = len(seq.token_ids) + verified.num_accepted  # last real token + accepted drafts
        n = 0
        for tok, lp, top in verified.samples:
            seq.append_token(tok, lp)
            if top is not None:
                seq.new_logprobs.append(top)
            n += 1
            if scheduler.check_stop(req, seq):
                return n  # finished: its blocks are already freed
        seq.num_computed_tokens = computed
        scheduler.bm.trim_to_computed(seq)
        return n
