"""Verify step: the target's per-position logits of verify chunks -> accepted tokens.

Each verify row's logits are processed exactly as the sampler would have processed them had the
target decoded that position alone (logit bias, min_tokens, penalties over the history up to
that position, temperature, top-k, top-p, min-p), then `rejection_sample` decides. Reported
logprobs are the target's raw ones, like the sampler's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from engine import seeded_noise
from engine.sampler import SamplingMetadata, apply_penalties, sampling_probs
from engine.sequence import Request, Sequence
from engine.spec_decode.rejection_sampler import rejection_sample


class _SeqAt:
    """The view of a sequence the sampler would have had at one verify position: its tokens up
    to (not including) that position (copied only if asked for: penalties read them)."""

    __slots__ = ("_seq", "_end", "prompt_len", "generator")

    def __init__(self, seq: Sequence, end: int):
        self._seq = seq
        self._end = end
        self.prompt_len = seq.prompt_len
        self.generator = None  # randomness is drawn by the verifier

    @property
    def token_ids(self) -> list[int]:
        return self._seq.token_ids[:self._end]

    @property
    def num_output_tokens(self) -> int:
        return self._end - self.prompt_len

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]


@dataclass
class Verified:
    """One sequence's outcome: the emitted (token, raw logprob, top logprobs or None) in order
    (accepted drafts then the recovered/bonus token), and how many drafts it verified."""

    samples: list[tuple[int, float, Optional[dict[int, float]]]]
    num_draft: int
    num_accepted: int


class Verifier:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, logits: torch.Tensor,
                 seqs: list[tuple[Request, Sequence]]) -> dict[int, Verified]:
        """`logits` [sum(d_i + 1), V]: for each (request, sequence) in order, the rows of its
        last real token and its d_i draft tokens (`seq.num_draft`)."""
        v = self.vocab_size
        device = logits.device
        rows: list[tuple[Request, _SeqAt]] = []
        drafts: list[list[int]] = []
        for req, seq in seqs:
            d = seq.num_draft
            real = len(seq.token_ids) - d
            drafts.append(seq.token_ids[real:])
            rows += [(req, _SeqAt(seq, real + j)) for j in range(d + 1)]
        assert logits.shape[0] == len(rows), (logits.shape, len(rows))
        meta = SamplingMetadata.from_rows(rows, v, device)
        logits = logits.float()
        raw_lp = torch.log_softmax(logits, dim=-1)
        processed = apply_penalties(logits.clone(), meta) if meta.needs_processing else logits
        probs = processed if meta.all_greedy else torch.where(
            meta.greedy.unsqueeze(1), processed, sampling_probs(processed, meta, normalize=True))

        b, k = len(seqs), max(len(x) for x in drafts)
        padded = torch.zeros(b, k + 1, v, dtype=probs.dtype, device=device)
        draft_ids = torch.zeros(b, k, dtype=torch.long)
        uniforms = torch.rand(b, k, device=device)
        noise = torch.empty(b, v, device=device).exponential_()
        first = 0
        first_rows = []
        greedy = []
        seeded_rows, keys = [], []
        for i, ((req, seq), x) in enumerate(zip(seqs, drafts)):
            d = len(x)
            padded[i, :d + 1] = probs[first:first + d + 1]
            draft_ids[i, :d] = torch.tensor(x, dtype=torch.long)
            g = req.params.is_greedy
            greedy.append(g)
            if not g and seq.generator is not None:
                # Seeded: one key a step from the sequence's generator, whatever the batch
                # holds; its stream's first v columns are the noise, the next k the uniforms.
                seeded_rows.append(i)
                keys.append(seeded_noise.draw_key(seq.generator))
            first_rows.append(first)
            first += d + 1
        if seeded_rows:
            idx = torch.tensor(seeded_rows, dtype=torch.long, device=device)
            noise[idx] = seeded_noise.exponential(keys, v, device)
            uniforms[idx] = seeded_noise.uniform(keys, k, device, start=v).to(uniforms.dtype)
        num_draft = torch.tensor([len(x) for x in drafts], dtype=torch.long, device=device)
        tokens, accepted = rejection_sample(
            padded, draft_ids.to(device), num_draft,
            torch.tensor(greedy, dtype=torch.bool, device=device), uniforms, noise)
        tokens_l, accepted_l = tokens.tolist(), accepted.tolist()

        out: dict[int, Verified] = {}
        max_lp = min(meta.max_num_logprobs, v)
        for i, (req, seq) in enumerate(seqs):
            a = accepted_l[i]
            toks = tokens_l[i][:a + 1]
            r0 = first_rows[i]
            idx = torch.arange(r0, r0 + a + 1, device=device)
            lps = raw_lp[idx].gather(1, torch.tensor(toks, device=device).unsqueeze(1))
            lps = lps.squeeze(1).tolist()
            nlp = req.params.logprobs
            tops: list[Optional[dict[int, float]]] = [None] * (a + 1)
            if nlp is not None and max_lp >= 0:
                top = raw_lp[idx].topk(min(nlp, v), dim=-1) if nlp > 0 else None
                for j in range(a + 1):
                    entry = {toks[j]: lps[j]}
                    if top is not None:
                        for tid, val in zip(top.indices[j].tolist(), top.values[j].tolist()):
                            entry.setdefault(tid, val)
                    tops[j] = entry
            out[seq.seq_id] = Verified(list(zip(toks, lps, tops)), len(drafts[i]), a)
        return out
