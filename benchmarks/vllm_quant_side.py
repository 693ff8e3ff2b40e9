"""vLLM's side of the quantization benchmark: the same cases as benchmarks/quantization.py
(quant_cases.py), run by vLLM on the device under the vLLM peer bundle (../shared/vllm-peer).

Each engine runs in its own subprocess with vllm_side.py's proven settings (dummy weights,
skip_tokenizer_init, bf16, gpu_memory_utilization 0.9, seed 0, vLLM's defaults otherwise):
  fp8 + fp8 KV  LLM(model=<shape dir>, quantization="fp8", kv_cache_dtype="fp8") (vLLM 0.26's
                online fp8 is per-tensor; --fp8-method fp8_per_channel matches pagedserve's)
  int8 / GPTQ / AWQ  the shape's config.json plus the case's `quantization_config`; vLLM picks
                its kernels itself (compressed-tensors W8A8 int8; its auto_gptq / auto_awq
                methods choose the mixed-precision GEMM, e.g. Marlin)
Throughput: the same prompt ids as pagedserve (throughput.workload_prompts, seed 0), the same
warm-up, one timed LLM.generate, temperature 1. Decode: benchmarks/decode_latency.py (the peer's
gen_latency method), greedy.
Writes `{"cases": {case: {"output_tok_s" | "per_token_ms", ...}}, "errors": [...], ...}` to --out
after every engine, for `quantization.py --vllm-json`.

vLLM 0.26 needs compressed-tensors 0.17.0 (and loguru) for any quantization; neither the bundle
nor the device image has them. Once, in the checkout's root on your machine (.whl/ is ignored):
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl \\
        compressed-tensors==0.17.0 loguru==0.7.3
On the device (carry .carry/vllm and .whl):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site && bash .carry/vllm/device.sh python3 \\
      benchmarks/vllm_quant_side.py --workload-dir <workloads> --num-prompts 500 \\
      --out $OUT/vllm_quant.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.isolated import run_isolated  # noqa: E402
from benchmarks.quant_cases import (ENGINES, EngineSpec, find_peer_dir,  # noqa: E402
                                    group_by_engine, select_cases, tasks_of)

# Not in the peer bundle (../shared/vllm-peer/pack.sh) nor the device image; vLLM 0.26's
# quantization registry imports compressed_tensors (which logs through loguru) for any method.
NEEDED_PACKAGES = ("compressed_tensors", "loguru")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="all")
    ap.add_argument("--model-shape", default="llama3-8b",
                    help="a configs/models/ name or a path to a config .json")
    ap.add_argument("--workload-dir", required=True)
    ap.add_argument("--num-prompts", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--decode-input", type=int, default=128)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--fp8-method", default="fp8",
                    help="vLLM's name for the fp8 case: fp8 (the issue's; vLLM 0.26 quantizes "
                         "per tensor) or fp8_per_channel (pagedserve's scheme: per-channel "
                         "weights, dynamic per-token activations)")
    ap.add_argument("--peer-dir", default=None, help="folder with the peer's vllm_side.py (its config readout)")
    ap.add_argument("--case-timeout", type=float, default=300.0,
                    help="seconds one engine's subprocess may take")
    ap.add_argument("--out", required=True)
    ap.add_argument("--group", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--group-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def model_dir(shape: str, spec: EngineSpec) -> tuple[str, dict]:
    """A folder with the shape's config.json, plus the case's quantization_config if any."""
    src = shape if shape.endswith(".json") else os.path.join(REPO, "configs", "models",
                                                              f"{shape}.json")
    with open(src) as f:
        cfg = json.load(f)
    if spec.quant_config is not None:
        cfg["quantization_config"] = spec.quant_config
    folder = tempfile.mkdtemp(prefix=f"vllm-quant-{spec.key}-")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return folder, cfg


def run_group(spec: EngineSpec, args: argparse.Namespace) -> dict[str, Any]:
    """One vLLM engine: every case of `spec` in --cases; saved to --group-out after each step."""
    res: dict[str, Any] = {"engine": spec.key, "cases": {}, "errors": []}

    def save() -> None:
        with open(args.group_out, "w") as f:
            json.dump(res, f, indent=1, default=str)

    cases = [c for c in select_cases(args.cases) if c.engine.key == spec.key]
    workloads, batches = tasks_of(cases)
    try:  # the peer's readout of vLLM's resolved config, when its folder is at hand
        sys.path.insert(0, find_peer_dir(args.peer_dir))
        from vllm_side import cfg_readout
    except (FileNotFoundError, ImportError):
        def cfg_readout(llm: Any) -> dict:
            return {}

    from benchmarks.throughput import workload_prompts
    from benchmarks.workloads import load_workload
    from vllm import LLM, SamplingParams

    folder, cfg = model_dir(args.model_shape, spec)
    kwargs: dict[str, Any] = dict(model=folder, load_format="dummy", skip_tokenizer_init=True,
                                  dtype="bfloat16", seed=0,
                                  gpu_memory_utilization=args.gpu_memory_utilization)
    if spec.quant_config is None and spec.quantization:  # load-time method (fp8)
        kwargs["quantization"] = args.fp8_method if spec.quantization == "fp8" else \
            spec.quantization
    if spec.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = spec.kv_cache_dtype
    res["llm_kwargs"] = {k: v for k, v in kwargs.items() if k != "model"}
    res["quantization_config"] = spec.quant_config
    t0 = time.perf_counter()
    try:
        llm = LLM(**kwargs)
    except Exception as e:
        res["errors"].append(f"{spec.key} start-up: {type(e).__name__}: {e}")
        save()
        raise
    res["startup_s"] = time.perf_counter() - t0
    res["config"] = cfg_readout(llm)
    vc = getattr(llm.llm_engine, "vllm_config", None)
    res["quantization"] = str(getattr(getattr(vc, "model_config", None), "quantization", None))
    import torch
    res["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"[vllm {spec.key}] startup {res['startup_s']:.1f} s, quantization "
          f"{res['quantization']}", flush=True)
    save()
    max_len = res["config"].get("model_config.max_model_len")
    max_len = max_len if isinstance(max_len, int) else cfg["max_position_embeddings"]

    def sp(n: int, temperature: float = 1.0) -> Any:
        return SamplingParams(n=1, temperature=temperature, top_p=1.0, max_tokens=n,
                              ignore_eos=True, detokenize=False)

    for case in [c for c in cases if c.kind == "throughput"]:
        try:
            reqs = load_workload(case.workload, None, args.workload_dir)[:args.num_prompts]
            clipped, prompts, n_clipped = workload_prompts(SimpleNamespace(**cfg), reqs, max_len,
                                                           args.seed)
            # pagedserve's warm-up (throughput.run_engine): 8 prompt tokens, 4 output tokens
            llm.generate([{"prompt_token_ids": prompts[0][:8]}], [sp(4)], use_tqdm=False)
            inputs = [{"prompt_token_ids": list(p)} for p in prompts]
            t0 = time.perf_counter()
            outs = llm.generate(inputs, [sp(r.output_len) for r in clipped], use_tqdm=False)
            el = time.perf_counter() - t0
            ptok = sum(len(o.prompt_token_ids) for o in outs)
            otok = sum(len(c.token_ids) for o in outs for c in o.outputs)
            res["cases"][case.name] = {
                "workload": case.workload, "elapsed_s": el, "num_requests": len(outs),
                "prompt_tokens": ptok, "output_tokens": otok,
                "expected_output_tokens": sum(r.output_len for r in clipped),
                "num_clipped_to_context": n_clipped, "output_tok_s": otok / el,
                "total_tok_s": (ptok + otok) / el}
            print(f"[vllm {spec.key}] {case.name}: {otok / el:.0f} output tok/s", flush=True)
        except Exception as e:  # noqa: BLE001 - recorded, the other cases go on
            res["errors"].append(f"{case.name}: {type(e).__name__}: {e}")
            traceback.print_exc()
        save()
    if batches:
        try:
            from benchmarks.decode_latency import measure
            rows = measure(llm, lambda n: sp(n, 0.0), batches=tuple(batches),
                           inp=args.decode_input, out=args.decode_tokens)
            for case in [c for c in cases if c.kind == "decode"]:
                res["cases"][case.name] = {**rows["batches"][str(case.batch)],
                                           "batch": case.batch, "method": rows["method"]}
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"{spec.key} decode: {type(e).__name__}: {e}")
            traceback.print_exc()
        save()
    return res


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def main() -> None:
    args = parse_args()
    if args.group:
        run_group(ENGINES[args.group], args)
        return
    res: dict[str, Any] = {"engine": "vllm", "cases": {}, "errors": [], "engines": {},
                           "env": {k: v for k, v in os.environ.items()
                                   if k.startswith(("VLLM_", "HF_", "TRANSFORMERS_"))}}
    missing = [m for m in NEEDED_PACKAGES if not importable(m)]
    if missing:  # every case would fail after vLLM's start-up: stop before spending it
        res["errors"].append(f"packages {missing} are missing: vLLM 0.26 imports "
                             "compressed_tensors for every quantization method; carry the "
                             "wheels named in benchmarks/vllm_quant_side.py's docstring")
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        raise SystemExit(res["errors"][0])
    try:  # no CUDA context here: the engines' subprocesses get the whole GPU
        import torch
        import vllm
        res["versions"] = {"vllm": vllm.__version__, "torch": torch.__version__,
                           "python": platform.python_version(), "cuda": torch.version.cuda}
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"versions: {type(e).__name__}: {e}")
    for spec, cases in group_by_engine(select_cases(args.cases)):
        fd, path = tempfile.mkstemp(prefix=f"vllm-quant-{spec.key}-", suffix=".json")
        os.close(fd)
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--cases",
               ",".join(c.name for c in cases), "--group", spec.key, "--group-out", path]
        t0 = time.perf_counter()
        failure = run_isolated(cmd, args.case_timeout, spec.key)
        if failure:
            res["errors"].append(failure)
        try:
            with open(path) as f:
                group = json.load(f)
        except (OSError, ValueError):
            group = {"cases": {}, "errors": []}
        os.unlink(path)
        group["wall_s"] = time.perf_counter() - t0
        res["cases"].update(group.pop("cases"))
        res["errors"] += group.get("errors", [])
        res["engines"][spec.key] = group
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print("RESULT", json.dumps({
        name: round(c.get("output_tok_s") or c.get("per_token_ms") or 0, 3)
        for name, c in res["cases"].items()}), "errors", res["errors"], flush=True)


if __name__ == "__main__":
    main()
