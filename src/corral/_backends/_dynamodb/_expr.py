"""Expressions of DynamoDB requests, built with placeholders for every name and value.

DynamoDB reserves hundreds of words (``state``, ``name``, ``status``, ``percent``...)
as attribute names in expressions; every name goes through ``#name`` here, and every
value through ``:vN``, encoded by :func:`~._values.encode`.
"""

from __future__ import annotations

from typing import Any

from ._values import encode

__all__ = ["Expr"]


class Expr:
    """One request's update and condition expressions, and their placeholders."""

    __slots__ = ("adds", "deletes", "names", "removes", "sets", "values")

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.adds: list[str] = []
        self.deletes: list[str] = []

    def n(self, attribute: str) -> str:
        """Return the placeholder of an attribute name."""
        key = f"#{attribute}"
        self.names[key] = attribute
        return key

    def v(self, value: object) -> str:
        """Return the placeholder of a value (encoded; a set of str is a string set)."""
        key = f":v{len(self.values)}"
        self.values[key] = encode(value)
        return key

    def raw(self, value: dict[str, Any]) -> str:
        """Return the placeholder of an attribute value already encoded."""
        key = f":v{len(self.values)}"
        self.values[key] = value
        return key

    def set(self, attribute: str, value: object) -> Expr:
        """``SET attribute = value`` (``REMOVE`` for None)."""
        if value is None:
            self.removes.append(self.n(attribute))
        else:
            self.sets.append(f"{self.n(attribute)} = {self.v(value)}")
        return self

    def set_expr(self, attribute: str, expression: str) -> Expr:
        """``SET attribute = expression`` (written with this object's placeholders)."""
        self.sets.append(f"{self.n(attribute)} = {expression}")
        return self

    def remove(self, *attributes: str) -> Expr:
        """``REMOVE`` attributes."""
        self.removes.extend(self.n(a) for a in attributes)
        return self

    def add(self, attribute: str, value: object) -> Expr:
        """``ADD attribute value`` (a number added, or elements to a set)."""
        self.adds.append(f"{self.n(attribute)} {self.v(value)}")
        return self

    def delete(self, attribute: str, value: object) -> Expr:
        """``DELETE attribute value`` (elements taken out of a set)."""
        self.deletes.append(f"{self.n(attribute)} {self.v(value)}")
        return self

    def update(self) -> str:
        """Return the update expression."""
        parts = []
        for word, items in (
            ("SET", self.sets),
            ("REMOVE", self.removes),
            ("ADD", self.adds),
            ("DELETE", self.deletes),
        ):
            if items:
                parts.append(f"{word} {', '.join(items)}")
        return " ".join(parts)

    def request(
        self, table: str, key: dict[str, Any], condition: str | None = None
    ) -> dict[str, Any]:
        """Return the parameters of an ``UpdateItem`` (or a transaction's ``Update``)."""
        request: dict[str, Any] = {"TableName": table, "Key": key}
        update = self.update()
        if update:
            request["UpdateExpression"] = update
        if condition is not None:
            request["ConditionExpression"] = condition
        if self.names:
            request["ExpressionAttributeNames"] = self.names
        if self.values:
            request["ExpressionAttributeValues"] = self.values
        return request
