"""Tool definitions as JSON schema: built from Python signatures, validated, rendered, counted.

``function_schema(fn)`` turns a plain function (type hints + a ``:param x:`` docstring) into the
``{"type": "object", "properties": ..., "required": ...}`` schema the agent offers to a model.
``validate_arguments`` checks a model's arguments against it with ``jsonschema`` when installed,
else with a small validator that covers what tool schemas use (types, required, enum, items,
additionalProperties, minimum/maximum). Numeric strings from small models ("8") are coerced to
numbers first when the schema asks for a number, and arguments the schema does not know are
dropped when it forbids extra ones: harmless repairs that save a retry.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PARAM_LINE = re.compile(r"^\s*:param\s+(\w+):\s*(.*)$")
_DIRECTIVE = re.compile(r"^\s*:(param|return|returns|raises?)\b")

JSON_TYPES: dict[Any, dict[str, Any]] = {
    float: {"type": "number"},
    int: {"type": "integer"},
    bool: {"type": "boolean"},
    str: {"type": "string"},
    dict: {"type": "object"},
    list: {"type": "array"},
}


def _type_schema(annotation: Any) -> dict[str, Any]:
    if annotation in JSON_TYPES:
        return dict(JSON_TYPES[annotation])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        schema: dict[str, Any] = {"type": "array"}
        if args:
            schema["items"] = _type_schema(args[0])
        return schema
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _type_schema(members[0])
    return {}


def docstring_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """(summary, {param: description}) from a ``:param x: ...`` style docstring."""
    doc = inspect.getdoc(fn) or ""
    summary_lines: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    for line in doc.splitlines():
        match = _PARAM_LINE.match(line)
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
            continue
        if _DIRECTIVE.match(line):
            current = None
            continue
        if current and line.strip():
            params[current] += " " + line.strip()
        elif current is None and not params:
            summary_lines.append(line.strip())
    summary = " ".join(part for part in summary_lines if part).strip()
    return summary, params


def function_schema(fn: Callable) -> dict[str, Any]:
    """The JSON schema of ``fn``'s keyword arguments (hints resolved, defaults not required)."""
    hints = typing.get_type_hints(fn)
    _, descriptions = docstring_parts(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(fn).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        prop = _type_schema(hints.get(name, Any))
        if name in descriptions:
            prop["description"] = descriptions[name]
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        elif isinstance(parameter.default, (int, float, str, bool)):
            prop["default"] = parameter.default
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class SchemaProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _is_type(value: Any, expected: str) -> bool:
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    return {
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None,
    }.get(expected, lambda v: True)(value)


def _minimal_validate(schema: dict[str, Any], value: Any, path: str = "") -> list[SchemaProblem]:
    problems: list[SchemaProblem] = []
    expected = schema.get("type")
    if expected is not None:
        types = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, t) for t in types):
            return [SchemaProblem(path, f"{json.dumps(value)[:80]} is not of type {' or '.join(types)}")]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(SchemaProblem(path, f"{json.dumps(value)[:80]} is not one of {schema['enum']}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(SchemaProblem(path, f"{value} is less than the minimum {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(SchemaProblem(path, f"{value} is more than the maximum {schema['maximum']}"))
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(SchemaProblem(path, f"'{name}' is a required property"))
        for name, item in value.items():
            if name in properties:
                problems += _minimal_validate(properties[name], item, f"{path}.{name}" if path else name)
            elif schema.get("additionalProperties") is False:
                problems.append(SchemaProblem(path, f"unexpected property '{name}'"))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += _minimal_validate(schema["items"], item, f"{path}[{i}]")
    return problems


def _jsonschema_validate(schema: dict[str, Any], value: Any) -> list[SchemaProblem]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path)
        problems.append(SchemaProblem(path, error.message))
    return problems


def _coerce(schema: dict[str, Any], value: Any) -> Any:
    """Numeric strings to numbers, whole floats to ints, where the schema asks for them."""
    expected = schema.get("type")
    if isinstance(value, str) and expected in ("number", "integer"):
        text = value.strip().replace(",", "")
        try:
            number = float(text)
        except ValueError:
            return value
        return int(number) if expected == "integer" and number.is_integer() else number
    if isinstance(value, float) and expected == "integer" and value.is_integer():
        return int(value)
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        if schema.get("additionalProperties") is False:
            value = {k: v for k, v in value.items() if k in props}  # small models add arguments that do not exist
        return {k: _coerce(props.get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(schema["items"], v) for v in value]
    return value


def validate_arguments(schema: dict[str, Any], arguments: Any) -> tuple[Any, list[SchemaProblem]]:
    """(repaired arguments, problems). No problems: call the tool with the repaired arguments."""
    if not isinstance(arguments, dict):
        return arguments, [SchemaProblem("", "the arguments must be a JSON object")]
    repaired = _coerce(schema or {}, arguments)
    try:
        problems = _jsonschema_validate(schema or {}, repaired)
    except ImportError:
        problems = _minimal_validate(schema or {"type": "object"}, repaired)
    return repaired, problems


def schema_problems(schema: Any) -> list[str]:
    """What is wrong with a tool's parameter schema itself (empty: usable)."""
    if not isinstance(schema, dict):
        return ["the parameters must be a JSON object (a JSON schema)"]
    if schema.get("type") != "object":
        return ['the parameters schema must have "type": "object"']
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return ['"properties" must be an object']
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return ['"required" must be a list of property names']
    problems = []
    for name in required:
        if name not in properties:
            problems.append(f"required parameter {name!r} is not among the properties")
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            problems.append(f"property {name!r} must be a JSON schema object")
    try:
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(schema)
    except ImportError:
        pass
    except Exception as exc:  # jsonschema.SchemaError
        problems.append(f"not a valid JSON schema: {getattr(exc, 'message', exc)}")
    return problems


# --------------------------------------------------------------------------- rendering


def tool_definition(*, name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``tools`` entry for one tool."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def compact_definition(*, name: str, description: str, parameters: dict[str, Any]) -> str:
    """One line per tool for the JSON tool-call prompt of local models: name, description, schema."""
    props = {
        key: {k: v for k, v in prop.items() if k in ("type", "items", "description", "enum", "default")}
        for key, prop in (parameters or {}).get("properties", {}).items()
    }
    compact = {"type": "object", "properties": props, "required": (parameters or {}).get("required", [])}
    return json.dumps({"name": name, "description": description, "parameters": compact}, ensure_ascii=False)
