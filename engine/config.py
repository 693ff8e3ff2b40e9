"""Engine configuration: frozen dataclasses validated at construction.

`EngineArgs` is the flat, user-facing bag of options (offline `LLM(...)` kwargs, CLI flags and
YAML keys share its field names); `EngineArgs.create_engine_config()` resolves it once into the
nested, immutable `EngineConfig` that every component receives explicitly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from engine.generation_config import GenerationDefaults, load_generation_defaults

PREEMPTION_MODES = ("recompute", "swap", "auto")
# "auto": the model dtype; "fp8" (= "fp8_e4m3"): float8_e4m3fn with per-tensor scale 1.0.
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")
LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _require(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}: {message}")


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when a GPU is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{device}' was requested but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on GPU and fp32 on CPU (exactness against HF in tests)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown dtype '{dtype}'; choose auto, float32, float16 or bfloat16")
    return DTYPES[dtype]


@dataclass(frozen=True)
class ModelConfig:
    """What to load and how. `hf_config` is the transformers config of the checkpoint."""

    model: str
    tokenizer: str
    hf_config: Any
    dtype: torch.dtype
    max_model_len: int
    load_format: str = "auto"
    gguf_file: Optional[str] = None
    trust_remote_code: bool = False
    seed: int = 0
    served_model_name: Optional[str] = None
    chat_template: Optional[str] = None
    # The resolved scheme (engine.quantization.QuantizationConfig) or None for dense weights.
    quant_config: Any = None
    # Sampling defaults for requests that leave them unset (engine/generation_config.py).
    generation_defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    def __post_init__(self) -> None:
        _require(self.max_model_len >= 1, "max_model_len", "must be >= 1")
        _require(self.load_format in LOAD_FORMATS, "load_format", f"must be one of {LOAD_FORMATS}")

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else ""

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: `num_kv_blocks` None means 'size from memory' at start-up."""

    block_size: int = 16
    num_kv_blocks: Optional[int] = None
    swap_space: float = 4.0  # GiB of CPU memory for swapped-out blocks
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_space: float = 4.0  # GiB for the KV pool when running on the CPU
    enable_prefix_caching: bool = False
    num_cpu_blocks: Optional[int] = None
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
                 f"must be one of {KV_CACHE_DTYPES}, got '{self.kv_cache_dtype}'")
        _require(self.block_size in (1, 2, 4, 8, 16, 32, 64, 128), "block_size",
                 "must be a power of two between 1 and 128")
        _require(self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks", "must be >= 1")
        _require(self.swap_space >= 0, "swap_space", "must be >= 0 GiB")
        _require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _require(self.cpu_kv_cache_space > 0, "cpu_kv_cache_space", "must be > 0 GiB")
        _require(self.num_cpu_blocks is None or self.num_cpu_blocks >= 0, "num_cpu_blocks", "must be >= 0")


@dataclass(frozen=True)
class SchedulerConfig:
    """Iteration-level batching limits. Chunked prefill is always on."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    preemption_mode: str = "recompute"
    max_queue_len: Optional[int] = None

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1")
        _require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", "must be >= 1")
        _require(self.preemption_mode in PREEMPTION_MODES, "preemption_mode",
                 f"must be one of {PREEMPTION_MODES}, got '{self.preemption_mode}'")


@dataclass(frozen=True)
class RunnerConfig:
    """Execution choices of the model runner."""

    device: torch.device
    enforce_eager: bool = False
    attention_backend: str = "auto"  # auto | torch | triton
    max_cuda_graph_batch: int = 256
    # Steps mixing prompts and decodes replay a CUDA graph up to this many tokens (0: eager).
    max_cuda_graph_tokens: int = 1024
    # Schedule and launch step N+1 while step N runs (see EngineCore.step).
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        _require(self.attention_backend in ("auto", "torch", "triton"), "attention_backend",
                 "must be auto, torch or triton")
        _require(self.max_cuda_graph_tokens >= 0, "max_cuda_graph_tokens", "must be >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor parallelism inside one engine core (one worker process per rank, rank 0 in the
    core's own process) and data parallelism across cores (one API server routing to
    `data_parallel_size` cores). A collective that waits on a peer for `distributed_timeout_s`
    fails the engine instead of hanging it."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        _require(self.data_parallel_size >= 1, "data_parallel_size", "must be >= 1")
        _require(self.distributed_timeout_s > 0, "distributed_timeout_s", "must be > 0 seconds")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    runner: RunnerConfig
    # engine.spec_decode.config.SpeculativeConfig, or None: no speculative decoding.
    speculative: Any = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class EngineArgs:
    """Flat engine options; names follow vLLM so users' scripts and flags port."""

    model: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    num_kv_blocks: Optional[int] = None
    max_model_len: Optional[int] = None
    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    preemption_mode: str = "recompute"
    swap_space: float = 4.0
    num_cpu_blocks: Optional[int] = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_space: float = 4.0
    enable_prefix_caching: bool = False
    seed: int = 0
    load_format: str = "auto"
    trust_remote_code: bool = False
    enforce_eager: bool = False
    max_cuda_graph_tokens: int = 1024
    attention_backend: str = "auto"
    served_model_name: Optional[str] = None
    chat_template: Optional[str] = None
    max_queue_len: Optional[int] = None
    skip_tokenizer_init: bool = False
    quantization: Optional[str] = None  # None: whatever the checkpoint's quantization_config says
    kv_cache_dtype: str = "auto"
    async_scheduling: Optional[bool] = None  # None: on for CUDA (not with eagle3), off on the CPU
    hf_overrides: dict = field(default_factory=dict)
    # {"method": "ngram" | "draft_model" | "eagle3", "num_speculative_tokens": k, ...}
    speculative_config: Optional[dict] = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_timeout_s: float = 300.0
    # Sampling defaults: "auto" (the model's generation_config.json), "vllm" (none) or a folder.
    generation_config: str = "auto"
    # Hugging Face generation keys merged over those defaults, e.g. {"temperature": 0.5}.
    override_generation_config: dict = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def create_engine_config(self) -> EngineConfig:
        # Imported here: the loader pulls in transformers, which config users may not need.
        from engine.loader.resolve import resolve_model

        speculative = None
        if self.speculative_config is not None:
            from engine.spec_decode.config import SpeculativeConfig
            speculative = SpeculativeConfig.from_dict(self.speculative_config)
            # Steps that may carry drafts run synchronously (a verify step's accepted count
            # decides the next step's input); the others overlap, with proposers that allow it.
            _require(not self.async_scheduling or speculative.overlaps_steps, "async_scheduling",
                     f"cannot be combined with speculative_config method {speculative.method!r}")
            # Verify chunks run on every rank like any chunk; a draft model or head is not
            # sharded across ranks yet.
            _require(self.tensor_parallel_size == 1 or speculative.method == "ngram",
                     "speculative_config", f"method {speculative.method!r} cannot be combined "
                     "with tensor_parallel_size > 1 yet (ngram can)")
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        resolved = resolve_model(self.model, self.tokenizer, self.load_format,
                                 self.trust_remote_code, self.hf_overrides)
        from engine.models.registry import check_quantization_support, get_model_class
        from engine.quantization import get_quantization_config
        # Unsupported architectures and quantization methods fail before any loading.
        model_cls = get_model_class(resolved.hf_config)
        quant_config = get_quantization_config(resolved.hf_config, self.quantization)
        check_quantization_support(model_cls, quant_config)
        _require(isinstance(self.override_generation_config, dict),
                 "override_generation_config", "must be a JSON object")
        generation_defaults = load_generation_defaults(
            self.generation_config, resolved.folder, self.override_generation_config)
        derived_len = max_len_from_hf_config(resolved.hf_config)
        if self.max_model_len is None:
            max_model_len = derived_len
        else:
            _require(self.max_model_len >= 1, "max_model_len", "must be >= 1")
            max_model_len = self.max_model_len
        model_cfg = ModelConfig(
            model=resolved.model, tokenizer=resolved.tokenizer, hf_config=resolved.hf_config,
            dtype=dtype, max_model_len=max_model_len, load_format=resolved.load_format,
            gguf_file=resolved.gguf_file, trust_remote_code=self.trust_remote_code, seed=self.seed,
            served_model_name=self.served_model_name, chat_template=self.chat_template,
            quant_config=quant_config, generation_defaults=generation_defaults,
        )
        cache_cfg = CacheConfig(
            block_size=self.block_size, num_kv_blocks=self.num_kv_blocks, swap_space=self.swap_space,
            gpu_memory_utilization=self.gpu_memory_utilization,
            cpu_kv_cache_space=self.cpu_kv_cache_space,
            enable_prefix_caching=self.enable_prefix_caching, num_cpu_blocks=self.num_cpu_blocks,
            kv_cache_dtype=self.kv_cache_dtype,
        )
        on_gpu = device.type == "cuda"
        max_num_seqs = self.max_num_seqs or (512 if on_gpu else 64)
        max_batched = self.max_num_batched_tokens or (8192 if on_gpu else 2048)
        sched_cfg = SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched,
            max_model_len=max_model_len, preemption_mode=self.preemption_mode,
            max_queue_len=self.max_queue_len,
        )
        # A verify step attends one decode row per token (engine/model_inputs.py): up to
        # max_num_seqs x (k + 1) rows, which decode graphs serve up to 512 rows and mixed graphs
        # (unless turned off with 0) up to 2048.
        graph_rows = max_num_seqs * (1 + (speculative.num_speculative_tokens
                                          if speculative is not None else 0))
        graph_tokens = self.max_cuda_graph_tokens
        if speculative is not None and graph_tokens > 0:
            graph_tokens = max(graph_tokens, min(graph_rows, 2048))
        runner_cfg = RunnerConfig(device=device, enforce_eager=self.enforce_eager,
                                  attention_backend=self.attention_backend,
                                  max_cuda_graph_batch=min(graph_rows, 512),
                                  max_cuda_graph_tokens=min(graph_tokens, max_batched),
                                  async_scheduling=(
                                      on_gpu and (speculative is None or speculative.overlaps_steps)
                                      if self.async_scheduling is None
                                      else self.async_scheduling))
        parallel_cfg = ParallelConfig(tensor_parallel_size=self.tensor_parallel_size,
                                      data_parallel_size=self.data_parallel_size,
                                      distributed_timeout_s=self.distributed_timeout_s)
        if parallel_cfg.tensor_parallel_size > 1 and device.type == "cuda":
            _require(torch.cuda.device_count() >= parallel_cfg.tensor_parallel_size,
                     "tensor_parallel_size", f"{parallel_cfg.tensor_parallel_size} ranks need as "
                     f"many GPUs; {torch.cuda.device_count()} visible")
        return EngineConfig(model=model_cfg, cache=cache_cfg, scheduler=sched_cfg, runner=runner_cfg,
                            parallel=parallel_cfg, speculative=speculative)


def max_len_from_hf_config(hf_config: Any) -> int:
    """The context length a checkpoint declares, under whichever name its family uses."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                "n_ctx"):
        val = getattr(hf_config, key, None)
        if isinstance(val, int) and val > 0:
            return val
    return 2048
