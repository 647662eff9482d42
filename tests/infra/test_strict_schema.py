"""The strict structural-schema walk and the CEL subset, on small schemas written here and on the real CRDs' rules."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from infra import cel
from infra.errors import UnsupportedRuleError
from infra.strict_schema import walk

QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE])?$",
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "replicas": {"type": "integer", "format": "int32", "minimum": 0},
        "mode": {"type": "string", "enum": ["token", "disabled"]},
        "enabled": {"type": "boolean"},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "empty": {"type": "object"},
        "ports": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {
                "type": "object",
                "required": ["port"],
                "properties": {"port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}},
            },
        },
        "maybe": {"type": "string", "nullable": True},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "either": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
    },
}


def messages(value: Any, schema: Mapping[str, Any] = SCHEMA) -> list[str]:
    return [str(violation) for violation in walk(value, schema)]


def test_a_valid_document_has_no_violation() -> None:
    assert (
        messages(
            {
                "name": "a",
                "replicas": 2,
                "mode": "token",
                "enabled": True,
                "limits": {"cpu": "500m", "gpu": 1},
                "free": {"anything": {"goes": [1]}},
                "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}],
                "maybe": None,
                "tags": ["x", "y"],
                "either": False,
            }
        )
        == []
    )


def test_unknown_keys_are_rejected_with_a_suggestion() -> None:
    found = messages({"name": "a", "replica": 2})
    assert found == [
        "replica: unknown field 'replica' (the API server would silently drop it); did you mean 'replicas'?"
    ]


def test_an_object_without_properties_takes_no_keys_but_preserve_unknown_fields_takes_all() -> None:
    assert messages({"name": "a", "empty": {"x": 1}}) == [
        "empty.x: unknown field 'x': this object takes no fields in the schema"
    ]
    assert messages({"name": "a", "free": {"x": {"y": None}}}) == []


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"name": "a", "limits": {"cpu": True}}, "limits.cpu: expected an integer or a string"),
        ({"name": "a", "limits": {"cpu": "lots"}}, "limits.cpu: 'lots' does not match the pattern"),
        ({"name": "a", "replicas": "2"}, "replicas: expected an integer"),
        ({"name": "a", "replicas": True}, "replicas: expected an integer"),
        ({"name": "a", "replicas": -1}, "replicas: -1 is below the minimum 0"),
        ({"name": "a", "replicas": 2**31}, "is outside the int32 range"),
        ({"name": "a", "mode": "tokens"}, "mode: 'tokens' is not one of ['token', 'disabled']"),
        ({"name": "a", "enabled": "yes"}, "enabled: expected true or false"),
        ({"name": ""}, "name: '' is shorter than 1 character(s)"),
        ({"name": None}, "name: null is not allowed here"),
        ({}, "name: required field is missing"),
        ({"name": "a", "ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}]}, "ports[1]: duplicates item 0"),
        ({"name": "a", "ports": [{"protocol": "TCP"}]}, "ports[0].port: required field is missing"),
        ({"name": "a", "ports": {"port": 80}}, "ports: expected a list"),
        ({"name": "a", "tags": ["x", "y", "x"]}, "tags[2]: duplicate value 'x' in a set-type list"),
        ({"name": "a", "either": "no"}, "either: matches none of the 2 anyOf branches"),
    ],
)
def test_each_kind_of_violation_is_reported_at_its_path(document: dict[str, Any], expected: str) -> None:
    assert any(expected in message for message in messages(document)), messages(document)


def test_cel_rules_are_evaluated_and_transition_rules_skipped() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "x-kubernetes-validations": [
            {"rule": "has(self.a) || has(self.b)", "message": "a or b"},
            {"rule": "self == oldSelf", "message": "immutable"},
        ],
    }
    assert messages({"a": "x"}, schema) == []
    assert messages({}, schema) == ["<root>: a or b (CEL: has(self.a) || has(self.b))"]


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("has(self.a) || has(self.b)", {"b": 1}, True),
        ("!(has(self.a) && has(self.b))", {"a": 1, "b": 2}, False),
        ("((has(self.a) && has(self.b)) || has(self.c))", {"a": 1}, False),
        ("self in ['x', 'y']", "y", True),
        ("self in ['x', 'y']", "z", False),
        ("self.kind == 'Job' && self.n != 3", {"kind": "Job", "n": 4}, True),
        ("has(self.a.b)", {"a": {}}, False),
    ],
)
def test_the_cel_subset(rule: str, value: Any, expected: bool) -> None:
    assert cel.evaluate(rule, value) is expected


@pytest.mark.parametrize("rule", ["size(self) > 0", "self.a + 1 == 2", "oldSelf == self"])
def test_cel_outside_the_subset_raises_instead_of_passing(rule: str) -> None:
    with pytest.raises(UnsupportedRuleError):
        cel.evaluate(rule, {"a": 1})


def _rules(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            yield path, rule
        for key, child in schema.get("properties", {}).items():
            yield from _rules(child, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from _rules(schema[key], f"{path}[]")


def _sample_values(path: str) -> list[Any]:
    """Values that make every CEL rule of the KubeRay CRDs both pass and fail (for the subset-coverage check)."""
    if path.endswith("managedBy"):
        return ["ray.io/kuberay-operator", "someone-else"]
    return [
        {},
        {"onSuccess": {}, "onFailure": {}},
        {"deletionRules": []},
        {"onSuccess": {}, "deletionRules": []},
        {"jobStatus": "FAILED"},
        {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"},
    ]


def test_every_cel_rule_in_the_crds_is_evaluable_offline(crd_schemas: Mapping[str, Mapping[str, Any]]) -> None:
    seen = 0
    for kind, schema in crd_schemas.items():
        for path, rule in _rules(schema):
            seen += 1
            if cel.is_transition_rule(rule["rule"]):
                continue
            outcomes = {cel.evaluate(rule["rule"], value) for value in _sample_values(path)}
            assert outcomes == {True, False}, f"{kind}{path}: {rule['rule']} never changes outcome on the samples"
    assert seen >= 9, "the CRDs carry fewer CEL rules than the RayJob CRD alone (9): wrong schema files?"
