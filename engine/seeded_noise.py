"""Per-request sampling noise from a counter-based generator, computed on the logits' device.

A request with a `seed` owns a CPU `torch.Generator` (`Sequence.generator`). Each step that samples
it takes ONE 62-bit key from that generator (`draw_key`), and the row's noise for the step is a
pure function of that key and the vocabulary index: splitmix64 (Steele, Lea & Flood, "Fast
splittable pseudorandom number generators", OOPSLA 2014) over the counter `key + (i + 1) * golden`,
evaluated with int64 tensor arithmetic (wrapping multiplication, logical shifts by masking).

So a seeded row consumes a fixed amount of its generator per step (the same tokens whatever else
is in the batch), the noise is produced by a handful of elementwise kernels on the GPU instead of
V exponentials drawn on the CPU and copied over (that cost ~1 ms per seeded row per step on the
default model's 49k vocabulary), and the integer part is bit-identical on CPU and CUDA.
"""
from __future__ import annotations

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MUL1 = -4658895280553007687    # 0xBF58476D1CE4E5B9
_MUL2 = -7723592293110705685    # 0x94D049BB133111EB
_MAX_ELEMENTS = 1 << 23         # rows x columns per chunk: bounds the int64 temporaries


def draw_key(generator: torch.Generator) -> int:
    """The step's key for one seeded row: one draw from its CPU generator."""
    return int(torch.randint(0, 1 << 62, (1,), generator=generator).item())


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _srl(x, 30)
    x = x * _MUL1
    x = x ^ _srl(x, 27)
    x = x * _MUL2
    return x ^ _srl(x, 31)


def _bits(keys: torch.Tensor, start: int, n: int) -> torch.Tensor:
    counters = torch.arange(start + 1, start + n + 1, dtype=torch.int64, device=keys.device)
    return _splitmix(keys.unsqueeze(1) + counters.unsqueeze(0) * _GOLDEN)


def uniform(keys: list[int], n: int, device, start: int = 0) -> torch.Tensor:
    """[len(keys), n] float64 uniforms in (0, 1): columns `start .. start + n - 1` of each key's
    stream."""
    out = torch.empty(len(keys), n, dtype=torch.float64, device=device)
    k = torch.tensor(keys, dtype=torch.int64, device=device)
    rows = max(1, _MAX_ELEMENTS // max(n, 1))
    for r in range(0, len(keys), rows):
        top53 = _srl(_bits(k[r:r + rows], start, n), 11)
        out[r:r + rows] = (top53.double() + 0.5) * (2.0 ** -53)
    return out


def exponential(keys: list[int], n: int, device, start: int = 0) -> torch.Tensor:
    """[len(keys), n] float32 Exp(1) draws (-log of `uniform`), the exponential race's noise."""
    return uniform(keys, n, device, start).log_().neg_().float()


def reference_bits(key: int, index: int) -> int:
    """Pure-Python splitmix64 of one counter (unsigned), for tests of the tensor version."""
    m = (1 << 64) - 1
    x = (key + (index + 1) * (_GOLDEN & m)) & m
    x = ((x ^ (x >> 30)) * (_MUL1 & m)) & m
    x = ((x ^ (x >> 27)) * (_MUL2 & m)) & m
    return x ^ (x >> 31)
