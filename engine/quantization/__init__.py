"""Quantization schemes behind one interface (`base.py`): a registry from the checkpoint's
`quantization_config.quant_method` (or the `quantization=` option) to the scheme's config class.

`get_quantization_config` runs while the engine config is built, so an unknown or unsupported
method fails before any weight is read, naming the supported ones.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from engine.quantization.base import LinearMethod, QuantizationConfig

# method name -> (module under engine.quantization, config class)
_METHODS: dict[str, tuple[str, str]] = {
    "gptq": ("gptq", "GPTQConfig"),
    "awq": ("awq", "AWQConfig"),
    "auto-round": ("auto_round", "AutoRoundConfig"),
    "compressed-tensors": ("compressed_tensors", "CompressedTensorsConfig"),
    "fp8": ("fp8", "Fp8Config"),
}
_ALIASES = {"auto_round": "auto-round", "autoround": "auto-round",
            "compressed_tensors": "compressed-tensors"}

SUPPORTED_METHODS: tuple[str, ...] = tuple(_METHODS)


def _config_class(method: str) -> type[QuantizationConfig]:
    module_name, cls_name = _METHODS[method]
    return getattr(importlib.import_module(f"engine.quantization.{module_name}"), cls_name)


def normalize_method(method: str) -> str:
    name = _ALIASES.get(method.lower(), method.lower())
    if name not in _METHODS:
        raise ValueError(f"quantization: method {method!r} is not supported; supported methods: "
                         f"{', '.join(SUPPORTED_METHODS)}")
    return name


def checkpoint_quant_dict(hf_config: Any) -> Optional[dict[str, Any]]:
    """The checkpoint's `quantization_config` as a dict (None when it has none)."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else dict(vars(qc))
    return qc


def get_quantization_config(hf_config: Any,
                            requested: Optional[str] = None) -> Optional[QuantizationConfig]:
    """The scheme for this checkpoint: its own `quantization_config`, checked against `requested`
    when both are given; `requested` alone for load-time schemes. ValueError naming the supported
    methods for anything unknown."""
    qdict = checkpoint_quant_dict(hf_config)
    ckpt_method = None
    if qdict is not None:
        raw = qdict.get("quant_method")
        if not raw:
            raise ValueError("quantization_config of the checkpoint names no quant_method")
        ckpt_method = normalize_method(str(raw))
    req = normalize_method(requested) if requested else None
    if ckpt_method and req and req != ckpt_method:
        raise ValueError(f"quantization: {requested!r} requested but the checkpoint is "
                         f"quantized with {ckpt_method!r}")
    method = ckpt_method or req
    if method is None:
        return None
    return _config_class(method).from_config(qdict or {})


__all__ = ["LinearMethod", "QuantizationConfig", "SUPPORTED_METHODS", "get_quantization_config",
           "normalize_method"]
