"""HF transformers `generate` with static batching: the baseline pagedserve is measured against.

Requests are taken in arrival order and packed into left-padded batches, each as large as the
device memory allows (estimated from the KV cache and activation sizes; a batch that still runs out
of memory is split in half and retried). Every batch runs to its longest output, as static
batching does; only each request's own `output_len` tokens count as useful output. A time budget
stops the baseline after a prefix of the workload, and the fraction run is recorded.

Run on its own: `python benchmarks/hf_baseline.py --workload sharegpt_like --model-shape llama3-8b`
(appends to benchmarks/results/hf_baseline.jsonl on GPU, or with --record).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from benchmarks.model_shapes import (ModelSpec, add_model_args, hf_config_of, resolve_model,
                                     special_token_ids, vocab_size_of)
from benchmarks.workloads import (WorkloadRequest, add_workload_args, load_workload,
                                  random_prompt_token_ids, summarize)

_DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Same defaults as the engine: bf16 on GPU, fp32 on CPU."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    dt = _DTYPES[dtype] or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return dev, dt


def load_hf_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Any:
    """The HF model for a spec: random weights for a shape (made on the device), else loaded."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if spec.dummy:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config_of(spec), **kwargs)
    elif spec.model is None or spec.model.endswith(".gguf"):
        folder, gguf = ((spec.hf_folder, spec.gguf_file) if spec.model is None else
                        (os.path.dirname(os.path.abspath(spec.model)), os.path.basename(spec.model)))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, **kwargs).to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs).to(device)
    return model.eval()


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def bytes_per_token(config: Any, dtype: torch.dtype) -> tuple[int, int]:
    """(KV cache bytes per token of one sequence, prefill activation bytes per prompt token)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elt = torch.finfo(dtype).bits // 8
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elt
    inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    act = (8 * cfg.hidden_size + 3 * inter) * elt
    return kv, act


def plan_batches(reqs: Sequence[WorkloadRequest], budget_bytes: int, kv_tok: int, act_tok: int,
                 seqs_per_request: int, max_batch_size: Optional[int] = None) -> list[list[int]]:
    """Arrival-order batches, each grown while its padded KV cache + prefill activations fit."""
    batches: list[list[int]] = []
    cur: list[int] = []
    max_in = max_out = 0
    for i, r in enumerate(reqs):
        new_in, new_out = max(max_in, r.input_len), max(max_out, r.output_len)
        size = len(cur) + 1
        need = size * seqs_per_request * ((new_in + new_out) * kv_tok + new_in * act_tok)
        full = max_batch_size is not None and size > max_batch_size
        if cur and (need > budget_bytes or full):
            batches.append(cur)
            cur, new_in, new_out = [], r.input_len, r.output_len
        cur.append(i)
        max_in, max_out = new_in, new_out
    if cur:
        batches.append(cur)
    return batches


def _left_pad(prompts: Sequence[list[int]], pad_id: int, device: torch.device,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _generate(model: Any, prompts: Sequence[list[int]], max_new: int, n: int, beam_width: int,
              pad_id: int, device: torch.device) -> int:
    """One static batch; returns the number of tokens generated (padding-run ones included)."""
    ids, mask = _left_pad(prompts, pad_id, device)
    width = max(n, beam_width)
    # eos_token_id=None: EOS does not stop a sequence, as ignore_eos on the engine side.
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new, eos_token_id=None, pad_token_id=pad_id,
                                  num_return_sequences=width, use_cache=True)
    if beam_width > 1:
        kwargs.update(num_beams=beam_width, do_sample=False)
    elif n > 1:
        kwargs.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return int(out.shape[0] * (out.shape[1] - ids.shape[1]))


def run_static_batches(model: Any, prompts: Sequence[list[int]], reqs: Sequence[WorkloadRequest],
                       *, n: int = 1, beam_width: int = 1, time_budget_s: float = 300.0,
                       max_batch_size: Optional[int] = None, memory_fraction: float = 0.85,
                       ) -> dict[str, Any]:
    """Run HF generate over the workload in static batches; metrics under `hf_*` names."""
    device = next(model.parameters()).device
    config = model.config
    pad_id = next((i for i in special_token_ids(config)), 0)
    kv_tok, act_tok = bytes_per_token(config, next(model.parameters()).dtype)
    seqs = max(n, beam_width)
    budget = int(_available_bytes(device) * memory_fraction)
    batches = plan_batches(reqs, budget, kv_tok, act_tok, seqs, max_batch_size)
    _generate(model, [prompts[0][:8]], 2, 1, 1, pad_id, device)  # warm-up: kernels, allocator

    done: list[int] = []
    sizes: list[int] = []
    generated = splits = 0
    elapsed = 0.0
    queue = list(batches)
    while queue and elapsed < time_budget_s:
        batch = queue.pop(0)
        max_new = max(reqs[i].output_len for i in batch)
        try:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            generated += _generate(model, [prompts[i] for i in batch], max_new, n, beam_width,
                                   pad_id, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed += time.perf_counter() - t0
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            # The estimate was optimistic: split and retry; the failed attempt's time is not
            # counted (a user would have picked the smaller batch up front).
            gc.collect()
            torch.cuda.empty_cache()
            half = len(batch) // 2
            queue[:0] = [batch[:half], batch[half:]]
            splits += 1
            continue
        done.extend(batch)
        sizes.append(len(batch))
    ran = [reqs[i] for i in done]
    useful_out = sum(r.output_len for r in ran) * seqs
    prompt_tok = sum(r.input_len for r in ran)
    return {
        "hf_num_requests": len(ran),
        "hf_fraction": len(ran) / len(reqs),
        "hf_elapsed_s": elapsed,
        "hf_requests_s": len(ran) / elapsed if elapsed else 0.0,
        "hf_output_tok_s": useful_out / elapsed if elapsed else 0.0,
        "hf_total_tok_s": (useful_out + prompt_tok) / elapsed if elapsed else 0.0,
        "hf_generated_tok_s": generated / elapsed if elapsed else 0.0,
        "hf_num_batches": len(sizes),
        "hf_mean_batch_size": sum(sizes) / len(sizes) if sizes else 0.0,
        "hf_max_batch_size": max(sizes) if sizes else 0,
        "hf_oom_splits": splits,
        # Free memory the batches were sized for: a low figure next to the device's total means
        # something (a leaked engine) held memory and the baseline ran smaller batches than it could.
        "hf_memory_budget_gib": budget / 2**30,
        "hf_time_budget_s": time_budget_s,
    }


def add_hf_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-time-budget", type=float, default=300.0,
                        help="stop starting HF batches after this many seconds (a prefix is run)")
    parser.add_argument("--hf-num-requests", type=int, default=None,
                        help="run the HF baseline on at most the first N requests")
    parser.add_argument("--hf-max-batch-size", type=int, default=None,
                        help="cap the HF batch size (default: as large as memory allows)")


def run_baseline(spec: ModelSpec, reqs: Sequence[WorkloadRequest], prompts: Sequence[list[int]],
                 args: argparse.Namespace, n: int = 1, beam_width: int = 1) -> dict[str, Any]:
    """Load the HF model, run the static-batch baseline, free the model."""
    device, dtype = pick_device_dtype(args.device, args.dtype)
    model = load_hf_model(spec, device, dtype)
    limit = args.hf_num_requests or len(reqs)
    try:
        metrics = run_static_batches(model, prompts[:limit], reqs[:limit], n=n,
                                     beam_width=beam_width, time_budget_s=args.hf_time_budget,
                                     max_batch_size=args.hf_max_batch_size)
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # The fraction is of the whole workload asked for, not of the prefix allowed.
    metrics["hf_fraction"] = metrics["hf_num_requests"] / len(reqs)
    metrics["hf_dtype"] = str(dtype).replace("torch.", "")
    return metrics


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser)
    add_model_args(parser)
    add_hf_args(parser)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--beam-width", type=int, default=1)
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--record", action="store_true", help="append to results/ even on CPU")
    args = parser.parse_args(argv)

    spec = resolve_model(args.model, args.model_shape)
    config = hf_config_of(spec)
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)
    prompts = random_prompt_token_ids(reqs, vocab_size_of(config), args.seed,
                                      special_token_ids(config))
    metrics = run_baseline(spec, reqs, prompts, args, n=args.n, beam_width=args.beam_width)
    params = {"workload": args.workload, "model": spec.label, "dummy_weights": spec.dummy,
              "n": args.n, "beam_width": args.beam_width, **summarize(reqs)}
    from benchmarks.record import append_result, make_record

    result = make_record("hf_baseline", params, metrics)
    if torch.cuda.is_available() or args.record:
        append_result("hf_baseline", params, metrics)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return result


if __name__ == "__main__":
    main()
