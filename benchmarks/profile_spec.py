"""Where a speculating step's time goes: n-gram speculation on the replay prompts of
`spec_decode.py` (dummy weights, uniform-small) at one batch size, under torch.profiler. Prints
the step's wall time against its GPU kernel time (a wall far above the kernels means the host
holds the GPU up), then the kernels, the torch ops and (cProfile) the Python functions that cost
most per step.

    python benchmarks/profile_spec.py --model /tmp/llama3 --batch 32 [--k 4] [--steps 20]
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.spec_decode import (_uniform_small, random_seed_prompts,  # noqa: E402
                                    stats_delta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=25, help="rows of each table")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-spec", action="store_true", help="profile plain decode steps instead")
    ap.add_argument("--stack-every", type=float, default=0,
                    help="dump every thread's stack to stderr every this many seconds (a hang)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.stack_every:
        faulthandler.dump_traceback_later(args.stack_every, repeat=True)
    t_start = time.perf_counter()

    def phase(what: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {what}", flush=True)

    from engine import LLM, SamplingParams
    spec = None if args.no_spec else {
        "method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2,
        "prompt_lookup_max": 5}
    llm = LLM(model=args.model, load_format="dummy", device=args.device, seed=0,
              speculative_config=spec, gpu_memory_utilization=0.8)
    phase("engine built")
    _uniform_small(llm.llm_engine.core.runner.model)
    greedy = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    seeds = random_seed_prompts()
    outs = llm.generate([{"prompt_token_ids": s} for s in seeds], greedy, use_tqdm=False)
    replay = [s + list(o.outputs[0].token_ids) + s for s, o in zip(seeds, outs)]
    phase("replay prompts made")
    eng = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, detokenize=False)
    for i in range(args.batch):
        eng.add_request(f"r{i}", None, params, prompt_token_ids=replay[i % len(replay)])
    for _ in range(6):   # prompts prefilled, speculation under way
        eng.step()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    phase("batch under way; profiling")
    before = llm.stats()
    walls = []
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            eng.step()
            walls.append(time.perf_counter() - t0)
        if cuda:
            torch.cuda.synchronize()
    delta = stats_delta(before, llm.stats())
    drafted = delta.get("spec_decode_num_draft_tokens", 0)
    accepted = delta.get("spec_decode_num_accepted_tokens", 0)
    events = prof.key_averages()
    gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
    print(f"batch {args.batch} {'plain' if spec is None else f'ngram k={args.k}'}: step wall "
          f"median {statistics.median(walls) * 1e3:.2f} ms (profiled), GPU kernels "
          f"{gpu_ms:.2f} ms/step; drafted {drafted}, accepted {accepted}", flush=True)
    if cuda:
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    phase("torch.profiler done")
    # The host side by Python function (a wait on the GPU shows as time in the call that syncs).
    import cProfile
    import pstats
    prof_py = cProfile.Profile()
    prof_py.enable()
    for _ in range(args.steps):
        eng.step()
    prof_py.disable()
    stats = pstats.Stats(prof_py).sort_stats("tottime")
    stats.print_stats(args.rows)
    stats.sort_stats("cumulative").print_stats(args.rows)
    for i in range(args.batch):
        eng.abort_request(f"r{i}")
    phase("done")


if __name__ == "__main__":
    main()
