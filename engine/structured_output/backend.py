"""Grammar compilation with xgrammar: off the caller's thread, cached, with a timeout.

One `GrammarBackend` per (tokenizer, vocabulary size): it holds xgrammar's `TokenizerInfo` and
compiler, and a cache of compile futures keyed by the spec's hash, so a spec is compiled once per
process however many requests (or threads) ask for it. A compile that fails is cached as the
failure (the same spec fails the same way). A compile that outlives its timeout cannot be
interrupted inside xgrammar; it finishes in its pool thread and the caller gets a GrammarError.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import OrderedDict
from typing import Any, Optional

from engine.structured_output.params import GrammarError, StructuredOutputsParams

DEFAULT_COMPILE_TIMEOUT_S = 10.0
_MAX_CACHED = 1024
_MAX_WHITESPACE = 12  # longest whitespace run between JSON tokens (pretty-printing fits)
# What each spec kind is called in an error, after the request field that carried it.
_WHAT = {"json": "JSON schema", "regex": "regex", "grammar": "EBNF grammar",
         "choice": "choice list", "json_object": "JSON grammar"}


class GrammarBackend:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 max_workers: int = 2):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids or None)
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=max_workers)
        self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[str, cf.Future] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, params: StructuredOutputsParams) -> cf.Future:
        """A future of the compiled grammar (shared with every earlier ask for the same spec)."""
        key = params.key()
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None:
                self._cache.move_to_end(key)
                return fut
            fut = self._pool.submit(self._compile, params)
            self._cache[key] = fut
            while len(self._cache) > _MAX_CACHED:
                self._cache.popitem(last=False)
            return fut

    def compile(self, params: StructuredOutputsParams,
                timeout: Optional[float] = DEFAULT_COMPILE_TIMEOUT_S) -> Any:
        """The compiled grammar, or GrammarError naming `params.field`."""
        fut = self.submit(params)
        try:
            return fut.result(timeout=timeout)
        except cf.TimeoutError:
            raise GrammarError(f"{params.field}: the {_WHAT[params.kind]} did not compile within "
                               f"{timeout:g} s") from None

    def _compile(self, params: StructuredOutputsParams) -> Any:
        kind, c = params.kind, self._compiler
        try:
            if kind == "json":
                # Runs of whitespace are bounded: small models otherwise loop on newlines.
                return c.compile_json_schema(_schema_text(params.json),
                                             any_whitespace=not params.disable_any_whitespace,
                                             max_whitespace_cnt=_MAX_WHITESPACE)
            if kind == "json_object":  # OpenAI's JSON mode: any JSON object
                return c.compile_json_schema('{"type": "object"}',
                                             any_whitespace=not params.disable_any_whitespace,
                                             max_whitespace_cnt=_MAX_WHITESPACE)
            if kind == "regex":
                return c.compile_regex(params.regex)
            if kind == "choice":
                return c.compile_grammar(_choice_ebnf(params.choice))
            return c.compile_grammar(params.grammar)
        except Exception as exc:  # xgrammar reports every problem as RuntimeError/ValueError
            raise GrammarError(f"{params.field}: invalid {_WHAT[kind]}: "
                               f"{_clean(str(exc))}") from None


def _schema_text(schema: Any) -> str:
    import json
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    return json.dumps(schema)


def _choice_ebnf(choices: list[str]) -> str:
    import json
    # EBNF string literals use JSON's escapes.
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def _clean(msg: str) -> str:
    """xgrammar's messages start with '[time] /path/file.cc:line: '; keep what follows."""
    msg = msg.strip()
    if msg.startswith("[") and ": " in msg:
        head, _, rest = msg.partition(".cc:")
        if rest:
            msg = rest.split(": ", 1)[-1]
    return msg.splitlines()[0][:500] if msg else "compile failed"


_backends: dict[tuple[int, int], GrammarBackend] = {}
_backends_lock = threading.Lock()


def get_backend(tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> GrammarBackend:
    """The process's backend for this tokenizer (built once: the TokenizerInfo costs ~0.1 s)."""
    key = (id(tokenizer), vocab_size)
    with _backends_lock:
        b = _backends.get(key)
        if b is None:
            b = _backends[key] = GrammarBackend(tokenizer, vocab_size, stop_token_ids)
        return b
