"""Host (Python) time per engine step at large batch sizes, with the model's work stubbed out.

    python benchmarks/host_overhead.py --num-seqs 512 1024 [--streaming] [--gc-freeze]
                                       [--repeat 3] [--profile]

The engine is built on the tiny llama shape (`configs/models/llama-tiny.json`, dummy weights)
and the runner's `launch` is replaced by a stub that still builds the step's model inputs
(`build_model_inputs`, host work the real launch does) but runs no forward pass, builds no
sampling metadata and "samples" a random token per sampled sequence at once; the real
`ModelRunner.finish` then reads those samples as it reads the GPU's. So what is timed is the
host side of `LLMEngine.step`: scheduling, input packing, applying samples, stop checks and
output processing.

The batch is kept full: every request asks for a random 100-300 tokens (EOS ignored, no
detokenization, temperature 1.0, n=1, like `benchmarks/throughput.py`), and finished requests are
replaced by new ~200-token prompts, so steady-state steps mix decodes with prefill chunks and
finishes. Requests are `final_only` (the `LLM.generate` path) unless `--streaming` (outputs every
step, as the server gets them); `--gc-freeze` runs the timed steps under the GC freeze that
`LLM.generate` uses. Prints the median and mean host ms per step over the timed window (the
mean shows garbage-collector pauses), and with `--profile` a cProfile top-20. CPU time per step
is printed too. On a busy machine use `--repeat`: the run with the lowest median is printed.
Never a pass/fail test.
"""
from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import os
import pstats
import random
import statistics
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


class _FakePending:
    """Stands in for `sampler.PendingSample`: samples known on the host at once."""

    def __init__(self, tokens: list[int]):
        self.tokens = torch.empty(0)
        self._tokens = tokens

    def result(self) -> Any:
        from engine.sampler import SamplerOutput

        n = len(self._tokens)
        return SamplerOutput(token_ids=self._tokens, logprobs=[-1.0] * n, top_logprobs=[None] * n)


def stub_runner(engine: Any, seed: int = 0) -> None:
    """Replace the runner's GPU work by a stub honouring `launch`/`finish`'s contract."""
    from engine.model_inputs import build_model_inputs
    from engine.model_runner import InFlight

    runner = engine.core.runner
    rng = random.Random(seed)
    # Random tokens sliced from a pool: the stub's own cost stays out of the measurement.
    pool = [rng.randrange(runner.vocab_size) for _ in range(1 << 16)]
    offset = 0

    def launch(out, prev: Optional[InFlight] = None, sample: bool = True) -> InFlight:
        nonlocal offset
        step = InFlight(out)
        if out.is_empty:
            return step
        inputs = build_model_inputs(out, runner.block_size, runner.device)
        if inputs.placeholder_rows and (prev is None or prev.pending is None):
            raise RuntimeError("placeholder tokens without an in-flight step")
        step.rows = [(s.request, q) for s in out.scheduled for q in s.sample_seqs]
        if step.rows:
            offset = (offset + 4099) % (len(pool) - len(step.rows))
            step.pending = _FakePending(pool[offset:offset + len(step.rows)])
            step.row_of_seq = {seq.seq_id: i for i, (_, seq) in enumerate(step.rows)}
        return step

    runner.launch = launch


def build_engine(num_seqs: int, async_scheduling: bool) -> Any:
    from benchmarks.model_shapes import shape_folder
    from engine import EngineArgs, LLMEngine

    blocks = num_seqs * (520 // 16 + 2) + 64  # prompt + output of every running request
    return LLMEngine.from_engine_args(EngineArgs(
        model=shape_folder("llama-tiny"), load_format="dummy", skip_tokenizer_init=True,
        device="cpu", dtype="float32", max_num_seqs=num_seqs, max_num_batched_tokens=8192,
        num_kv_blocks=blocks, num_cpu_blocks=16, async_scheduling=async_scheduling, seed=0))


def run(num_seqs: int, steps: int, warmup: int, streaming: bool, async_scheduling: bool,
        profile: bool, gc_freeze: bool = False) -> dict[str, float]:
    from engine import SamplingParams

    eng = build_engine(num_seqs, async_scheduling)
    stub_runner(eng)
    vocab = eng.core.runner.vocab_size
    rng = random.Random(0)
    next_id = 0

    def top_up() -> None:
        nonlocal next_id
        # Keep a few more requests than fit, so finished ones are replaced the same step. The
        # first batch has spread-out lengths, so finishes (and refills) start at once.
        while eng.output_processor.num_unfinished_requests < num_seqs + num_seqs // 8:
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(150, 250))]
            first = next_id < num_seqs
            params = SamplingParams(temperature=1.0,
                                    max_tokens=rng.randint(1 if first else 100, 300),
                                    ignore_eos=True, detokenize=False)
            eng.add_request(str(next_id), None, params, prompt_token_ids=prompt,
                            final_only=not streaming)
            next_id += 1

    times: list[float] = []
    cpu_times: list[float] = []
    running: list[int] = []
    prof = cProfile.Profile() if profile else None
    frozen = contextlib.ExitStack()
    for i in range(warmup + steps):
        top_up()
        timed = i >= warmup
        if gc_freeze and i == warmup:
            from engine.llm import frozen_gc_heap  # what LLM.generate runs its steps under
            frozen.enter_context(frozen_gc_heap())
        if timed and prof is not None:
            prof.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        eng.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if timed:
            if prof is not None:
                prof.disable()
            times.append(dt * 1e3)
            cpu_times.append(dc * 1e3)
            running.append(len(eng.core.scheduler.running))
    frozen.close()
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        print(buf.getvalue())
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
            "median_cpu_ms": statistics.median(cpu_times),
            "mean_running": statistics.fmean(running)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-seqs", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=100,
                    help="untimed steps first (batch filling)")
    ap.add_argument("--streaming", action="store_true",
                    help="report every step's outputs (not final_only)")
    ap.add_argument("--sync", action="store_true", help="no async scheduling")
    ap.add_argument("--profile", action="store_true", help="cProfile top-20 of the timed steps")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="timed steps under engine.llm.frozen_gc_heap, as LLM.generate runs them")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per size; the one with the lowest median is printed (noisy hosts)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for n in args.num_seqs:
        r = min((run(n, args.steps, args.warmup, args.streaming, not args.sync, args.profile,
                     args.gc_freeze) for _ in range(args.repeat)),
                key=lambda r: r["median_ms"])
        print(f"num_seqs={n} ({'streaming' if args.streaming else 'final_only'}, "
              f"{'sync' if args.sync else 'async'}{', gc frozen' if args.gc_freeze else ''}): "
              f"median {r['median_ms']:.2f} ms/step "
              f"(CPU {r['median_cpu_ms']:.2f}), mean {r['mean_ms']:.2f} ms/step, "
              f"mean running {r['mean_running']:.0f}")


if __name__ == "__main__":
    main()
