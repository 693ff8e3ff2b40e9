"""Where a decode step's time goes: GPU graph replay vs host work (schedule, inputs, sampling).

    python benchmarks/profile_step.py --batch 1
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.model_shapes import shape_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--batches", default="1,64")
    args = ap.parse_args()
    from engine import EngineArgs, LLMEngine, SamplingParams
    from engine.model_inputs import build_model_inputs
    from engine.sampler import SamplingMetadata
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=shape_folder(args.model_shape), load_format="dummy", skip_tokenizer_init=True,
        max_num_seqs=256, max_model_len=2048, gpu_memory_utilization=0.85))
    core, runner = eng.core, eng.core.runner
    for b in [int(x) for x in args.batches.split(",")]:
        rng = random.Random(0)
        for i in range(b):
            eng.add_request(f"p{b}-{i}", None, SamplingParams(temperature=0, max_tokens=200,
                                                              ignore_eos=True, detokenize=False),
                            prompt_token_ids=[rng.randrange(1000) for _ in range(64)])
        for _ in range(3):
            eng.step()
        parts: dict[str, list[float]] = {k: [] for k in
                                         ("schedule", "inputs", "replay_gpu", "logits+sample",
                                          "update+outputs", "step_total")}
        for _ in range(20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = core.scheduler.schedule()
            t1 = time.perf_counter()
            inputs = build_model_inputs(out, runner.block_size, runner.device,
                                        pad_block_tables_to=runner.graphs.block_table_width)
            t2 = time.perf_counter()
            ev0, ev1 = torch.cuda.Event(True), torch.cuda.Event(True)
            ev0.record()
            hidden = runner._forward(inputs)
            ev1.record()
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            rows = [(s.request, q) for s in out.scheduled for q in s.sample_seqs]
            idx = torch.tensor(inputs.sample_rows, device=runner.device)
            logits = runner.model.compute_logits(hidden.index_select(0, idx)).float()
            res = runner.sampler(logits, SamplingMetadata.from_rows(rows, runner.vocab_size,
                                                                    runner.device))
            t4 = time.perf_counter()
            from engine.model_runner import RunnerOutput
            ro = RunnerOutput()
            for (_, seq), tok, lp, top in zip(rows, res.token_ids, res.logprobs, res.top_logprobs):
                ro.sampled[seq.seq_id] = (tok, lp, top)
            eng.output_processor.process_outputs(core._update(out, ro))
            t5 = time.perf_counter()
            parts["schedule"].append(t1 - t0)
            parts["inputs"].append(t2 - t1)
            parts["replay_gpu"].append(ev0.elapsed_time(ev1) / 1e3)
            parts["logits+sample"].append(t4 - t3)
            parts["update+outputs"].append(t5 - t4)
            t6 = time.perf_counter()
            eng.step()
            parts["step_total"].append(time.perf_counter() - t6)
        print(f"batch {b}: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms"
                                         for k, v in parts.items()), flush=True)
        for i in range(b):
            eng.abort_request(f"p{b}-{i}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(1):
            eng.add_request("prof", None, SamplingParams(temperature=0, max_tokens=20,
                                                         ignore_eos=True, detokenize=False),
                            prompt_token_ids=list(range(64)))
        for _ in range(8):
            eng.step()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
