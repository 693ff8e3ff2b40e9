"""The engine core's side of structured outputs.

A constrained request is held here until its grammar has compiled (in the backend's pool, off
the engine loop), then handed to the scheduler with `request.grammar` set. The frontend already
compiled the same spec to validate it, so in one process (offline `LLM`) this is a cache hit;
the engine-core process compiles it once more (and loads the tokenizer on first use).
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Any, Optional

from engine.sequence import Request
from engine.structured_output.backend import GrammarBackend, get_backend
from engine.structured_output.logits_processor import GrammarLogitsProcessor
from engine.structured_output.request_grammar import RequestGrammar

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    def __init__(self, model_config: Any, vocab_size: int):
        self.model_config = model_config
        self.vocab_size = vocab_size
        self.processor = GrammarLogitsProcessor(vocab_size)
        self._backend: Optional[GrammarBackend] = None
        self._backend_lock = threading.Lock()
        self._setup = cf.ThreadPoolExecutor(1, thread_name_prefix="grammar-setup")
        self._waiting: list[tuple[Request, cf.Future]] = []

    def _get_backend(self, eos: Optional[int]) -> GrammarBackend:
        with self._backend_lock:
            if self._backend is None:
                from engine.loader.tokenizer import get_tokenizer
                tok = get_tokenizer(self.model_config)
                self._backend = get_backend(tok, self.vocab_size,
                                            [eos] if eos is not None else [])
            return self._backend

    def _compile(self, req: Request) -> Any:
        backend = self._get_backend(req.eos_token_id)
        return backend.compile(req.params.structured_outputs, timeout=None)

    def add(self, req: Request) -> None:
        if self._backend is not None:
            fut = self._backend.submit(req.params.structured_outputs)
        else:
            fut = self._setup.submit(self._compile, req)
        self._waiting.append((req, fut))

    def abort(self, request_id: str) -> bool:
        n = len(self._waiting)
        self._waiting = [(r, f) for r, f in self._waiting if r.request_id != request_id]
        return len(self._waiting) != n

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def pop_ready(self) -> tuple[list[Request], list[tuple[Request, str]]]:
        """Requests whose grammar is ready (grammar attached), and (request, error) failures."""
        if not self._waiting:
            return [], []
        ready, failed, still = [], [], []
        for req, fut in self._waiting:
            if not fut.done():
                still.append((req, fut))
                continue
            exc = fut.exception()
            if exc is not None:
                failed.append((req, str(exc)))
            else:
                req.grammar = RequestGrammar(fut.result())
                ready.append(req)
        self._waiting = still
        return ready, failed
