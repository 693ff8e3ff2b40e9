"""pagedserve engine: scheduler, block manager, model runner, models, sampler, offline API.

`from engine import LLM, SamplingParams` is the offline entry point (vLLM-compatible names).
"""
from engine.config import EngineArgs
from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import SamplingParams


def __getattr__(name):
    # LLM and LLMEngine pull in torch models and transformers; import them on first use.
    if name == "LLM":
        from engine.llm import LLM
        return LLM
    if name == "LLMEngine":
        from engine.llm_engine import LLMEngine
        return LLMEngine
    raise AttributeError(name)


__all__ = ["LLM", "LLMEngine", "EngineArgs", "SamplingParams", "RequestOutput", "CompletionOutput"]
