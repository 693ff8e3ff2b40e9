"""Model registry: HF `config.architectures[0]` -> our implementation class (imported lazily)."""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# architecture name -> (module under engine.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel"),
    "OPTForCausalLM": ("opt", "OPTForCausalLM"),
    "GPTNeoXForCausalLM": ("gpt_neox", "GPTNeoXForCausalLM"),
    "PhiForCausalLM": ("phi", "PhiForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM"),
    "Gemma2ForCausalLM": ("gemma2", "Gemma2ForCausalLM"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM"),
    "Qwen3MoeForCausalLM": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "Qwen2MoeForCausalLM": ("qwen3_moe", "Qwen2MoeForCausalLM"),
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_MODELS)


def get_model_class(hf_config: Any) -> type[nn.Module]:
    """The class implementing `hf_config.architectures[0]`; ValueError naming it if unsupported."""
    archs = getattr(hf_config, "architectures", None) or []
    arch = archs[0] if archs else None
    if arch not in _MODELS:
        raise ValueError(f"model architecture {arch!r} is not supported; supported architectures: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    module_name, cls_name = _MODELS[arch]
    module = importlib.import_module(f"engine.models.{module_name}")
    return getattr(module, cls_name)


def quantization_refusal(model_cls: type, scheme: str) -> str:
    """The error for a quantized checkpoint (or `quantization=`) on an architecture without
    quantized weights (`supports_quantization` False); names the class's
    `quantization_limitation` when it declares one."""
    why = getattr(model_cls, "quantization_limitation", "")
    return (f"quantization: architecture {model_cls.__name__} does not support quantized weights "
            f"yet ({scheme})" + (f": {why}" if why else ""))


def check_quantization_support(model_cls: type, quant_config: Any) -> None:
    """ValueError (before any weight is read) when `quant_config` is set and `model_cls` cannot
    load quantized weights."""
    if quant_config is not None and not getattr(model_cls, "supports_quantization", False):
        raise ValueError(quantization_refusal(model_cls, quant_config.describe()))
