"""Turn the user's `model` / `tokenizer` strings into a local source, an HF config and a load format.

Accepted models: None (the default GGUF model), a `.gguf` file, a local HF folder with config.json
(safetensors, sharded or not, or pytorch_model*.bin; config alone with load_format="dummy"), or a
hub id fetched with huggingface_hub. Every failure is a ValueError that names what was asked for.
"""
from __future__ import annotations

import copy
import functools
import glob
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from engine.loader.default_model import default_model_path

# GGUF `general.architecture` / HF model_type -> the architecture our registry knows it as.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                      "qwen2": "Qwen2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "merges.txt",
                 "vocab.txt", "*.jinja"]


@dataclass(frozen=True, eq=False)
class ResolvedModel:
    """Where the model and tokenizer come from and how to load the weights.

    `model` is the path or hub id as given (the default model's GGUF path when None was given);
    `tokenizer` is a local folder or `.gguf` path; `load_format` is one of safetensors, pt, gguf,
    dummy; `gguf_file` is the GGUF path when the weights are a GGUF file; `folder` is the local
    HF folder of the model (None for a GGUF file).
    """

    model: str
    tokenizer: str
    hf_config: Any
    load_format: str
    gguf_file: Optional[str] = None
    folder: Optional[str] = None


def resolve_model(model: Optional[str], tokenizer: Optional[str], load_format: str = "auto",
                  trust_remote_code: bool = False,
                  hf_overrides: Optional[dict] = None) -> ResolvedModel:
    """Resolve model/tokenizer sources, read the HF config and pick the concrete load format."""
    if model is None:
        model = default_model_path()
    if model.endswith(".gguf"):
        resolved = _resolve_gguf(model, load_format)
    else:
        folder = local_model_dir(model)
        resolved = ResolvedModel(model=model, tokenizer=folder,
                                 hf_config=_load_config(folder, trust_remote_code),
                                 load_format=_folder_format(folder, model, load_format),
                                 folder=folder)
    config = resolved.hf_config
    for key, value in (hf_overrides or {}).items():
        setattr(config, key, value)
    if not getattr(config, "architectures", None):
        raise ValueError(f"model '{model}': its config names no architecture "
                         f"(model_type {getattr(config, 'model_type', None)!r})")
    tok = resolve_tokenizer(tokenizer) if tokenizer is not None else resolved.tokenizer
    return ResolvedModel(model=resolved.model, tokenizer=tok, hf_config=config,
                         load_format=resolved.load_format, gguf_file=resolved.gguf_file,
                         folder=resolved.folder)


def resolve_tokenizer(tokenizer: str) -> str:
    """A local folder or .gguf path for a tokenizer given as path or hub id."""
    if tokenizer.endswith(".gguf"):
        if not os.path.isfile(tokenizer):
            raise ValueError(f"tokenizer: GGUF file '{tokenizer}' does not exist")
        return os.path.abspath(tokenizer)
    return local_model_dir(tokenizer, what="tokenizer")


def local_model_dir(model: str, what: str = "model") -> str:
    """The local folder holding `model`: the path itself, or a hub snapshot (downloaded if needed)."""
    if os.path.isdir(model):
        return os.path.abspath(model)
    if os.path.exists(model):
        raise ValueError(f"{what} '{model}' is a file, not a model folder or a .gguf file")
    if not _HUB_ID.match(model) or model.startswith((".", "~")):
        raise ValueError(f"{what} path '{model}' does not exist")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(model, allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # offline, unknown repo, gated, bad revision: all the same to users
        raise ValueError(f"{what} '{model}' is neither a local path nor reachable on the Hugging "
                         f"Face hub ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _resolve_gguf(path: str, load_format: str) -> ResolvedModel:
    if not os.path.isfile(path):
        raise ValueError(f"model: GGUF file '{path}' does not exist")
    if load_format not in ("auto", "gguf", "dummy"):
        raise ValueError(f"load_format: '{load_format}' cannot load the GGUF file '{path}'")
    path = os.path.abspath(path)
    config = copy.deepcopy(_gguf_config(path, os.path.getmtime(path)))
    fmt = "dummy" if load_format == "dummy" else "gguf"
    return ResolvedModel(model=path, tokenizer=path, hf_config=config, load_format=fmt,
                         gguf_file=path)


@functools.lru_cache(maxsize=4)
def _gguf_config(path: str, mtime: float) -> Any:
    """HF config from GGUF metadata (cached: transformers takes seconds to parse the file)."""
    from transformers import AutoConfig

    from engine.loader.gguf_hf_parse import reused_gguf_parse

    try:
        with reused_gguf_parse():
            config = AutoConfig.from_pretrained(os.path.dirname(path),
                                                gguf_file=os.path.basename(path))
    except Exception as exc:
        raise ValueError(f"model: cannot read a config from GGUF file '{path}': {exc}") from exc
    if not getattr(config, "architectures", None):
        arch = GGUF_ARCHITECTURES.get(config.model_type)
        if arch is None:
            raise ValueError(f"model: GGUF architecture '{config.model_type}' is not supported "
                             f"(supported: {', '.join(GGUF_ARCHITECTURES)})")
        config.architectures = [arch]
    return config


def _load_config(folder: str, trust_remote_code: bool) -> Any:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"model folder '{folder}' has no config.json")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ValueError(f"model folder '{folder}': cannot read config.json: {exc}") from exc


def _folder_format(folder: str, model: str, load_format: str) -> str:
    """The concrete weight format for a folder; ValueError when its weights are absent."""
    if load_format == "dummy":
        return "dummy"
    if load_format == "gguf":
        raise ValueError(f"load_format: 'gguf' needs a .gguf file, got the folder '{model}'")
    has_st = bool(glob.glob(os.path.join(folder, "*.safetensors")))
    has_bin = bool(glob.glob(os.path.join(folder, "*.bin")))
    if not has_st and not has_bin and not os.path.isdir(model):
        has_bin = _fetch_bin(model, folder)  # hub repo without safetensors
    if load_format in ("auto", "safetensors") and has_st:
        return "safetensors"
    if load_format in ("auto", "pt") and has_bin:
        return "pt"
    wanted = {"auto": "safetensors or .bin", "safetensors": "safetensors",
              "pt": "pytorch .bin"}[load_format]
    raise ValueError(f"model '{model}' has no {wanted} weights in '{folder}' "
                     "(use load_format='dummy' for random weights)")


def _fetch_bin(model: str, folder: str) -> bool:
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(model, allow_patterns=["*.bin"])
    except Exception:
        return False
    return bool(glob.glob(os.path.join(folder, "*.bin")))
