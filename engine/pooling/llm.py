"""`LLM(runner="pooling")`: the offline embedding API, vLLM's names (`embed`)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from engine.pooling.engine import EmbeddingRequestOutput, Input, PoolingEngine


class PoolingLLM:
    """What `LLM(model, runner="pooling", ...)` returns: `embed(prompts)` -> vectors."""

    runner = "pooling"

    def __init__(self, model: Optional[str] = None, **kwargs: Any):
        self.engine = PoolingEngine(model=model, **kwargs)

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def embed(self, prompts: Union[Input, Sequence[Input]], use_tqdm: bool = False,
              dimensions: Optional[int] = None) -> list[EmbeddingRequestOutput]:
        """One `EmbeddingRequestOutput` per prompt (a string or a list of token ids), in order;
        `output.outputs.embedding` is the (normalised, where the model's pooling says so) vector."""
        del use_tqdm  # one call is one batch; accepted for vLLM compatibility
        return self.engine.embed(prompts, dimensions=dimensions)

    def generate(self, *args: Any, **kwargs: Any):
        raise ValueError("runner: this LLM was built with runner='pooling'; "
                         "use LLM(model) (runner='generate') to generate text")
