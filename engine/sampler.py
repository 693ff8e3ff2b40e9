"""Turn one step's logits into next tokens, with logprobs.

Processing order for each row (one row per sequence to sample, in `SamplingMetadata` order):

0. Logits processors (hooks such as structured outputs' grammar mask), in place, in order.
1. `logit_bias`: added to the named tokens (ids outside the vocabulary are ignored).
2. `min_tokens`: while the sequence has fewer than `min_tokens` output tokens, its
   `stop_token_ids` and the EOS token (unless `ignore_eos`) get -inf.
3. `repetition_penalty` (HF semantics): every token seen in prompt + output has its logit divided
   by the penalty when positive and multiplied by it when negative.
4. `presence_penalty` / `frequency_penalty` (OpenAI semantics, output tokens only):
   `logit -= frequency_penalty * count + presence_penalty * (count > 0)`.
5. Greedy rows (`temperature == 0`) take the argmax here. With none of 1-4 active this is the
   argmax of the raw logits, bit for bit.
6. Other rows: divide by temperature, then top-k, top-p, min-p masking, then sample.

Sampling uses the exponential race (equivalent to the Gumbel-max trick): with q ~ Exp(1) i.i.d.
per token, `argmax(p / q)` is distributed as `p`. It needs no normalisation and no sort, and the
randomness is one Exp(1) draw per vocabulary entry per step, so a seeded row always consumes the
same amount of its generator. Rows whose sequence has a `generator` (requests with a `seed`) take
one key a step from it, and their noise is a counter-based function of that key computed on the
logits' device (`engine/seeded_noise.py`); so the same seed gives the same tokens whatever else is
in the batch (and the same noise on CPU or CUDA up to the last bit of a log; tokens then agree up
to the devices' softmax rounding). Greedy rows never consume their generator. Rows without a seed
share one batched draw on the device from torch's global generator.

On CUDA, steps whose rows need only greedy or plain temperature sampling (no 1-4, no top-k /
top-p / min-p, no per-request seed, no top logprobs) run `gpu_kernels/sampling.py` instead: one read
of the logits gives each row's token (Gumbel-max with in-kernel Philox noise, the same
distribution as the race above) and its raw logprob, instead of a dozen full-vocabulary passes.

Logprobs are always those of the raw model distribution (log_softmax of the unprocessed logits),
like vLLM V1 and HF's `compute_transition_scores` on raw scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from engine import seeded_noise
from engine.sequence import Request, Sequence
from engine.token_history import penalty_token_tensors
from engine.transfer import to_device

_NEG_INF = float("-inf")
# Top-k + top-p work on the top-k candidates (no full sort) when every row has k <= this.
_SMALL_K = 1024


@dataclass
class SamplerOutput:
    """Per row: sampled token, its raw logprob, and (when asked for) the top-k raw logprobs."""

    token_ids: list[int]
    logprobs: list[float]
    # {token_id: logprob}: the sampled token first, then the top-k in rank order (k = the row's
    # params.logprobs); None for rows that did not ask for logprobs.
    top_logprobs: list[Optional[dict[int, float]]]


@dataclass
class SamplingMetadata:
    """Everything the sampler needs for one step, as device tensors built once per step.

    Optional tensors are None when no row needs that stage, so the common path skips it.
    Invariant: every per-row tensor has `num_rows` rows, in the order the logits rows come.
    """

    num_rows: int
    vocab_size: int
    device: torch.device
    all_greedy: bool
    greedy: torch.Tensor                       # [N] bool
    temperature: torch.Tensor                  # [N, 1] float32; 1.0 for greedy rows
    top_k: Optional[torch.Tensor] = None       # [N] int64 in [1, V]; V when disabled
    top_p: Optional[torch.Tensor] = None       # [N] float32; 1.0 when disabled
    min_p: Optional[torch.Tensor] = None       # [N, 1] float32; 0.0 when disabled
    # Sparse additive bias / -inf mask as flat (row, token) index lists.
    bias_index: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    bias_values: Optional[torch.Tensor] = None
    mask_index: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    # Penalties: rows without penalties hold identity values and only padding ids.
    repetition_penalty: Optional[torch.Tensor] = None   # [N, 1]
    seen_token_ids: Optional[torch.Tensor] = None       # [N, L] prompt+output, padded with V
    presence_penalty: Optional[torch.Tensor] = None     # [N, 1]
    frequency_penalty: Optional[torch.Tensor] = None    # [N, 1]
    output_token_ids: Optional[torch.Tensor] = None     # [N, L] output only, padded with V
    # (row, generator) for non-greedy rows of seeded sequences.
    generators: list[tuple[int, torch.Generator]] = field(default_factory=list)
    num_logprobs: list[int] = field(default_factory=list)  # per row; -1 = not requested
    max_num_logprobs: int = -1
    # In-place logits transforms for this step, from the runner's logits processors.
    logits_fns: list = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: list[tuple[Request, Sequence]], vocab_size: int,
                  device: torch.device, processors: tuple = (),
                  penalty_tokens: Optional[tuple] = None) -> SamplingMetadata:
        """Build the step's metadata; `rows[i]` is the sequence whose logits are row i.

        `processors`: objects with `prepare(rows) -> Optional[fn(logits) -> None]`; each returns
        the step's in-place transform, or None when it has nothing to do this step.
        `penalty_tokens`: `penalty_token_tensors(rows, ...)` when already built (by the thread
        that owns the sequences, for a sampling that runs on another), else built here."""
        device = torch.device(device)
        n = len(rows)
        greedy, temps, top_k, top_p, min_p = [], [], [], [], []
        rep, pres, freq = [], [], []
        bias_r, bias_c, bias_v, mask_r, mask_c = [], [], [], [], []
        generators: list[tuple[int, torch.Generator]] = []
        num_logprobs: list[int] = []
        need_rep = need_freq = False
        for i, (req, seq) in enumerate(rows):
            p = req.params
            g = p.is_greedy
            greedy.append(g)
            temps.append(1.0 if g else p.temperature)
            top_k.append(vocab_size if p.top_k < 1 else min(p.top_k, vocab_size))
            top_p.append(p.top_p)
            min_p.append(p.min_p)
            if not g and seq.generator is not None:
                generators.append((i, seq.generator))
            num_logprobs.append(-1 if p.logprobs is None else p.logprobs)
            if p.logit_bias:
                for tok, b in p.logit_bias.items():
                    if 0 <= tok < vocab_size:
                        bias_r.append(i)
                        bias_c.append(tok)
                        bias_v.append(b)
            if seq.num_output_tokens < p.min_tokens:
                banned = list(p.stop_token_ids)
                if req.eos_token_id is not None and not p.ignore_eos:
                    banned.append(req.eos_token_id)
                for tok in banned:
                    if 0 <= tok < vocab_size:
                        mask_r.append(i)
                        mask_c.append(tok)
            rep.append(p.repetition_penalty)
            need_rep |= p.repetition_penalty != 1.0
            pres.append(p.presence_penalty)
            freq.append(p.frequency_penalty)
            need_freq |= p.presence_penalty != 0.0 or p.frequency_penalty != 0.0

        def col(values: list[float]) -> torch.Tensor:
            return to_device(values, torch.float32, device).unsqueeze(1)

        def idx(r: list[int], c: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return to_device(r, torch.long, device), to_device(c, torch.long, device)

        meta = cls(num_rows=n, vocab_size=vocab_size, device=device, all_greedy=all(greedy),
                   greedy=to_device(greedy, torch.bool, device),
                   temperature=col(temps), generators=generators, num_logprobs=num_logprobs,
                   max_num_logprobs=max(num_logprobs, default=-1))
        if not meta.all_greedy:
            if any(k < vocab_size for k in top_k):
                meta.top_k = to_device(top_k, torch.long, device)
            if any(x < 1.0 for x in top_p):
                meta.top_p = to_device(top_p, torch.float32, device)
            if any(x > 0.0 for x in min_p):
                meta.min_p = col(min_p)
        for proc in processors:
            fn = proc.prepare(rows, device)
            if fn is not None:
                meta.logits_fns.append(fn)
        if bias_r:
            meta.bias_index = idx(bias_r, bias_c)
            meta.bias_values = to_device(bias_v, torch.float32, device)
        if mask_r:
            meta.mask_index = idx(mask_r, mask_c)
        if need_rep or need_freq:
            seen, outs = penalty_tokens or penalty_token_tensors(rows, vocab_size, device)
            if need_rep:
                meta.repetition_penalty = col(rep)
                meta.seen_token_ids = seen
            if need_freq:
                meta.presence_penalty = col(pres)
                meta.frequency_penalty = col(freq)
                meta.output_token_ids = outs
        return meta

    @property
    def needs_processing(self) -> bool:
        """True when any of processors / bias / min_tokens / penalties changes a logit."""
        return (bool(self.logits_fns) or self.bias_index is not None or self.mask_index is not None
                or self.repetition_penalty is not None or self.presence_penalty is not None)


class Sampler:
    """`sampler(logits, meta)` samples one token per row. See the module docstring.

    Its only state is the CPU generator that keys the fused kernel's noise, seeded with the
    engine's seed so that unseeded requests are reproducible run to run.
    """

    def __init__(self, seed: int = 0):
        self._step_keys = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == meta.num_rows, \
            f"logits {tuple(logits.shape)} vs {meta.num_rows} rows"
        assert logits.shape[1] == meta.vocab_size, \
            f"logits vocab {logits.shape[1]} != metadata vocab {meta.vocab_size}"
        return self.launch(logits, meta).result()

    def launch(self, logits: torch.Tensor, meta: SamplingMetadata) -> "PendingSample":
        """Like `__call__`, but leaves the results on the device while they are copied to the
        host asynchronously: the caller can queue more GPU work before `result()` waits.
        The caller's logits are never modified: processing works on a copy."""
        if self._fusable(logits, meta):
            return self._launch_fused(logits, meta)
        logits = logits.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        processed = apply_penalties(logits.clone(), meta) if meta.needs_processing else logits
        tokens = processed.argmax(dim=-1)
        if not meta.all_greedy:
            tokens = torch.where(meta.greedy, tokens, self._sample(processed, meta))
        chosen = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        top = None
        max_k = min(meta.max_num_logprobs, raw_logprobs.shape[1])
        if max_k > 0:
            top = raw_logprobs.topk(max_k, dim=-1)
        return PendingSample(tokens, chosen, top, meta.num_logprobs, max_k)

    @staticmethod
    def _fusable(logits: torch.Tensor, meta: SamplingMetadata) -> bool:
        """Rows needing nothing but greedy / plain temperature sampling and at most the chosen
        token's logprob run through one fused kernel (gpu_kernels/sampling.py) on CUDA."""
        return (logits.is_cuda and not meta.needs_processing and meta.top_k is None
                and meta.top_p is None and meta.min_p is None and not meta.generators
                and meta.max_num_logprobs <= 0)

    def _launch_fused(self, logits: torch.Tensor, meta: SamplingMetadata) -> "PendingSample":
        from gpu_kernels.sampling import sample_tokens
        temps = meta.temperature.squeeze(1).masked_fill(meta.greedy, 0.0)  # 0 = greedy
        # One Philox stream per step, keyed from the sampler's own generator.
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=self._step_keys).item())
        tokens, chosen = sample_tokens(logits, temps, seed)
        return PendingSample(tokens, chosen, None, meta.num_logprobs, meta.max_num_logprobs)

    @staticmethod
    def _sample(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        probs = sampling_probs(logits, meta)  # unnormalised after min-p: the race needs none
        q = torch.empty_like(probs).exponential_()
        if meta.generators:
            rows = [r for r, _ in meta.generators]
            # One key per seeded row from its own CPU generator; the noise is computed from it
            # on the device (engine/seeded_noise.py).
            keys = [seeded_noise.draw_key(g) for _, g in meta.generators]
            q[to_device(rows, torch.long, q.device)] = seeded_noise.exponential(
                keys, meta.vocab_size, q.device)
        # Exp(1) can return exactly 0; clamping keeps p / q finite (and 0 / q == 0 for masked).
        q.clamp_(min=torch.finfo(q.dtype).tiny)
        return (probs / q).argmax(dim=-1)


class PendingSample:
    """Sampled tokens still on the device, being copied to pinned host memory."""

    def __init__(self, tokens: torch.Tensor, chosen: torch.Tensor, top, num_logprobs: list[int],
                 max_k: int):
        self.tokens = tokens  # device tensor: the next step may read it without a host round trip
        self.num_logprobs = num_logprobs
        self.max_k = max_k
        on_gpu = tokens.device.type == "cuda"
        self._host = [copy_to_host(t, on_gpu) for t in
                      ([tokens, chosen] + ([top.values, top.indices] if top is not None else []))]
        self._event = None
        if on_gpu:
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> SamplerOutput:
        if self._event is not None:
            self._event.synchronize()
        token_list: list[int] = self._host[0].tolist()
        lp_list: list[float] = self._host[1].tolist()
        top: list[Optional[dict[int, float]]] = [None] * len(token_list)
        if self.max_k >= 0:
            vals_l = self._host[2].tolist() if self.max_k > 0 else None
            ids_l = self._host[3].tolist() if self.max_k > 0 else None
            for i, k in enumerate(self.num_logprobs):
                if k < 0:
                    continue
                d = {token_list[i]: lp_list[i]}
                for j in range(min(k, self.max_k)):
                    d.setdefault(ids_l[i][j], vals_l[i][j])
                top[i] = d
        return SamplerOutput(token_ids=token_list, logprobs=lp_list, top_logprobs=top)


def copy_to_host(t: torch.Tensor, async_copy: bool) -> torch.Tensor:
    """t itself, or (async_copy) a pinned host tensor it is being copied into."""
    if not async_copy:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Steps 1-4 of the module docstring, in place on `logits` [N, V] (float32); returns it."""
    v = logits.shape[1]
    for fn in meta.logits_fns:
        fn(logits)
    if meta.bias_index is not None:
        logits.index_put_(meta.bias_index, meta.bias_values, accumulate=True)
    if meta.mask_index is not None:
        logits[meta.mask_index] = _NEG_INF
    if meta.repetition_penalty is not None:
        # Column v collects the padding and is dropped.
        seen = torch.zeros(logits.shape[0], v + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, meta.seen_token_ids, True)
        seen = seen[:, :v]
        pen = meta.repetition_penalty.expand_as(logits)
        penalised = torch.where(logits > 0, logits / pen, logits * pen)
        logits = torch.where(seen, penalised, logits)
    if meta.presence_penalty is not None:
        counts = torch.zeros(logits.shape[0], v + 1, dtype=torch.float32, device=logits.device)
        counts.scatter_add_(1, meta.output_token_ids,
                            torch.ones_like(meta.output_token_ids, dtype=torch.float32))
        counts = counts[:, :v]
        # Rows without penalties have zero coefficients and zero counts: unchanged exactly.
        logits = logits - meta.frequency_penalty * counts \
            - meta.presence_penalty * (counts > 0).float()
    return logits


def sampling_probs(logits: torch.Tensor, meta: SamplingMetadata,
                   normalize: bool = False) -> torch.Tensor:
    """Step 6 of the module docstring up to the draw: temperature, top-k, top-p, softmax, min-p.
    Rows masked by min-p sum to less than 1 unless `normalize`. `logits` is not modified."""
    logits = logits / meta.temperature
    if meta.top_k is not None or meta.top_p is not None:
        logits = apply_top_k_top_p(logits, meta.top_k, meta.top_p)
    probs = torch.softmax(logits, dim=-1)
    if meta.min_p is not None:
        # Keep tokens with p >= min_p * max p.
        thresh = probs.amax(dim=-1, keepdim=True) * meta.min_p
        probs = probs.masked_fill(probs < thresh, 0.0)
        if normalize:
            probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def apply_top_k_top_p(logits: torch.Tensor, top_k: Optional[torch.Tensor],
                      top_p: Optional[torch.Tensor]) -> torch.Tensor:
    """Mask with -inf all but each row's top-k and its smallest top-p nucleus (HF semantics).

    Ties with the k-th largest logit are kept. Top-p keeps the smallest set of highest tokens
    whose probability mass (after top-k) reaches p; the most likely token always survives.
    A full sort is the slow part, so it is avoided when top-k alone is asked for (threshold from
    `topk`) or when every row has a small k (top-p then works on the top-k candidates only).
    """
    v = logits.shape[1]
    kmax = int(top_k.max()) if top_k is not None else v
    if top_p is None and top_k is not None:
        kth = logits.topk(kmax, dim=-1).values.gather(1, (top_k - 1).unsqueeze(1))
        return logits.masked_fill(logits < kth, _NEG_INF)
    if top_k is not None and kmax <= _SMALL_K:
        vals, order = logits.topk(kmax, dim=-1)  # descending
        kth = vals.gather(1, (top_k - 1).unsqueeze(1))
        vals = vals.masked_fill(vals < kth, _NEG_INF)
        probs = vals.softmax(dim=-1)
        # Drop a token when the mass strictly above it already reaches p.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
        drop[:, 0] = False
        vals = vals.masked_fill(drop, _NEG_INF)
        return torch.full_like(logits, _NEG_INF).scatter_(1, order, vals)
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    if top_k is not None:
        kth = sorted_logits.gather(1, (v - top_k).clamp(min=0).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, _NEG_INF)
    if top_p is not None:
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= (1.0 - top_p).unsqueeze(1)
        drop[:, -1] = False
        sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def compute_prompt_logprobs(logits: torch.Tensor, next_token_ids: list[int],
                            k: int) -> list[dict[int, float]]:
    """prompt_logprobs for P prompt positions: row i scores `next_token_ids[i]`.

    Each dict holds the actual next prompt token first, then the top-k of the raw distribution.
    """
    assert logits.shape[0] == len(next_token_ids)
    if not next_token_ids:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    nxt = to_device(next_token_ids, torch.long, lp.device)
    chosen = lp.gather(1, nxt.unsqueeze(1)).squeeze(1)
    k = min(k, lp.shape[1])
    top = lp.topk(k, dim=-1) if k > 0 else None
    out = PendingSample(nxt, chosen, top, [k] * len(next_token_ids), k).result()
    return [d for d in out.top_logprobs if d is not None]
