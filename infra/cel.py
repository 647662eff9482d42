"""A small subset of CEL, enough to evaluate the `x-kubernetes-validations` rules of the KubeRay CRDs offline.

JSON-schema validators ignore these rules and a manifest that breaks one is only rejected by the API server, so the
strict walk evaluates them here (docs/infra.md). Supported: `self` and field selection (`self.a.b`), `has(self.a)`,
`!`, `&&`, `||`, parentheses, `==` / `!=` against a literal, `x in [literals]`, string/int/bool literals. Rules that
read `oldSelf` are transition rules: the API server evaluates them only on update, never on create, so
`is_transition_rule` lets the caller skip them. Anything else raises `UnsupportedRuleError` rather than passing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infra.errors import UnsupportedRuleError

_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\)|\[|\]|,|\.)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True)
class _Missing:
    """The value of a selected field that is absent (CEL would raise 'no such key'; `has()` reports False)."""

    path: str


def is_transition_rule(rule: str) -> bool:
    """True when the rule compares against the old object, so it only runs on update."""
    return re.search(r"\boldSelf\b", rule) is not None


def _tokenize(rule: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(rule):
        if rule[position:].strip() == "":
            break
        match = _TOKEN.match(rule, position)
        if match is None:
            raise UnsupportedRuleError(
                rule, f"unexpected text at offset {position}: {rule[position : position + 12]!r}"
            )
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over the token list, evaluating as it goes against `self_value`."""

    def __init__(self, rule: str, self_value: Any) -> None:
        self.rule = rule
        self.tokens = _tokenize(rule)
        self.index = 0
        self.self_value = self_value

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (value is not None and token[1] != value):
            raise UnsupportedRuleError(self.rule, f"expected {value or 'more input'} at token {self.index}")
        self.index += 1
        return token

    def parse(self) -> bool:
        result = self._or()
        if self._peek() is not None:
            raise UnsupportedRuleError(self.rule, f"trailing input at token {self.index}")
        if not isinstance(result, bool):
            raise UnsupportedRuleError(self.rule, "the rule does not evaluate to a boolean")
        return result

    def _or(self) -> Any:
        left = self._and()
        while self._peek() == ("op", "||"):
            self._take()
            right = self._and()
            left = self._bool(left) or self._bool(right)
        return left

    def _and(self) -> Any:
        left = self._unary()
        while self._peek() == ("op", "&&"):
            self._take()
            right = self._unary()
            left = self._bool(left) and self._bool(right)
        return left

    def _unary(self) -> Any:
        if self._peek() == ("op", "!"):
            self._take()
            return not self._bool(self._unary())
        return self._comparison()

    def _comparison(self) -> Any:
        left = self._primary()
        token = self._peek()
        if token in (("op", "=="), ("op", "!=")):
            self._take()
            right = self._primary()
            self._present(left)
            self._present(right)
            return (left == right) if token[1] == "==" else (left != right)
        if token == ("name", "in"):
            self._take()
            options = self._list()
            self._present(left)
            return left in options
        return left

    def _primary(self) -> Any:
        kind, text = self._take()
        if (kind, text) == ("op", "("):
            value = self._or()
            self._take(")")
            return value
        if kind == "str":
            return text[1:-1].encode().decode("unicode_escape")
        if kind == "num":
            return int(text)
        if (kind, text) == ("name", "true"):
            return True
        if (kind, text) == ("name", "false"):
            return False
        if (kind, text) == ("name", "has"):
            self._take("(")
            value = self._selection(self._take()[1])
            self._take(")")
            return not isinstance(value, _Missing)
        if kind == "name":
            return self._selection(text)
        raise UnsupportedRuleError(self.rule, f"unexpected token {text!r}")

    def _selection(self, root: str) -> Any:
        if root != "self":
            raise UnsupportedRuleError(self.rule, f"unknown identifier {root!r}")
        value: Any = self.self_value
        path = "self"
        while self._peek() == ("op", "."):
            self._take()
            field = self._take()[1]
            path = f"{path}.{field}"
            if isinstance(value, dict) and field in value:
                value = value[field]
            elif isinstance(value, dict) or isinstance(value, _Missing):
                value = _Missing(path)
            else:
                raise UnsupportedRuleError(self.rule, f"{path} selects a field of a non-object")
        return value

    def _list(self) -> list[Any]:
        self._take("[")
        items: list[Any] = []
        while self._peek() != ("op", "]"):
            items.append(self._primary())
            if self._peek() == ("op", ","):
                self._take()
        self._take("]")
        return items

    def _present(self, value: Any) -> None:
        if isinstance(value, _Missing):
            raise UnsupportedRuleError(self.rule, f"{value.path} is absent (CEL: no such key)")

    def _bool(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise UnsupportedRuleError(self.rule, f"{value!r} is not a boolean")
        return value


def evaluate(rule: str, self_value: Any) -> bool:
    """Evaluate a non-transition CEL `rule` with `self` bound to `self_value`."""
    if is_transition_rule(rule):
        raise UnsupportedRuleError(rule, "transition rules need the old object; check is_transition_rule first")
    return _Parser(rule, self_value).parse()
