"""In-process engine: input processing, the engine core and output processing in one loop."""
from __future__ import annotations

from typing import Optional

from engine.config import EngineArgs, EngineConfig
from engine.engine_core import EngineCore
from engine.input_processor import InputProcessor
from engine.output_processor import OutputProcessor
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


class LLMEngine:
    """Step API for callers that drive the engine themselves (the offline `LLM`, tests).

    `add_request` validates before anything is allocated (ValueError naming the field);
    `step` runs one scheduler iteration and returns the cumulative state of every request that
    made progress; `abort_request` frees a request's blocks at once.
    """

    def __init__(self, config: EngineConfig, skip_tokenizer_init: bool = False):
        from engine.loader.tokenizer import get_tokenizer

        self.config = config
        self.tokenizer = None if skip_tokenizer_init else get_tokenizer(config.model)
        self.core = EngineCore(config)
        self.input_processor = InputProcessor(config.model, self.tokenizer,
                                              self.core.runner.vocab_size,
                                              self.core.num_gpu_blocks, config.cache.block_size,
                                              config.scheduler.max_num_seqs,
                                              speculative=config.speculative is not None)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args.create_engine_config(), skip_tokenizer_init=args.skip_tokenizer_init)

    @property
    def model_config(self):
        return self.config.model

    def get_tokenizer(self):
        return self.tokenizer

    def add_request(self, request_id: str, prompt: Optional[str], params: SamplingParams,
                    prompt_token_ids: Optional[list[int]] = None,
                    arrival_time: Optional[float] = None, add_special_tokens: bool = True,
                    final_only: bool = False) -> None:
        """Validate, tokenize and queue a request. With `final_only`, `step` reports it only
        once it has finished (no per-step outputs to build)."""
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request_id: '{request_id}' is already in use")
        core_req = self.input_processor.process(request_id, prompt, prompt_token_ids, params,
                                                arrival_time, add_special_tokens)
        self.output_processor.add_request(request_id, prompt, core_req.prompt_token_ids, params,
                                          final_only=final_only)
        # Nothing is built per step for a request whose intermediate outputs nobody reads.
        core_req.final_only = self.output_processor.needs_only_final(request_id)
        self.core.add_request(core_req)

    def abort_request(self, request_id: str) -> None:
        self.core.abort_requests([request_id])
        self.output_processor.abort(request_id)

    def step(self) -> list[RequestOutput]:
        processed = self.output_processor.process_outputs(self.core.step())
        for request_id, indices in processed.seqs_to_stop:
            self.core.stop_seqs(request_id, indices)
        return processed.request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def stats(self) -> dict:
        return self.core.stats()
