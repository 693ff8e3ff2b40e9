"""EAGLE-3 proposer: a one-layer draft head that reads the target's auxiliary hidden states.

The head (engine/models/llama_eagle3.py) runs in its own one-layer paged KV pool with its own
`BlockManager`. Per target sequence it keeps a `_State`:
- `shadow`, the head's sequence: head position q is target position `base + q`, and its token is
  the target's token at `base + q + 1` (at position p the head reads token p + 1 with the
  target's hidden state of p, and predicts token p + 2). `shadow.num_computed_tokens` counts the
  positions fed with *target* hidden states; positions computed while drafting (fed the head's
  own hidden states) are scratch, rolled back after every proposal.
- `h`: fused target hidden states (`fc` of the three auxiliary streams) of target positions
  `[h_start, h_start + len(h))` not fed yet, plus the last fed one (re-fed when a sequence is
  proposed for again without new tokens, its output being the first draft).

After every target forward (`observe`, a model-runner forward observer) the rows of speculating
sequences are fused and appended to `h`. Positions whose next token is already final (prefill
chunks, plain decodes) are fed to the head at once, so a prompt never waits in `h` and a head
forward is never larger than the target's step. Verify chunks are only buffered: `propose`
knows which of their positions held (the target's computed count), feeds those and drafts k
tokens greedily, all sequences together, one head step per token.

A missing hidden state (prefix-cache hit, state released while the sequence was preempted, a
full head pool) restarts the head's context at the first position it has: rotary attention is
relative, so drafts then see a shorter context. Proposals only cost speed when wrong: outputs
are the verifier's.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.layers.attention import bind_kv_caches
from engine.model_inputs import ModelInputs, build_model_inputs
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledSeq, SchedulerOutput
from engine.sequence import Request, Sequence, SequenceStatus
from engine.spec_decode.proposer import Proposer, speculates
from engine.transfer import to_device

logger = logging.getLogger(__name__)


class _State:
    """One target sequence's head context (see the module docstring)."""

    __slots__ = ("req", "shadow", "base", "h_start", "h")

    def __init__(self, req: Request):
        self.req = req
        self.shadow: Sequence = req.seqs[0]
        self.base = 0
        self.h_start = 0
        self.h: Optional[torch.Tensor] = None

    @property
    def fed_end(self) -> int:
        """First target position the head holds no KV for."""
        return self.base + self.shadow.num_computed_tokens

    def append(self, start: int, rows: torch.Tensor) -> None:
        """Hidden states of target positions [start, start + len(rows)); they replace any held
        from `start` on (the target recomputed those positions)."""
        if self.h is not None and self.h_start <= start <= self.h_start + len(self.h):
            self.h = torch.cat([self.h[:start - self.h_start], rows])
        else:
            self.h_start, self.h = start, rows

    def keep_from(self, pos: int, end: Optional[int] = None) -> None:
        """Drop held hidden states before `pos` (and from `end` on); copies the rest so the
        step's big tensor is not kept alive by a view."""
        a = self.h_start
        lo = max(pos - a, 0)
        hi = len(self.h) if end is None else max(min(end - a, len(self.h)), lo)
        self.h = self.h[lo:hi].clone() if hi > lo else None
        self.h_start = a + lo


class Eagle3Proposer(Proposer):
    def __init__(self, config: EngineConfig, runner):
        from engine.spec_decode.eagle3_loader import load_eagle3_head

        self.runner = runner
        self.device = runner.device
        self.block_size = config.cache.block_size
        self.head, aux_ids = load_eagle3_head(config, runner)
        runner.model.set_aux_hidden_layers(aux_ids)
        if runner.graphs is not None:  # captured graphs would not return the auxiliary layers
            raise RuntimeError("eagle3: the target's CUDA graphs were captured before its "
                               "auxiliary hidden-state layers were set")
        attn = self.head.midlayer.self_attn.attn
        # The head's pool: as many blocks as the target's, plus room for every sequence's
        # k - 1 scratch draft positions.
        k = config.speculative.num_speculative_tokens
        num_blocks = (runner.num_gpu_blocks
                      + config.scheduler.max_num_seqs * -(-k // self.block_size))
        shape = (num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        self.kv_cache = (torch.empty(shape, dtype=runner.dtype, device=self.device),
                         torch.empty(shape, dtype=runner.dtype, device=self.device))
        bind_kv_caches(self.head, [self.kv_cache], runner.backend)
        self.bm = BlockManager(num_blocks, 0, self.block_size)
        self._params = SamplingParams(temperature=0.0, max_tokens=None)
        self._states: dict[int, _State] = {}
        runner.forward_observers.append(self.observe)
        logger.info("EAGLE-3 head %s: auxiliary layers %s, draft vocabulary %d, %d KV blocks",
                    config.speculative.model, aux_ids, self.head.draft_vocab_size, num_blocks)

    # ---- per-sequence state --------------------------------------------------------------
    def release(self, live_seq_ids: set[int]) -> None:
        for sid in [s for s in self._states if s not in live_seq_ids]:
            self.bm.free_seq(self._states.pop(sid).shadow)

    def _state(self, seq_id: int) -> _State:
        st = self._states.get(seq_id)
        if st is None:
            req = Request(f"eagle3-{seq_id}", [], self._params, [seq_id], None)
            req.seqs[0].status = SequenceStatus.RUNNING
            st = self._states[seq_id] = _State(req)
        return st

    def _drop_context(self, st: _State) -> None:
        """Forget the head's KV of a sequence (its pool is full); keep the last hidden state."""
        self.bm.free_seq(st.shadow)
        st.shadow.num_computed_tokens = 0
        st.shadow.token_ids.clear()
        if st.h is not None:
            st.keep_from(st.h_start + len(st.h) - 1)

    def _plan(self, st: _State, tokens: list[int], limit: int,
              rerun_last: bool) -> Optional[tuple[int, int]]:
        """Prepare to feed target positions [f, end), end <= limit, from `st.h`; returns
        (f, end) or None. `rerun_last`: feed at least the position before `end`, whose output
        is the first draft. Rolls the shadow back to f (restarting it where `h` starts when the
        hidden states between its end and f are missing)."""
        if st.h is None:
            return None
        a = st.h_start
        end = min(limit, a + len(st.h))
        f = st.fed_end if st.shadow.num_computed_tokens else a
        if rerun_last:
            f = min(f, end - 1)
        if f < a or f < st.base:  # no hidden states for the positions before f
            self.bm.free_seq(st.shadow)
            st.shadow.num_computed_tokens = 0
            f = a
        if f >= end:
            return None
        shadow = st.shadow
        if not shadow.num_computed_tokens:
            st.base = f
        keep = f - st.base
        del shadow.token_ids[keep:]
        shadow.token_ids.extend(tokens[f + 1:end + 1])
        shadow.num_computed_tokens = keep
        self.bm.trim_to_computed(shadow)
        return f, end

    # ---- head forwards -------------------------------------------------------------------
    def _forward(self, batch: list[tuple[_State, int]], hidden,
                 input_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `n` positions of each (state, n); `hidden` is a list of each one's [n, H] rows,
        or a tensor in row order. Returns the draft token and the pre-norm output of each one's
        last row."""
        out = SchedulerOutput()
        for st, n in batch:
            out.blocks_to_copy.extend(self.bm.allocate_slots(st.shadow, n))
            out.scheduled.append(ScheduledSeq(st.req, st.shadow, n, [st.shadow]))
            out.num_batched_tokens += n
        assert not out.blocks_to_copy  # shadows never share blocks
        inputs: ModelInputs = build_model_inputs(out, self.block_size, self.device)
        if isinstance(hidden, list):
            order = sorted(range(len(batch)), key=inputs.first_rows.__getitem__)
            hidden = torch.cat([hidden[i] for i in order]) if len(order) > 1 else hidden[0]
        ids = inputs.input_ids if input_ids is None else input_ids
        normed, prenorm = self.head(ids, inputs.positions, hidden, inputs.meta)
        for st, n in batch:
            st.shadow.num_computed_tokens += n
        last = to_device(inputs.sample_rows, torch.int64, self.device)
        return self.head.draft_tokens(normed.index_select(0, last)), prenorm.index_select(0, last)

    @torch.inference_mode()
    def observe(self, sched: SchedulerOutput, inputs: ModelInputs, hidden: torch.Tensor,
                aux: Optional[torch.Tensor]) -> None:
        """Forward observer: keep the fused hidden states of speculating sequences and feed the
        head the positions whose next token is final."""
        if aux is None:
            return
        rows: list[int] = []
        spans: list[tuple[Sequence, int, int]] = []
        for i, s in enumerate(sched.scheduled):
            if not speculates(s.request):
                continue
            seq, start, n = s.seq, s.seq.num_computed_tokens, s.num_tokens
            st = self._states.get(seq.seq_id)
            # Positions the head already holds need no hidden state (a recomputed prompt).
            skip = 0
            if st is not None and st.shadow.num_computed_tokens:
                skip = min(max(st.fed_end - 1 - start, 0), n)
            if skip == n:
                continue
            first = inputs.first_rows[i] + skip
            rows.extend(range(first, first + n - skip))
            spans.append((seq, start + skip, n - skip))
        if not spans:
            return
        fused = self.head.fuse(aux.index_select(0, to_device(rows, torch.int64, self.device)))
        batch, pieces = [], []
        free = self.bm.num_free_gpu_blocks
        off = 0
        for seq, start, n in spans:
            st = self._state(seq.seq_id)
            st.append(start, fused[off:off + n])
            off += n
            if seq.num_draft:
                continue  # a verify chunk: which positions hold is known at propose
            # Positions before `limit` are computed and followed by a known token.
            plan = self._plan(st, seq.token_ids, min(start + n, len(seq.token_ids) - 1), False)
            if plan is None:
                continue
            free = self._admit(st, plan, 0, free, batch, pieces)[1]
        if batch:
            self._forward(batch, pieces)
        for st, n in batch:
            st.keep_from(st.fed_end - 1)

    def _admit(self, st: _State, plan: tuple[int, int], scratch: int, free: int,
               batch: list, pieces: list) -> tuple[bool, int]:
        """Queue feeding positions [f, end) of `plan` (plus `scratch` draft positions) if the
        head's pool has the blocks, else drop the sequence's head context. (admitted, free)."""
        f, end = plan
        need = self.bm.blocks_needed(st.shadow, end - f + scratch)
        if need > free:
            self._drop_context(st)
            return False, free
        batch.append((st, end - f))
        pieces.append(st.h[f - st.h_start:end - st.h_start])
        return True, free - need

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        batch: list[tuple[_State, int]] = []
        pieces: list[torch.Tensor] = []
        index: list[int] = []  # position in `seqs` of each batch entry
        free = self.bm.num_free_gpu_blocks
        for i, (seq, k) in enumerate(zip(seqs, max_tokens)):
            st = self._states.get(seq.seq_id)
            if st is None or st.h is None or k <= 0:
                continue
            c = seq.num_computed_tokens  # positions past c were rejected drafts
            st.keep_from(st.h_start, c)
            plan = self._plan(st, seq.token_ids, c, True)
            if plan is None:
                continue
            admitted, free = self._admit(st, plan, k - 1, free, batch, pieces)
            if admitted:
                index.append(i)
        if not batch:
            return drafts
        fed = [st.shadow.num_computed_tokens + n for st, n in batch]
        tokens, hidden = self._forward(batch, pieces)
        steps = [(list(range(len(batch))), tokens)]
        active = list(range(len(batch)))
        for step in range(1, max(max_tokens[i] for i in index)):
            keep = [j for j, b in enumerate(active) if max_tokens[index[b]] > step]
            if not keep:
                break
            sel = to_device(keep, torch.int64, self.device)
            active = [active[j] for j in keep]
            for b in active:
                batch[b][0].shadow.token_ids.append(0)  # its input comes from `tokens`
            tokens, hidden = self._forward([(batch[b][0], 1) for b in active],
                                           hidden.index_select(0, sel), tokens.index_select(0, sel))
            steps.append((active, tokens))
        flat = torch.cat([t for _, t in steps]).tolist()
        pos = 0
        for members, _ in steps:
            for b in members:
                drafts[index[b]].append(flat[pos])
                pos += 1
        for (st, _), n_fed in zip(batch, fed):
            # Scratch draft positions go; the head keeps what target hidden states fed.
            st.shadow.num_computed_tokens = n_fed
            del st.shadow.token_ids[n_fed:]
            self.bm.trim_to_computed(st.shadow)
            st.keep_from(st.fed_end - 1)
        return drafts
