"""One transformers parse of a GGUF file's metadata per process, not one per use.

transformers builds a config or a tokenizer from a GGUF file through
`modeling_gguf_pytorch_utils.load_gguf_checkpoint(path, return_tensors=False)`, which decodes the
whole metadata, vocabulary included, every time: an engine start asks for the config twice
(`resolve_model`, then AutoTokenizer's own look at it), ~7 s each for the default model and
~30 s each for Gemma 3's 262k-token vocabulary on two cores. Inside `reused_gguf_parse()` those
calls share the last file's parse (keyed by path, size and modification time; each caller gets
its own deep copy, since transformers edits the dicts it is given).
"""
from __future__ import annotations

import contextlib
import copy
import os
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_last: dict[tuple, Any] = {}   # at most one entry: the file parsed last


def _key(path: str) -> tuple:
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def reused_gguf_parse() -> Iterator[None]:
    try:
        from transformers import modeling_gguf_pytorch_utils as hf_gguf
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    original = hf_gguf.load_gguf_checkpoint
    if getattr(original, "_reuses_parse", False):  # nested
        yield
        return

    def load(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return original(path, return_tensors, *args, **kwargs)
        key = _key(path)
        with _lock:
            if key not in _last:
                parsed = original(path, return_tensors=False)
                _last.clear()
                _last[key] = parsed
            return copy.deepcopy(_last[key])

    load._reuses_parse = True  # type: ignore[attr-defined]
    hf_gguf.load_gguf_checkpoint = load
    try:
        yield
    finally:
        hf_gguf.load_gguf_checkpoint = original
