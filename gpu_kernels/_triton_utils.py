"""Shared helpers for the Triton kernels: a guarded import and small launch utilities.

Triton is optional (CPU-only installs, macOS): `HAS_TRITON` says whether it imported. Kernel
modules import `triton`/`tl` from here so that importing them never fails; their wrappers raise
a clear error when Triton is absent. `TRITON_INTERPRET=1` (set before Triton is imported) runs
the kernels on CPU tensors through Triton's interpreter, which is how CI tests them.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

try:  # pragma: no cover - depends on the install
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install on an unsupported platform
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def require_triton(*tensors: torch.Tensor) -> None:
    """Raise unless Triton can run kernels on these tensors (CUDA, or the interpreter on CPU)."""
    if not HAS_TRITON:
        raise RuntimeError("Triton is not installed: use the torch reference path instead")
    for t in tensors:
        if t.device.type != "cuda" and not interpreting():
            raise RuntimeError(f"Triton kernels need CUDA tensors (got {t.device}); set "
                               "TRITON_INTERPRET=1 to run them on CPU")


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on a CUDA device; a nominal 4 elsewhere (interpreter)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: last dimension must be contiguous (strides {t.stride()})")


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{name}: dtype {t.dtype} not in {allowed}")


FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def same_device(*tensors: Optional[torch.Tensor]) -> None:
    devs = {t.device for t in tensors if t is not None}
    if len(devs) > 1:
        raise ValueError(f"tensors on different devices: {devs}")


def output_like(out: Optional[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """The caller's output buffer after checking it matches `query`, or a new one."""
    if out is None:
        return torch.empty_like(query)
    if out.shape != query.shape or out.stride(-1) != 1:
        raise ValueError(f"out {tuple(out.shape)} must match query and be contiguous in D")
    return out


if triton is not None:

    @triton.jit
    def round_to(x, DT: tl.constexpr):
        """float32 `x` rounded to the nearest `DT` value (ties to even), kept in float32.

        bf16 is rounded with integer arithmetic on the bits: the same result on every backend
        (the CPU interpreter's float cast truncates) and nothing a compiler may fold away the
        way it can fold a float truncate-then-extend pair. Finite inputs only.
        """
        if DT == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        elif DT == tl.float16:
            return x.to(tl.float16).to(tl.float32)
        else:
            return x
