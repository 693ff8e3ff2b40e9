"""Fused token sampling: one read of each logits row gives the next token and its raw logprob.

For row r with logits x (fp32, fp16 or bf16; upcast to fp32) and temperature T[r]:

- `lse = logsumexp(x)`, and the returned logprob is `x[token] - lse` (the raw distribution);
- greedy rows (`T == 0`) take `argmax x`, the first index on ties (as `torch.argmax`);
- other rows take `argmax(x / T + g)` with `g` i.i.d. standard Gumbel noise drawn from Philox at
  `(seed, r * V + column)`: the Gumbel-max trick, an exact sample of `softmax(x / T)`.

Two launches. Each (row, vocabulary split) program reduces its columns to (max, sum of
exp(x - max), best score, raw logit at the best, best index); a combine program per row merges the
splits in column order, so ties still resolve to the first index. Splits keep small batches from
running on a handful of SMs.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, cdiv, check_dtype, check_last_dim_contiguous,
                                   num_sms, require_triton, same_device, tl, triton)

_BLOCK = 1024
_MAX_SPLITS = 64

if triton is not None:

    @triton.jit(do_not_specialize=["seed", "cols_per_split"])
    def _sample_partial_kernel(logits_ptr, temp_ptr, part_f, part_i, seed, vocab, stride_r,
                               cols_per_split, BLOCK: tl.constexpr, MAX_SPLITS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        start = split * cols_per_split
        end = tl.minimum(start + cols_per_split, vocab)
        temp = tl.load(temp_ptr + row)
        greedy = temp == 0.0
        inv_t = 1.0 / tl.where(greedy, 1.0, temp)
        m = float("-inf")
        s = 0.0
        best = float("-inf")
        best_raw = float("-inf")
        best_i = start
        for c in range(start, end, BLOCK):
            offs = c + tl.arange(0, BLOCK)
            mask = offs < end
            x = tl.load(logits_ptr + row * stride_r + offs, mask=mask,
                        other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            # m_new is finite once any column is: exp(-inf - finite) = 0 keeps s exact.
            s = s * tl.exp(m - m_new) + tl.sum(tl.where(mask, tl.exp(x - m_new), 0.0), 0)
            m = m_new
            if greedy:
                score = x
            else:
                u = tl.rand(seed, row * vocab + offs)
                score = x * inv_t - tl.log(-tl.log(u))
            score = tl.where(mask, score, float("-inf"))
            c_best = tl.max(score, 0)
            c_idx = tl.argmax(score, 0, tie_break_left=True)
            c_raw = tl.sum(tl.where(tl.arange(0, BLOCK) == c_idx, x, 0.0), 0)
            take = c_best > best  # strictly: an earlier column keeps a tie
            best_i = tl.where(take, c + c_idx, best_i)
            best_raw = tl.where(take, c_raw, best_raw)
            best = tl.where(take, c_best, best)
        base = (row * MAX_SPLITS + split) * 4
        tl.store(part_f + base, m)
        tl.store(part_f + base + 1, s)
        tl.store(part_f + base + 2, best)
        tl.store(part_f + base + 3, best_raw)
        tl.store(part_i + row * MAX_SPLITS + split, best_i)

    @triton.jit
    def _sample_combine_kernel(part_f, part_i, tokens_ptr, logprobs_ptr, num_splits,
                               MAX_SPLITS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, MAX_SPLITS)
        mask = offs < num_splits
        base = (row * MAX_SPLITS + offs) * 4
        m = tl.load(part_f + base, mask=mask, other=float("-inf"))
        s = tl.load(part_f + base + 1, mask=mask, other=0.0)
        best = tl.load(part_f + base + 2, mask=mask, other=float("-inf"))
        raw = tl.load(part_f + base + 3, mask=mask, other=0.0)
        idx = tl.load(part_i + row * MAX_SPLITS + offs, mask=mask, other=0)
        m_max = tl.max(m, 0)
        total = tl.sum(tl.where(mask & (s > 0.0), s * tl.exp(m - m_max), 0.0), 0)
        lse = m_max + tl.log(total)
        k = tl.argmax(best, 0, tie_break_left=True)  # splits are in column order
        pick = offs == k
        token = tl.sum(tl.where(pick, idx, 0), 0)
        chosen = tl.sum(tl.where(pick, raw, 0.0), 0)
        tl.store(tokens_ptr + row, token.to(tl.int64))
        tl.store(logprobs_ptr + row, chosen - lse)


def _num_splits(rows: int, vocab: int, device: torch.device) -> int:
    want = cdiv(2 * num_sms(device), max(rows, 1))
    return max(1, min(want, _MAX_SPLITS, cdiv(vocab, _BLOCK)))


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, seed: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V], temperature [N] float32 (0 = greedy) -> (tokens [N] int64, raw logprobs
    of the tokens [N] float32). `seed` selects the Philox stream of the sampled rows."""
    require_triton(logits, temperature)
    same_device(logits, temperature)
    check_dtype("logits", logits, FLOAT_DTYPES)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got {tuple(logits.shape)}")
    check_last_dim_contiguous("logits", logits)
    rows, vocab = logits.shape
    if temperature.shape != (rows,) or temperature.dtype != torch.float32:
        raise ValueError(f"temperature must be float32 [{rows}], got {temperature.dtype} "
                         f"{tuple(temperature.shape)}")
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return tokens, logprobs
    if vocab == 0:
        raise ValueError("logits have an empty vocabulary")
    splits = _num_splits(rows, vocab, logits.device)
    cols = cdiv(cdiv(vocab, splits), _BLOCK) * _BLOCK
    splits = cdiv(vocab, cols)
    part_f = torch.empty(rows, _MAX_SPLITS, 4, dtype=torch.float32, device=logits.device)
    part_i = torch.empty(rows, _MAX_SPLITS, dtype=torch.int32, device=logits.device)
    _sample_partial_kernel[(rows, splits)](
        logits, temperature.contiguous(), part_f, part_i, int(seed) & 0x7FFFFFFF, vocab,
        logits.stride(0), cols, BLOCK=_BLOCK, MAX_SPLITS=_MAX_SPLITS, num_warps=4)
    _sample_combine_kernel[(rows,)](part_f, part_i, tokens, logprobs, splits,
                                    MAX_SPLITS=_MAX_SPLITS, num_warps=1)
    return tokens, logprobs


def sample_tokens_ref(logits: torch.Tensor, temperature: torch.Tensor,
                      generator: Optional[torch.Generator] = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of `sample_tokens` (its own noise: the same distribution, other draws)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    greedy = temperature == 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    u = torch.rand(x.shape, generator=generator, device=x.device).clamp_(min=1e-38)
    scores = torch.where(greedy[:, None], x, x / t[:, None] - torch.log(-torch.log(u)))
    tokens = scores.argmax(dim=-1)
    return tokens, x.gather(1, tokens[:, None]).squeeze(1) - lse
