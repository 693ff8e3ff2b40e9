"""The quantization benchmark's cases, shared by pagedserve's side (`quantization.py`) and vLLM's
(`vllm_quant_side.py`) so both engines run the same schemes with the same `quantization_config`.

Pure Python (no torch): vLLM's side imports it inside its own bundle.

A case is either `throughput` (offline output tok/s on a workload, compared with a bf16 run of the
same requests) or `decode` (per-token decode time at one batch size, measured by the vLLM peer's
gen_latency.py: (t(256 tokens) - t(1 token)) / 255). Cases that share an engine (same method and
config) share one model load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

# llmcompressor's W8A8 int8 layout (SmoothQuant/GPTQ recipes): int8 per-channel weights, dynamic
# per-token int8 activations.
INT8_W8A8_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "format": "int-quantized",
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                    "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                              "strategy": "token", "dynamic": True},
        "output_activations": None,
    }},
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
}
GPTQ_W4_G128_CONFIG: dict[str, Any] = {
    "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
    "checkpoint_format": "gptq",
}
AWQ_W4_G128_CONFIG: dict[str, Any] = {
    "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
}


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built with: a load-time method (`quantization=`) and/or a checkpoint
    `quantization_config` (written into config.json; pagedserve takes it as an HF override)."""

    key: str
    quantization: Optional[str] = None
    quant_config: Optional[dict[str, Any]] = None
    kv_cache_dtype: str = "auto"


@dataclass(frozen=True)
class Case:
    name: str
    engine: EngineSpec
    kind: str  # "throughput" | "decode"
    workload: str = "sharegpt_like"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("throughput", "decode"):
            raise ValueError(f"case {self.name}: kind must be throughput or decode")


BF16 = EngineSpec("bf16")
FP8_KV_FP8 = EngineSpec("fp8_kv_fp8", quantization="fp8", kv_cache_dtype="fp8")
INT8 = EngineSpec("int8_w8a8", quantization="compressed-tensors",
                  quant_config=INT8_W8A8_CONFIG)
GPTQ = EngineSpec("gptq_w4_g128", quantization="gptq", quant_config=GPTQ_W4_G128_CONFIG)
AWQ = EngineSpec("awq_w4_g128", quantization="awq", quant_config=AWQ_W4_G128_CONFIG)

ENGINES: dict[str, EngineSpec] = {e.key: e for e in (BF16, FP8_KV_FP8, INT8, GPTQ, AWQ)}
CASES: dict[str, Case] = {c.name: c for c in (
    Case("fp8_w8a8_kv_fp8_sharegpt_like", FP8_KV_FP8, "throughput"),
    Case("int8_sharegpt_like", INT8, "throughput"),
    Case("w4a16_bs1", GPTQ, "decode", batch=1),
    Case("w4a16_bs64", GPTQ, "decode", batch=64),
    Case("awq_bs1", AWQ, "decode", batch=1),
)}
DEFAULT_CASES = tuple(CASES)


def select_cases(names: str) -> list[Case]:
    """Comma-separated case names (or "all") -> cases, in the order given."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted == ["all"]:
        return list(CASES.values())
    unknown = [n for n in wanted if n not in CASES]
    if unknown or not wanted:
        raise ValueError(f"unknown case(s) {unknown or names!r}; known: {', '.join(CASES)}")
    return [CASES[n] for n in wanted]


def group_by_engine(cases: list[Case]) -> list[tuple[EngineSpec, list[Case]]]:
    """Cases grouped by engine, engines in order of first use (one model load each)."""
    groups: dict[str, tuple[EngineSpec, list[Case]]] = {}
    for c in cases:
        groups.setdefault(c.engine.key, (c.engine, []))[1].append(c)
    return list(groups.values())


def tasks_of(cases: list[Case]) -> tuple[list[str], list[int]]:
    """The workloads to run offline and the decode batch sizes to time for `cases`."""
    workloads = list(dict.fromkeys(c.workload for c in cases if c.kind == "throughput"))
    batches = list(dict.fromkeys(c.batch for c in cases if c.kind == "decode"))
    return workloads, batches


def find_peer_dir(explicit: Optional[str] = None) -> str:
    """The folder holding the vLLM peer's gen_latency.py: `explicit`, $PAGEDSERVE_VLLM_PEER, the
    shared ../shared/vllm-peer beside the checkout, or the carried bundle .carry/vllm."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [explicit, os.environ.get("PAGEDSERVE_VLLM_PEER"),
                  os.path.join(repo, "..", "shared", "vllm-peer"),
                  os.path.join(repo, ".carry", "vllm")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "gen_latency.py")):
            return os.path.abspath(c)
    raise FileNotFoundError("gen_latency.py (the vLLM peer's decode-latency method) not found in "
                            f"{[c for c in candidates if c]}; pass --peer-dir")
