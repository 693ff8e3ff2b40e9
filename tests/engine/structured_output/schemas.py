"""50 JSON schemas of varied shape for the structured-output tests: nested objects, arrays,
enums, bounded numbers, required/optional properties, $ref. Strings and arrays are bounded so
that a small model's output completes within the tests' token budget."""
from __future__ import annotations

S = {"type": "string", "maxLength": 8}
INT = {"type": "integer", "minimum": 0, "maximum": 99}
BOOL = {"type": "boolean"}
COLOR = {"type": "string", "enum": ["red", "green", "blue"]}


def obj(props: dict, required: list | None = None, **extra) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


def arr(items: dict, lo: int = 1, hi: int = 3) -> dict:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


SCHEMAS: list[dict] = [
    obj({"name": S}),
    obj({"age": INT}),
    obj({"ok": BOOL}),
    obj({"color": COLOR}),
    obj({"name": S, "age": INT}),
    obj({"name": S, "age": INT, "ok": BOOL}),
    obj({"name": S, "nick": S}, required=["name"]),
    obj({"a": INT, "b": INT}, required=[]),
    obj({"x": {"type": "integer", "minimum": -5, "maximum": 5}}),
    obj({"p": {"type": "number", "minimum": 0, "maximum": 1}}),
    obj({"n": {"type": "null"}}),
    obj({"v": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    obj({"tags": arr(S)}),
    obj({"nums": arr(INT, 2, 4)}),
    obj({"flags": arr(BOOL, 0, 2)}),
    obj({"colors": arr(COLOR)}),
    obj({"inner": obj({"k": S})}),
    obj({"inner": obj({"k": INT, "v": BOOL})}),
    obj({"a": obj({"b": obj({"c": INT})})}),
    obj({"items": arr(obj({"id": INT, "name": S}), 1, 2)}),
    obj({"matrix": arr(arr(INT, 1, 2), 1, 2)}),
    obj({"kind": {"const": "point"}, "x": INT, "y": INT}),
    obj({"level": {"enum": [1, 2, 3]}}),
    obj({"mixed": {"enum": ["a", 1, True, None]}}),
    obj({"choice": {"anyOf": [INT, BOOL]}}),
    obj({"shape": {"oneOf": [obj({"r": INT}), obj({"w": INT, "h": INT})]}}),
    obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
    obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
    obj({"word": {"type": "string", "minLength": 2, "maxLength": 5}}),
    obj({"date": {"type": "string", "format": "date"}}),
    obj({"score": {"type": "integer", "minimum": 10, "maximum": 20},
         "grade": {"enum": ["A", "B", "C"]}}),
    obj({"user": obj({"name": S, "roles": arr(COLOR, 1, 2)}), "active": BOOL}),
    obj({"person": {"$ref": "#/$defs/person"}},
        **{"$defs": {"person": obj({"name": S, "age": INT})}}),
    obj({"people": arr({"$ref": "#/$defs/p"}, 1, 2)}, **{"$defs": {"p": obj({"n": S})}}),
    obj({"a": {"$ref": "#/definitions/num"}, "b": {"$ref": "#/definitions/num"}},
        **{"definitions": {"num": INT}}),
    obj({"node": {"$ref": "#/$defs/leaf"}},
        **{"$defs": {"leaf": obj({"val": INT, "label": COLOR})}}),
    arr(INT, 1, 3),
    arr(S, 1, 2),
    arr(obj({"k": BOOL}), 1, 2),
    {"type": "integer", "minimum": 0, "maximum": 1000},
    {"type": "boolean"},
    {"enum": ["yes", "no", "maybe"]},
    {"type": "string", "maxLength": 6},
    obj({"meta": obj({"v": INT}, required=[]), "id": INT}),
    obj({"opt1": S, "opt2": INT, "opt3": BOOL}, required=["opt2"]),
    obj({"coords": arr({"type": "number", "minimum": -1, "maximum": 1}, 2, 2)}),
    obj({"status": {"type": "string", "enum": ["open", "closed"]},
         "count": {"type": "integer", "minimum": 1, "maximum": 3},
         "notes": arr(S, 0, 1)}),
    obj({"cfg": obj({"debug": BOOL, "level": {"enum": ["lo", "hi"]}}), "name": S}),
    obj({"t": {"type": "integer", "minimum": 1, "maximum": 5}, "u": {"const": "x"}}),
    obj({"pair": {"type": "array", "prefixItems": [INT, BOOL], "items": False,
                  "minItems": 2, "maxItems": 2}}),
]
assert len(SCHEMAS) == 50
