"""AutoRound's native format (`quant_method: auto-round`): integer weight-only layers in either
GPTQ layout (`packing_format` 'auto_round:auto_gptq', zero - 1 stored; 'auto_round:gptqmodel',
zero stored) or AWQ layout ('auto_round:auto_awq'). Non-integer AutoRound schemes (mxfp, nvfp,
fp8) and activation quantization are rejected at load.
"""
from __future__ import annotations

from typing import Any, Optional

from engine.quantization.awq import AWQLinearMethod, is_skipped
from engine.quantization.base import LinearMethod, QuantizationConfig
from engine.quantization.gptq import GPTQLinearMethod
from engine.quantization.weight_only import WeightOnlyParams

_GPTQ_ZERO_OFFSET = {"auto_round:auto_gptq": 1, "auto_round": 1, "auto_round:gptqmodel": 0}


class AutoRoundConfig(QuantizationConfig):
    name = "auto-round"

    def __init__(self, bits: int, group_size: int, sym: bool, packing_format: str,
                 skip: list[str]):
        self.params = WeightOnlyParams(bits, group_size)
        self.sym, self.packing_format, self.skip = sym, packing_format, skip
        if packing_format != "auto_round:auto_awq" and packing_format not in _GPTQ_ZERO_OFFSET:
            raise ValueError(f"auto-round: packing_format {packing_format!r} is not supported "
                             f"(auto_round:auto_gptq, auto_round:gptqmodel, auto_round:auto_awq)")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AutoRoundConfig":
        data_type = str(config.get("data_type", "int"))
        if data_type != "int":
            raise ValueError(f"auto-round: data_type {data_type!r} is not supported (int)")
        if int(config.get("act_bits", 16)) < 16:
            raise ValueError("auto-round: activation quantization (act_bits < 16) is not "
                             "supported")
        if config.get("extra_config"):
            raise ValueError("auto-round: per-layer extra_config is not supported")
        skip = list(config.get("modules_to_not_convert") or [])
        return cls(int(config.get("bits", 4)), int(config.get("group_size", 128)),
                   bool(config.get("sym", True)),
                   str(config.get("packing_format", "auto_round:auto_gptq")), skip)

    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        if is_skipped(prefixes, self.skip):
            return None
        if self.packing_format == "auto_round:auto_awq":
            return AWQLinearMethod(self.params, zero_point=True)
        return GPTQLinearMethod(self.params, _GPTQ_ZERO_OFFSET[self.packing_format])

    def describe(self) -> str:
        return (f"auto-round (w{self.params.bits}a16, group {self.params.group_size}, "
                f"{self.packing_format})")
