"""Host-to-device copies that never make the host wait for the GPU.

A copy from pageable memory is queued behind the GPU work already on the stream and blocks the
host until it runs; with async scheduling that would serialise the host with the previous step.
Staging through pinned memory makes the copy truly asynchronous.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch


def to_device(data: Union[list, np.ndarray, torch.Tensor], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    if isinstance(data, np.ndarray):
        host = torch.from_numpy(data).to(dtype)
    elif isinstance(data, torch.Tensor):
        host = data.to(dtype)
    else:
        host = torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
