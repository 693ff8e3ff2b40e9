"""A request's structured-output fields -> one `StructuredOutputsParams` (or a 400).

Accepted, in the order they are looked at: OpenAI's `response_format` (`text`, `json_object`,
`json_schema`), vLLM's `structured_outputs` extra (`json`, `regex`, `choice`, `grammar`,
`json_object`, `disable_any_whitespace`) and its older `guided_json / guided_regex /
guided_choice / guided_grammar`. At most one constraint may be given; the error names the field.
"""
from __future__ import annotations

from typing import Any, Optional

from engine.structured_output import StructuredOutputsParams
from server.errors import bad_request

_SO_KEYS = {"json", "regex", "choice", "grammar", "json_object", "disable_any_whitespace"}


def format_constraint(kind: Any, schema: Any, field: str,
                      missing_schema_is_any_object: bool = False
                      ) -> Optional[StructuredOutputsParams]:
    """An OpenAI output format (`text`, `json_object`, `json_schema` + its schema) -> the
    constraint; a 400 naming `field` for anything else. Chat's response_format lets a missing
    schema mean "any JSON object"; the Responses API's text.format requires one."""
    if kind == "text":
        return None
    if kind == "json_object" or (kind == "json_schema" and schema is None
                                 and missing_schema_is_any_object):
        return StructuredOutputsParams(json_object=True, field=field)
    if kind == "json_schema":
        if not isinstance(schema, dict):
            raise bad_request(f"{field}: json_schema needs a 'schema' object", field)
        return StructuredOutputsParams(json=schema, field=field)
    raise bad_request(f"{field}: type must be 'text', 'json_object' or 'json_schema', "
                      f"got {kind!r}", field)


def with_tool_grammar(structured: Optional[StructuredOutputsParams],
                      tool_grammar: Optional[StructuredOutputsParams]
                      ) -> Optional[StructuredOutputsParams]:
    """The one constraint of a request: its output format, or the grammar of a required / named
    tool_choice (which fixes the output itself); both at once is a 400 naming the format."""
    if tool_grammar is None:
        return structured
    if structured is not None:
        raise bad_request(f"{structured.field}: cannot be combined with a required or named "
                          "tool_choice", structured.field)
    return tool_grammar


def _response_format(rf: dict[str, Any]) -> Optional[StructuredOutputsParams]:
    js = rf.get("json_schema")
    if rf.get("type") == "json_schema" and not isinstance(js, dict):
        raise bad_request("response_format: json_schema must be an object with a 'schema' "
                          "object", "response_format")
    return format_constraint(rf.get("type"), (js or {}).get("schema"), "response_format",
                             missing_schema_is_any_object=True)


def structured_outputs_from_request(req: Any) -> Optional[StructuredOutputsParams]:
    found: list[tuple[str, StructuredOutputsParams]] = []
    try:
        if req.response_format is not None:
            spec = _response_format(req.response_format)
            if spec is not None:
                found.append(("response_format", spec))
        if req.structured_outputs is not None:
            unknown = sorted(set(req.structured_outputs) - _SO_KEYS)
            if unknown:
                raise bad_request(f"structured_outputs: unknown key {unknown[0]!r} (known: "
                                  f"{', '.join(sorted(_SO_KEYS))})", "structured_outputs")
            found.append(("structured_outputs", StructuredOutputsParams(
                **req.structured_outputs, field="structured_outputs")))
        for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar"):
            value = getattr(req, name)
            if value is not None:
                key = name.removeprefix("guided_")
                found.append((name, StructuredOutputsParams(**{key: value}, field=name)))
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise bad_request(str(exc), field) from exc
    if len(found) > 1:
        raise bad_request(f"{found[1][0]}: only one structured-output constraint per request "
                          f"(also given: {found[0][0]})", found[1][0])
    return found[0][1] if found else None
