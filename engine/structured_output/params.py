"""What a request constrains its output to, with vLLM's `StructuredOutputsParams` names."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union


class GrammarError(ValueError):
    """A spec that cannot be compiled (or not in time). The message starts with the field."""


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of `json`, `regex`, `choice`, `grammar`, `json_object` is set.

    `json` is a JSON schema (dict or JSON text); `grammar` is EBNF (GBNF-style, as xgrammar
    reads it); `choice` is a list of strings, one of which the output is exactly.
    `field` names the request field the spec came from, so an error can name it.
    """

    json: Optional[Union[str, dict]] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    disable_any_whitespace: bool = False
    field: str = "structured_outputs"

    def __post_init__(self) -> None:
        kinds = [k for k in ("json", "regex", "choice", "grammar", "json_object")
                 if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            raise ValueError(f"{self.field}: exactly one of json, regex, choice, grammar, "
                             f"json_object must be set (got {', '.join(kinds) or 'none'})")
        if self.choice is not None:
            if (not isinstance(self.choice, list) or not self.choice
                    or not all(isinstance(c, str) for c in self.choice)):
                raise ValueError(f"{self.field}: choice must be a non-empty list of strings")
            object.__setattr__(self, "choice", list(self.choice))
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"{self.field}: json must be a JSON schema (object or string)")
        for name in ("regex", "grammar"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{self.field}: {name} must be a string")

    @property
    def kind(self) -> str:
        for k in ("json", "regex", "choice", "grammar", "json_object"):
            if getattr(self, k) not in (None, False):
                return k
        raise AssertionError("validated in __post_init__")

    def spec(self) -> tuple[str, str]:
        """(kind, canonical text): what is compiled, and the cache key's content."""
        kind = self.kind
        if kind == "json":
            text = self.json if isinstance(self.json, str) else json.dumps(
                self.json, sort_keys=True, separators=(",", ":"))
        elif kind == "choice":
            text = json.dumps(self.choice)
        elif kind == "json_object":
            text = ""
        else:
            text = getattr(self, kind)
        ws = "compact" if self.disable_any_whitespace else "any"
        return kind, f"{ws}\n{text}"

    def key(self) -> str:
        kind, text = self.spec()
        return hashlib.sha256(f"{kind}\n{text}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    @classmethod
    def from_value(cls, value: Any) -> Optional["StructuredOutputsParams"]:
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise ValueError("structured_outputs: must be a StructuredOutputsParams or a dict")
