"""A strict walk of a document against a Kubernetes structural `openAPIV3Schema` (docs/infra.md).

The KubeRay CRDs never set `additionalProperties: false`, and the API server silently prunes unknown fields, so a
misspelled key passes a JSON-schema validator and then vanishes. This walk follows the Kubernetes rules instead:
- an object accepts only the keys in `properties`, values matching `additionalProperties`, or anything where
  `x-kubernetes-preserve-unknown-fields: true`; an object schema with none of these takes no keys at all;
- `x-kubernetes-int-or-string` takes an int or a string (a `pattern` applies to the string form);
- types, enums, patterns, lengths, int32/int64 ranges, minimums, `required`, `minItems`, list-map key uniqueness;
- `null` only where `nullable: true`;
- `x-kubernetes-validations` CEL rules through infra/cel.py (transition rules, which need the old object, are skipped
  as the API server skips them on create).
Every violation is collected with its field path; nothing stops at the first.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from infra import cel

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Violation:
    """One problem at one field path, e.g. `spec.workerGroupSpecs[1].maxReplicas`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def walk(value: Any, schema: Mapping[str, Any], path: str = "") -> list[Violation]:
    """Every violation of `value` against the structural `schema`, in document order."""
    out: list[Violation] = []
    _walk(value, schema, path, out)
    return out


def _walk(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation]) -> None:
    if value is None:
        if not schema.get("nullable", False):
            out.append(Violation(path, "null is not allowed here; give a value or drop the key"))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            out.append(Violation(path, f"expected an integer or a string, got {type(value).__name__} {value!r}"))
        elif isinstance(value, str):
            _check_string(value, schema, path, out)
        _check_rules(value, schema, path, out)
        return
    kind = schema.get("type")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if kind is None:
        if "anyOf" in schema:
            _walk_any_of(value, schema, path, out)
        elif not preserve:
            out.append(Violation(path, "the schema gives no type here, so nothing is accepted (not a structural node)"))
        return
    checker = _CHECKERS.get(kind)
    if checker is None:
        out.append(Violation(path, f"the schema uses type {kind!r}, which this walk does not know"))
        return
    if checker(value, schema, path, out, preserve):
        _check_rules(value, schema, path, out)


def _walk_any_of(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation]) -> None:
    attempts = [walk(value, branch, path) for branch in schema["anyOf"]]
    if all(attempts):
        best = min(attempts, key=len)
        out.append(Violation(path, f"matches none of the {len(attempts)} anyOf branches; closest: {best[0].message}"))


def _check_object(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation], preserve: bool) -> bool:
    if not isinstance(value, dict):
        out.append(Violation(path, f"expected an object, got {type(value).__name__} {value!r}"))
        return False
    properties: Mapping[str, Any] = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        child = _join(path, str(key))
        if not isinstance(key, str):
            out.append(Violation(child, f"keys must be strings, got {type(key).__name__} {key!r}"))
        elif key in properties:
            _walk(item, properties[key], child, out)
        elif isinstance(additional, Mapping):
            _walk(item, additional, child, out)
        elif additional is True or preserve:
            continue
        elif properties:
            close = difflib.get_close_matches(key, list(properties), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(properties))}"
            out.append(Violation(child, f"unknown field {key!r} (the API server would silently drop it){hint}"))
        else:
            out.append(Violation(child, f"unknown field {key!r}: this object takes no fields in the schema"))
    for required in schema.get("required", []):
        if required not in value:
            out.append(Violation(_join(path, required), "required field is missing"))
    return True


def _check_array(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation], preserve: bool) -> bool:
    if not isinstance(value, list):
        out.append(Violation(path, f"expected a list, got {type(value).__name__} {value!r}"))
        return False
    if len(value) < schema.get("minItems", 0):
        out.append(Violation(path, f"needs at least {schema['minItems']} item(s), has {len(value)}"))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(Violation(path, f"takes at most {schema['maxItems']} item(s), has {len(value)}"))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _walk(item, items, f"{path}[{index}]", out)
    elif not preserve and value:
        out.append(Violation(path, "the schema gives no item type, so no items are accepted"))
    _check_list_keys(value, schema, path, out)
    return True


def _check_list_keys(value: list[Any], schema: Mapping[str, Any], path: str, out: list[Violation]) -> None:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        item_defaults = schema.get("items", {}).get("properties", {})
        seen: dict[tuple[Any, ...], int] = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            identity = tuple(item.get(key, item_defaults.get(key, {}).get("default")) for key in keys)
            if identity in seen:
                out.append(
                    Violation(f"{path}[{index}]", f"duplicates item {seen[identity]} on the list-map keys {keys}")
                )
            seen.setdefault(identity, index)
    elif list_type == "set":
        for index, item in enumerate(value):
            if item in value[:index]:
                out.append(Violation(f"{path}[{index}]", f"duplicate value {item!r} in a set-type list"))


def _check_string(
    value: Any, schema: Mapping[str, Any], path: str, out: list[Violation], preserve: bool = False
) -> bool:
    if not isinstance(value, str):
        out.append(Violation(path, f"expected a string, got {type(value).__name__} {value!r} (quote it in YAML)"))
        return False
    if "enum" in schema and value not in schema["enum"]:
        out.append(Violation(path, f"{value!r} is not one of {schema['enum']}"))
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        out.append(Violation(path, f"{value!r} does not match the pattern {schema['pattern']!r}"))
    if len(value) < schema.get("minLength", 0):
        out.append(Violation(path, f"{value!r} is shorter than {schema['minLength']} character(s)"))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(Violation(path, f"{value!r} is longer than {schema['maxLength']} characters"))
    if schema.get("format") == "date-time":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            out.append(Violation(path, f"{value!r} is not an RFC 3339 date-time"))
    return True


def _check_number(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation], preserve: bool) -> bool:
    integer = schema.get("type") == "integer"
    allowed = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, allowed):
        expected = "an integer" if integer else "a number"
        out.append(Violation(path, f"expected {expected}, got {type(value).__name__} {value!r}"))
        return False
    low, high = _INT_RANGES.get(schema.get("format", ""), (None, None))
    if low is not None and high is not None and not low <= value <= high:
        out.append(Violation(path, f"{value} is outside the {schema['format']} range"))
    if "minimum" in schema and value < schema["minimum"]:
        out.append(Violation(path, f"{value} is below the minimum {schema['minimum']}"))
    if "maximum" in schema and value > schema["maximum"]:
        out.append(Violation(path, f"{value} is above the maximum {schema['maximum']}"))
    if "enum" in schema and value not in schema["enum"]:
        out.append(Violation(path, f"{value!r} is not one of {schema['enum']}"))
    return True


def _check_boolean(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation], preserve: bool) -> bool:
    if not isinstance(value, bool):
        out.append(Violation(path, f"expected true or false, got {type(value).__name__} {value!r}"))
        return False
    return True


_CHECKERS = {
    "object": _check_object,
    "array": _check_array,
    "string": _check_string,
    "integer": _check_number,
    "number": _check_number,
    "boolean": _check_boolean,
}


def _check_rules(value: Any, schema: Mapping[str, Any], path: str, out: list[Violation]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        if cel.is_transition_rule(rule["rule"]):
            continue
        if not cel.evaluate(rule["rule"], value):
            message = rule.get("message") or f"violates the CEL rule {rule['rule']!r}"
            out.append(Violation(path, f"{message} (CEL: {rule['rule']})"))
