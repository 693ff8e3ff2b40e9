"""The contract between the scheduler and the model runner for one step."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.sequence import Request, Sequence


@dataclass(slots=True)
class ScheduledSeq:
    """Run `num_tokens` tokens of `seq`: `token_ids[num_computed : num_computed + num_tokens]`.

    `sample_seqs` lists the sequences that sample their next token from the logits of this
    sequence's last scheduled token: empty when the sequence is still catching up (a prefill
    chunk), `[seq]` for a decode, and the request's fresh siblings too when a prompt with n > 1
    finishes its prefill (all samples draw from the same prompt logits).
    """

    request: Request
    seq: Sequence
    num_tokens: int
    sample_seqs: list[Sequence] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.seq.num_computed_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        params = self.request.params
        return (params.prompt_logprobs is not None and self.seq is self.request.leader
                and self.start < self.request.prompt_len
                and len(self.request.prompt_logprobs) < self.request.prompt_len)


@dataclass
class SchedulerOutput:
    """Everything the runner does this step, in order: swap out, swap in, copy, run."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu, gpu)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) on the gpu
    num_batched_tokens: int = 0
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def has_block_ops(self) -> bool:
        return bool(self.blocks_to_swap_out or self.blocks_to_swap_in or self.blocks_to_copy)
