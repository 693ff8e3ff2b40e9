"""Structured outputs: JSON schema / regex / choice / EBNF constraints through xgrammar.

- `params.StructuredOutputsParams`: what a request asks for (vLLM's names).
- `backend.GrammarBackend`: compiles specs in a thread pool with a timeout, cached per
  (tokenizer, spec); one per tokenizer (`get_backend`).
- `request_grammar.RequestGrammar`: a request's compiled grammar and one matcher per sequence.
- `logits_processor.GrammarLogitsProcessor`: the sampler hook that masks constrained rows.
- `manager.StructuredOutputManager`: the engine core's side (compiles off the loop, holds
  requests until their grammar is ready).
"""
from engine.structured_output.params import GrammarError, StructuredOutputsParams

__all__ = ["GrammarError", "StructuredOutputsParams"]
