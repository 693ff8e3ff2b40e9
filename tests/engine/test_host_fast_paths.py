"""The host-side fast paths give the same results as the plain code they replace: model inputs
packed per block run, final-only requests reported once by the core, scheduler retirement of
candidates only, the scoped GC freeze of `LLM.generate`."""
from __future__ import annotations

import gc
import random

import pytest
import torch

from engine import EngineArgs, LLMEngine, SamplingParams
from engine.llm import frozen_gc_heap
from engine.model_inputs import SHORT_QUERY_MAX, build_model_inputs
from engine.scheduler_output import ScheduledSeq, SchedulerOutput
from engine.sequence import PLACEHOLDER, Request, SequenceStatus


# ---- build_model_inputs vs a per-token reference -----------------------------------------------
def reference_inputs(out: SchedulerOutput, bs: int, pad_to: int = 0,
                     short_max: int = SHORT_QUERY_MAX) -> dict:
    """The packing rule written token by token: decodes first, then chunks of at most
    `short_max` tokens as one single-row attention sequence per token, then the rest."""
    n_of = [s.num_tokens for s in out.scheduled]
    order = ([i for i, n in enumerate(n_of) if n == 1]
             + [i for i, n in enumerate(n_of) if 1 < n <= short_max]
             + [i for i, n in enumerate(n_of) if n > max(short_max, 1)])
    ids, pos, slots, qsl, seq_lens, tables, ph, spans = [], [], [], [0], [], [], [], []
    last = {}
    for i in order:
        s = out.scheduled[i]
        seq, start = s.seq, s.seq.num_computed_tokens
        for p in range(start, start + s.num_tokens):
            t = seq.token_ids[p]
            if t == PLACEHOLDER:
                ph.append((len(ids), seq.seq_id))
                t = 0
            ids.append(t)
            pos.append(p)
            slots.append(seq.block_table[p // bs] * bs + p % bs)
            if s.num_tokens <= short_max:  # a single-row attention sequence per token
                qsl.append(len(ids))
                seq_lens.append(p + 1)
                tables.append(seq.block_table)
        if s.wants_prompt_logprobs:
            spans.append((i, len(ids) - s.num_tokens, s.num_tokens))
        if s.num_tokens > short_max:
            qsl.append(len(ids))
            seq_lens.append(start + s.num_tokens)
            tables.append(seq.block_table)
        last[i] = len(ids) - 1
    width = max([len(t) for t in tables] + [pad_to, 1])
    bt = [t + [0] * (width - len(t)) for t in tables]
    rows = [last[i] for i, s in enumerate(out.scheduled) for _ in s.sample_seqs]
    return dict(ids=ids, pos=pos, slots=slots, qsl=qsl, seq_lens=seq_lens, bt=bt,
                sample_rows=rows, placeholders=ph, spans=spans)


def random_step(rng: random.Random, bs: int) -> SchedulerOutput:
    """A step mixing decodes (some on placeholder tokens), prefill chunks and a catch-up."""
    out = SchedulerOutput()
    next_block = iter(rng.sample(range(10_000), 5_000))
    for rid in range(rng.randint(1, 12)):
        prompt_len = rng.randint(1, 70)
        params = SamplingParams(prompt_logprobs=1 if rng.random() < 0.3 else None)
        req = Request(str(rid), [rng.randrange(100) for _ in range(prompt_len)], params,
                      [rid], eos_token_id=None)
        seq = req.seqs[0]
        seq.token_ids += [rng.randrange(100) for _ in range(rng.randint(0, 40))]
        for _ in range(rng.randint(0, 2)):
            seq.append_placeholder()
        seq.num_computed_tokens = rng.randint(0, len(seq.token_ids) - 1)
        n = 1 if rng.random() < 0.5 else rng.randint(1, len(seq.token_ids) - seq.num_computed_tokens)
        end = seq.num_computed_tokens + n
        seq.block_table = [next(next_block) for _ in range(-(-end // bs))]
        sample = [seq] if end == len(seq.token_ids) else []
        out.scheduled.append(ScheduledSeq(req, seq, n, sample))
    return out


@pytest.mark.parametrize("bs", [1, 4, 16])
@pytest.mark.parametrize("pad_to", [0, 40])
@pytest.mark.parametrize("short_max", [SHORT_QUERY_MAX, 1])
def test_model_inputs_match_per_token_reference(bs, pad_to, short_max):
    rng = random.Random(bs * 100 + pad_to)
    for _ in range(50):
        out = random_step(rng, bs)
        ref = reference_inputs(out, bs, pad_to, short_max)
        got = build_model_inputs(out, bs, torch.device("cpu"), pad_block_tables_to=pad_to,
                                 short_query_max=short_max)
        m = got.meta
        assert got.input_ids.tolist() == ref["ids"]
        assert got.positions.tolist() == ref["pos"]
        assert m.slot_mapping.tolist() == ref["slots"]
        assert m.query_start_loc.tolist() == ref["qsl"]
        assert m.seq_lens.tolist() == ref["seq_lens"] == m.seq_lens_cpu
        assert m.block_tables.tolist() == ref["bt"]
        assert m.block_tables.dtype == torch.int32 and m.slot_mapping.dtype == torch.int64
        assert got.sample_rows == ref["sample_rows"]
        assert got.placeholder_rows == ref["placeholders"]
        assert got.prompt_logprob_spans == ref["spans"]
        assert m.num_seqs == len(ref["seq_lens"]) and m.num_tokens == len(ref["ids"])
        assert m.query_lens_cpu == [b - a for a, b in zip(ref["qsl"], ref["qsl"][1:])]
        single = [s.num_tokens for s in out.scheduled if s.num_tokens <= short_max]
        assert m.query_lens_cpu[:sum(single)] == [1] * sum(single)  # all lead as decode rows
        assert m.num_seqs == len(out.scheduled) - len(single) + sum(single)


# ---- final-only requests: reported once, same results --------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LLMEngine.from_engine_args(EngineArgs(model=tiny_model_dir("llama"), device="cpu",
                                                 seed=0))


def run_engine(engine: LLMEngine, params: list[SamplingParams], final_only: bool):
    """Outputs of every request, and how many core outputs arrived before each finished."""
    prompts = [f"Request {i}: " + "alpha beta " * (1 + 2 * i) for i in range(len(params))]
    ids = [f"{'f' if final_only else 's'}{i}" for i in range(len(params))]
    for rid, prompt, p in zip(ids, prompts, params):
        engine.add_request(rid, prompt, p, final_only=final_only)
    early: dict[str, int] = {}
    results = {}
    while engine.has_unfinished_requests():
        core_outputs = engine.core.step()
        for o in core_outputs:
            if not o.finished:
                early[o.request_id] = early.get(o.request_id, 0) + 1
        processed = engine.output_processor.process_outputs(core_outputs)
        for rid, indices in processed.seqs_to_stop:
            engine.core.stop_seqs(rid, indices)
        for ro in processed.request_outputs:
            if ro.finished:
                results[ro.request_id] = ro
    summary = [[(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason,
                 round(c.cumulative_logprob, 4), c.logprobs) for c in results[rid].outputs]
               + [results[rid].prompt_logprobs, results[rid].num_cached_tokens]
               for rid in ids]
    return summary, [early.get(rid, 0) for rid in ids]


def test_final_only_requests_report_once_with_the_same_results(engine):
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.9, seed=3, max_tokens=9, prompt_logprobs=1),
        SamplingParams(temperature=0.8, seed=5, n=2, max_tokens=7),
        SamplingParams(temperature=0.8, seed=7, n=1, best_of=3, max_tokens=6),
        SamplingParams(temperature=1.0, seed=9, max_tokens=10, detokenize=False),
        SamplingParams(temperature=0, max_tokens=14, stop=[" beta"]),  # stop strings: per step
    ]
    streamed, _ = run_engine(engine, params, final_only=False)
    final, early = run_engine(engine, params, final_only=True)
    assert final == streamed
    # Only the request with stop strings needs the core's outputs before it finishes.
    assert early[:5] == [0] * 5 and early[5] > 0
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_needs_only_final_rules(engine):
    proc = engine.output_processor
    cases = {
        "a": (SamplingParams(), True, True),
        "b": (SamplingParams(), False, False),
        "c": (SamplingParams(stop=["x"]), True, False),
        "d": (SamplingParams(stop=["x"], detokenize=False), True, True),
        "e": (SamplingParams(n=1, best_of=2, temperature=1.0), False, True),
    }
    for rid, (params, final_only, _) in cases.items():
        proc.add_request(rid, "hi", [1, 2], params, final_only=final_only)
    try:
        assert {rid: proc.needs_only_final(rid) for rid in cases} == \
            {rid: want for rid, (_, _, want) in cases.items()}
    finally:
        for rid in cases:
            proc.abort(rid)


# ---- scheduler and sequence bookkeeping ----------------------------------------------------
def test_sequence_is_finished_follows_status():
    req = Request("r", [1, 2, 3], SamplingParams(n=2, temperature=1.0), [0, 1], None)
    a, b = req.seqs
    assert not a.is_finished and not req.is_finished and req.single_seq is False
    for status in SequenceStatus:
        a.status = status
        assert a.is_finished == status.is_finished and a.status is status
    a.status = SequenceStatus.FINISHED_LENGTH
    assert not req.is_finished and req.leader is b
    b.status = SequenceStatus.FINISHED_ABORTED
    assert req.is_finished and req.live_seqs() == []


def test_retire_only_takes_finished_running_requests():
    from engine.block_manager import BlockManager
    from engine.config import SchedulerConfig
    from engine.scheduler import Scheduler

    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                      max_model_len=256), BlockManager(32, 8, 4))
    reqs = [Request(str(i), [1, 2, 3], SamplingParams(), [i], None) for i in range(4)]
    for r in reqs:
        sched.add_request(r)
    sched.schedule()
    assert sched.running == reqs
    waiting = sched.running.pop()  # as if preempted: not running any more
    for r in (reqs[1], waiting):
        sched.finish_seq(r, r.seqs[0], SequenceStatus.FINISHED_LENGTH)
    assert sched.retire([reqs[0], reqs[1], waiting]) == [reqs[1]]
    assert sched.running == [reqs[0], reqs[2]]
    assert waiting.request_id in sched.requests and reqs[1].request_id not in sched.requests


# ---- the scoped GC freeze ------------------------------------------------------------------
def test_frozen_gc_heap_restores_and_respects_an_outer_freeze():
    assert gc.get_freeze_count() == 0
    with frozen_gc_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    sentinel = [object()]  # tracked by the collector until frozen
    gc.freeze()
    try:
        with frozen_gc_heap():
            pass
        # The caller's freeze is left alone: the sentinel is still in the permanent generation
        # (the count itself moves when other threads free frozen objects, so it is not compared).
        assert gc.get_freeze_count() > 0
        assert not any(o is sentinel for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is sentinel for o in gc.get_objects())
