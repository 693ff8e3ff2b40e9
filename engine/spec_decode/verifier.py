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
from engine.sampler import SamplingMetadata, apply_penalties, copy_to_host, sampling_probs
from engine.sequence import Request, Sequence
from engine.spec_decode.rejection_sampler import rejection_sample
from engine.transfer import to_device


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
        return self.launch(logits, seqs).result()

    def launch(self, logits: torch.Tensor,
               seqs: list[tuple[Request, Sequence]]) -> "PendingVerify":
        """`logits` [sum(d_i + 1), V]: for each (request, sequence) in order, the rows of its
        last real token and its d_i draft tokens (`seq.num_draft`). Queues the verification on
        the logits' device and starts copying its outcome to the host; `result()` waits."""
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
        greedy = [req.params.is_greedy for req, _ in seqs]
        # Sequence i's rows go to rows i * (k + 1) + j of the padded batch (one copy, none when
        # every sequence holds k drafts); its drafts, draft count and greedy flag travel to the
        # device as one row of one tensor.
        first_rows: list[int] = []
        dst: list[int] = []
        packed: list[int] = []
        for i, x in enumerate(drafts):
            d = len(x)
            first_rows.append(len(dst))
            dst.extend(range(i * (k + 1), i * (k + 1) + d + 1))
            packed += x
            packed += [0] * (k - d)
            packed += (d, greedy[i])
        if len(dst) == b * (k + 1):
            padded, src = probs.view(b, k + 1, v), None
        else:
            src = to_device(dst, torch.int64, device)
            padded = probs.new_zeros(b * (k + 1), v).index_copy_(0, src, probs).view(b, k + 1, v)
        cols = to_device(packed, torch.int64, device).view(b, k + 2)
        uniforms = torch.rand(b, k, device=device)
        noise = None
        if not all(greedy):
            noise = torch.empty(b, v, device=device).exponential_()
            seeded_rows, keys = [], []
            for i, (req, seq) in enumerate(seqs):
                if not greedy[i] and seq.generator is not None:
                    # Seeded: one key a step from the sequence's generator, whatever the batch
                    # holds; its stream's first v columns are the noise, the next k the uniforms.
                    seeded_rows.append(i)
                    keys.append(seeded_noise.draw_key(seq.generator))
            if seeded_rows:
                idx = torch.tensor(seeded_rows, dtype=torch.long, device=device)
                noise[idx] = seeded_noise.exponential(keys, v, device)
                uniforms[idx] = seeded_noise.uniform(keys, k, device, start=v).to(uniforms.dtype)
        tokens, accepted = rejection_sample(padded, cols[:, :k], cols[:, k], cols[:, k + 1].bool(),
                                            uniforms, noise)
        # The raw logprob of the token each row would emit (rows past a sequence's acceptance
        # go unread), then everything to the host in one copy.
        flat = tokens.view(-1)
        row_tokens = flat if src is None else flat.index_select(0, src)
        row_lps = raw_lp.gather(1, row_tokens.unsqueeze(1)).squeeze(1)
        host = torch.cat([flat.double(), accepted.double(), row_lps.double()])
        return PendingVerify(host, raw_lp, seqs, drafts, first_rows, k,
                             min(meta.max_num_logprobs, v))


class PendingVerify:
    """A verification queued on the device, its outcome being copied to pinned host memory:
    the engine returns the previous step's outputs meanwhile."""

    def __init__(self, host: torch.Tensor, raw_lp: torch.Tensor,
                 seqs: list[tuple[Request, Sequence]], drafts: list[list[int]],
                 first_rows: list[int], k: int, max_lp: int):
        self._event = None
        if host.is_cuda:
            host = copy_to_host(host, True)
            self._event = torch.cuda.Event()
            self._event.record()
        self._host, self._raw_lp = host, raw_lp
        self._seqs, self._drafts, self._first_rows = seqs, drafts, first_rows
        self._k, self._max_lp = k, max_lp

    def result(self) -> dict[int, Verified]:
        if self._event is not None:
            self._event.synchronize()
        host = self._host.tolist()
        seqs, k, raw_lp, v = self._seqs, self._k, self._raw_lp, self._raw_lp.shape[1]
        b = len(seqs)
        n_tok = b * (k + 1)
        accepted_l = host[n_tok:n_tok + b]
        lps_l = host[n_tok + b:]
        out: dict[int, Verified] = {}
        for i, (req, seq) in enumerate(seqs):
            a = int(accepted_l[i])
            toks = [int(t) for t in host[i * (k + 1):i * (k + 1) + a + 1]]
            r0 = self._first_rows[i]
            lps = lps_l[r0:r0 + a + 1]
            nlp = req.params.logprobs
            tops: list[Optional[dict[int, float]]] = [None] * (a + 1)
            if nlp is not None and self._max_lp >= 0:
                top = raw_lp[r0:r0 + a + 1].topk(min(nlp, v), dim=-1) if nlp > 0 else None
                top_ids = top.indices.tolist() if top is not None else None
                top_vals = top.values.tolist() if top is not None else None
                for j in range(a + 1):
                    entry = {toks[j]: lps[j]}
                    if top is not None:
                        for tid, val in zip(top_ids[j], top_vals[j]):
                            entry.setdefault(tid, val)
                    tops[j] = entry
            out[seq.seq_id] = Verified(list(zip(toks, lps, tops)), len(self._drafts[i]), a)
        return out
