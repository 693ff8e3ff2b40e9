"""A deterministic stand-in for `EngineCore` (same interface), for fast server tests.

Each sequence emits its prompt's tokens again, cyclically, one per step (sequence i starts i tokens
later), so the generated text is predictable from the prompt. It honours max_tokens,
stop_token_ids, min_tokens, n / best_of, logprobs, aborts and stop_seqs, and accounts one KV block
per `block_size` tokens like the real core. `FAKE_CORE_STEP_S` sets the step time (default 0.01 s).
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

from engine.outputs import EngineCoreOutput, EngineCoreRequest, SeqDelta


class _Seq:
    def __init__(self, index: int):
        self.index = index
        self.tokens: list[int] = []
        self.finish_reason: Optional[str] = None
        self.stop_reason: Any = None
        self.reported_finish = False


class _Req:
    def __init__(self, req: EngineCoreRequest):
        self.id = req.request_id
        self.prompt = list(req.prompt_token_ids)
        self.params = req.sampling_params
        self.eos = req.eos_token_id
        num = self.params.get("best_of") or self.params.get("n", 1)
        self.seqs = [_Seq(i) for i in range(num)]

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)


class FakeEngineCore:
    """EngineCore's interface over a trivial 'model'."""

    def __init__(self, config: Any):
        self.config = config
        self.vocab_size = int(getattr(config.model.hf_config, "vocab_size", 50257))
        self.block_size = config.cache.block_size
        self.num_blocks = config.cache.num_kv_blocks or 512
        self.max_running = config.scheduler.max_num_seqs
        self.step_s = float(os.environ.get("FAKE_CORE_STEP_S", "0.01"))
        self.waiting: list[_Req] = []
        self.running: list[_Req] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    def add_request(self, req: EngineCoreRequest) -> None:
        if req.sampling_params.get("seed") == 666:  # lets tests exercise a core-side rejection
            raise ValueError("seed: 666 is rejected by the fake core")
        self.waiting.append(_Req(req))

    def abort_requests(self, request_ids: list[str]) -> None:
        ids = set(request_ids)
        self.waiting = [r for r in self.waiting if r.id not in ids]
        self.running = [r for r in self.running if r.id not in ids]

    def stop_seqs(self, request_id: str, indices: list[int]) -> None:
        for r in self.running:
            if r.id == request_id:
                for s in r.seqs:
                    if s.index in indices and s.finish_reason is None:
                        s.finish_reason, s.reported_finish = "stop", True
        # Like the real core, a request whose sequences all stopped is freed at once.
        self.running = [r for r in self.running if not r.finished]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[EngineCoreOutput]:
        if self.step_s:
            time.sleep(self.step_s)
        while self.waiting and len(self.running) < self.max_running:
            r = self.waiting.pop(0)
            self.prompt_tokens_total += len(r.prompt)
            self.running.append(r)
        outputs = [self._advance(r) for r in self.running]
        self.running = [r for r in self.running if not r.finished]
        return outputs

    def _advance(self, r: _Req) -> EngineCoreOutput:
        p = r.params
        deltas = []
        for s in r.seqs:
            if s.finish_reason is not None:
                if not s.reported_finish:
                    s.reported_finish = True
                    deltas.append(SeqDelta(index=s.index, token_ids=[],
                                           finish_reason=s.finish_reason))
                continue
            tok = r.prompt[(len(s.tokens) + s.index) % len(r.prompt)]
            s.tokens.append(tok)
            self.generation_tokens_total += 1
            n_out = len(s.tokens)
            if n_out >= p.get("min_tokens", 0) and tok in (p.get("stop_token_ids") or []):
                s.finish_reason, s.stop_reason = "stop", tok
            elif (n_out >= p.get("min_tokens", 0) and not p.get("ignore_eos")
                  and tok == r.eos):
                s.finish_reason = "stop"
            elif p.get("max_tokens") is not None and n_out >= p["max_tokens"]:
                s.finish_reason = "length"
            lps = None
            if p.get("logprobs") is not None:
                lps = [{tok: -0.25, (tok + 1) % self.vocab_size: -1.5,
                        (tok + 2) % self.vocab_size: -2.5}]
            s.reported_finish = s.finish_reason is not None
            deltas.append(SeqDelta(index=s.index, token_ids=[tok],
                                   cumulative_logprob=-0.25 * n_out, logprobs=lps,
                                   finish_reason=s.finish_reason, stop_reason=s.stop_reason))
        plp = None
        if p.get("prompt_logprobs") is not None and all(len(s.tokens) == 1 for s in r.seqs):
            plp = [None] + [{t: -1.0} for t in r.prompt[1:]]
        return EngineCoreOutput(request_id=r.id, seqs=deltas, finished=r.finished,
                                prompt_logprobs=plp)

    def _used_blocks(self) -> int:
        bs = self.block_size
        return sum(-(-(len(r.prompt) + len(s.tokens)) // bs)
                   for r in self.running for s in r.seqs)

    def stats(self) -> dict:
        used = min(self._used_blocks(), self.num_blocks)
        return {
            "num_running": len(self.running), "num_waiting": len(self.waiting),
            "num_swapped": 0, "num_preemptions": 0,
            "num_free_blocks": self.num_blocks - used, "num_total_blocks": self.num_blocks,
            "kv_cache_usage": used / self.num_blocks,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "prefix_cache_queries": 0, "prefix_cache_hits": 0, "block_size": self.block_size,
        }
