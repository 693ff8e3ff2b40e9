"""Draft-model proposer: a smaller model with the target's tokenizer drafts k tokens greedily.

The draft runs in its own `ModelRunner` with its own paged KV pool and `BlockManager` (a second
pool, as many blocks as the target's). Each target sequence has a shadow sequence here whose
tokens follow the target's: before proposing, the shadow drops what the target rejected
(`num_computed_tokens` rolled back, blocks past it freed), catches its KV up with the tokens
the target accepted in one chunk, then decodes k tokens one step at a time, all shadows of the
batch together. Its runner captures CUDA graphs like the target's unless `enforce_eager`.
"""
from __future__ import annotations

import logging

from engine.block_manager import BlockManager
from engine.config import EngineArgs, EngineConfig
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledSeq, SchedulerOutput
from engine.sequence import Request, Sequence, SequenceStatus
from engine.spec_decode.proposer import Proposer

logger = logging.getLogger(__name__)


def _vocab_size(hf_config) -> int:
    text = getattr(hf_config, "text_config", None) or hf_config
    return int(getattr(text, "vocab_size"))


# The draft's steps carrying more than one token per sequence are catch-ups of the target's
# accepted tokens (k + 1 at most each) or whole prompts: mixed CUDA graphs up to this many
# tokens serve the first; prompts run eagerly.
_DRAFT_GRAPH_TOKENS = 256


def draft_engine_config(config: EngineConfig, num_blocks: int) -> EngineConfig:
    """The draft's configuration: the target's device, dtype, block size and lengths."""
    args = EngineArgs(
        model=config.speculative.model, dtype=config.model.dtype, device=str(config.runner.device),
        block_size=config.cache.block_size, num_kv_blocks=num_blocks, num_cpu_blocks=0,
        max_model_len=config.scheduler.max_model_len, max_num_seqs=config.scheduler.max_num_seqs,
        max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
        attention_backend=config.runner.attention_backend,
        enforce_eager=config.runner.enforce_eager, max_cuda_graph_tokens=_DRAFT_GRAPH_TOKENS,
        async_scheduling=False, seed=config.model.seed)
    return args.create_engine_config()


class DraftModelProposer(Proposer):
    def __init__(self, config: EngineConfig, target_vocab_size: int, num_blocks: int):
        from engine.model_runner import ModelRunner

        draft_config = draft_engine_config(config, num_blocks)
        vocab = _vocab_size(draft_config.model.hf_config)
        if vocab != target_vocab_size:
            raise ValueError(
                f"speculative_config.model: the draft model's vocabulary ({vocab} tokens) differs "
                f"from the target's ({target_vocab_size}); a draft model must share the target's "
                "tokenizer")
        self.runner = ModelRunner(draft_config)
        self.runner.capture_graphs()
        self.bm = BlockManager(self.runner.num_gpu_blocks, 0, draft_config.cache.block_size)
        self._params = SamplingParams(temperature=0.0, max_tokens=None)
        self._shadows: dict[int, tuple[Request, Sequence]] = {}

    def release(self, live_seq_ids: set[int]) -> None:
        for sid in [s for s in self._shadows if s not in live_seq_ids]:
            _, shadow = self._shadows.pop(sid)
            self.bm.free_seq(shadow)

    def _shadow(self, seq: Sequence) -> tuple[Request, Sequence]:
        pair = self._shadows.get(seq.seq_id)
        if pair is None:
            req = Request(f"draft-{seq.seq_id}", [], self._params, [seq.seq_id], None)
            shadow = req.seqs[0]
            shadow.status = SequenceStatus.RUNNING
            pair = self._shadows[seq.seq_id] = (req, shadow)
        return pair

    def _sync(self, shadow: Sequence, tokens: list[int]) -> None:
        """Make the shadow's tokens the target's; keep the KV of the common prefix only."""
        mine = shadow.token_ids
        common = 0
        limit = min(len(mine), len(tokens))
        # Tokens only grow at the end, so the first difference is near the end: compare from
        # the KV that is valid, which is the part worth keeping.
        start = min(shadow.num_computed_tokens, limit)
        if mine[:start] == tokens[:start]:
            common = start
            while common < limit and mine[common] == tokens[common]:
                common += 1
        del mine[common:]
        mine.extend(tokens[common:])
        # At least the last token is run: its logits give the first draft (the target may hold
        # no new token, e.g. when its drafts were dropped before the step ran).
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, common, len(tokens) - 1)
        self.bm.trim_to_computed(shadow)

    def _run(self, batch: list[tuple[Request, Sequence, int]]) -> list[int]:
        """One draft forward: `n` new tokens of each shadow; returns each one's greedy token."""
        out = SchedulerOutput()
        for req, shadow, n in batch:
            out.blocks_to_copy.extend(self.bm.allocate_slots(shadow, n))
            out.scheduled.append(ScheduledSeq(req, shadow, n, [shadow]))
            out.num_batched_tokens += n
        result = self.runner.execute(out)
        tokens = []
        for _, shadow, n in batch:
            shadow.num_computed_tokens += n
            tok = result.sampled[shadow.seq_id][0]
            shadow.token_ids.append(tok)
            tokens.append(tok)
        return tokens

    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        active: list[int] = []
        free = self.bm.num_free_gpu_blocks
        for i, (seq, k) in enumerate(zip(seqs, max_tokens)):
            req, shadow = self._shadow(seq)
            self._sync(shadow, seq.token_ids)
            need = self.bm.blocks_needed(shadow, shadow.num_uncomputed_tokens + k)
            if need > free:
                continue  # the draft pool is full: this sequence decodes without drafts now
            free -= need
            active.append(i)
        if not active:
            return drafts
        batch = []
        for i in active:
            req, shadow = self._shadows[seqs[i].seq_id]
            batch.append((req, shadow, shadow.num_uncomputed_tokens))
        for step in range(max(max_tokens[i] for i in active)):
            if step:
                batch = [(req, shadow, 1) for (req, shadow, _), i in zip(batch, active)
                         if max_tokens[i] > step]
                active = [i for i in active if max_tokens[i] > step]
            for i, tok in zip(active, self._run(batch)):
                drafts[i].append(tok)
        return drafts
