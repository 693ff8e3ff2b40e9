"""Tokenizers through transformers' AutoTokenizer, cached per source within the process."""
from __future__ import annotations

import functools
import os
from typing import Any, Optional


def get_tokenizer(source: Any, gguf_file: Optional[str] = None,
                  trust_remote_code: bool = False) -> Any:
    """The tokenizer of a ModelConfig, or of a folder / `.gguf` path.

    GGUF tokenizers are built by transformers from the file's metadata. The result is cached (and
    shared) per source, since a GGUF tokenizer takes seconds to build.
    """
    if isinstance(source, str):
        path = source
    else:  # a ModelConfig
        path = source.tokenizer
        trust_remote_code = source.trust_remote_code
        if gguf_file is None and path == source.model:
            gguf_file = source.gguf_file
    if path.endswith(".gguf"):
        gguf_file = path
    if gguf_file is not None:
        gguf_file = os.path.abspath(gguf_file)
        if not os.path.isfile(gguf_file):
            raise ValueError(f"tokenizer: GGUF file '{gguf_file}' does not exist")
        return _load(os.path.dirname(gguf_file), os.path.basename(gguf_file), trust_remote_code)
    if not os.path.isdir(path):
        from engine.loader.resolve import resolve_tokenizer
        path = resolve_tokenizer(path)
    return _load(os.path.abspath(path), None, trust_remote_code)


@functools.lru_cache(maxsize=8)
def _load(folder: str, gguf_name: Optional[str], trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_name is not None:
        kwargs["gguf_file"] = gguf_name
    from engine.loader.gguf_hf_parse import reused_gguf_parse

    try:
        with reused_gguf_parse():
            return AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as exc:
        where = os.path.join(folder, gguf_name) if gguf_name else folder
        raise ValueError(f"cannot load a tokenizer from '{where}': {exc}") from exc
