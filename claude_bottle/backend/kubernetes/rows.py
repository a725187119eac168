"""Typed rows for what kubectl prints as JSON (as engine.PsRow is for docker's): the backend reads fields,
never picks raw dicts apart. A cluster's answer is outside input: anything malformed is a BackendError of
one line, never a KeyError, and a field of the wrong type reads as absent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from claude_bottle.errors import BackendError


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _obj(value).items() if isinstance(v, str)}


def _document(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackendError(f"{what}: kubectl's answer is not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(doc, dict):
        raise BackendError(f"{what}: kubectl's answer is not a JSON object")
    return doc


def _items(text: str, what: str) -> list[dict[str, Any]]:
    items = _document(text, what).get("items", [])
    if not isinstance(items, list):
        raise BackendError(f"{what}: kubectl's answer has no list of items")
    return [i for i in items if isinstance(i, dict)]


@dataclass(frozen=True)
class ObjectRow:
    """One object of `kubectl get KINDS -o json`: what cleanup needs of it."""

    kind: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, item: dict[str, Any]) -> ObjectRow:
        meta = _obj(item.get("metadata"))
        name, kind = meta.get("name"), item.get("kind")
        return cls(
            kind if isinstance(kind, str) else "",
            name if isinstance(name, str) else "",
            _strings(meta.get("labels")),
            _strings(meta.get("annotations")),
        )

    @classmethod
    def parse(cls, text: str, what: str = "kubectl get") -> list[ObjectRow]:
        """A list's objects; one without a kind or a name is not one that can be named back to kubectl."""
        return [row for row in map(cls.of, _items(text, what)) if row.kind and row.name]


@dataclass(frozen=True)
class PodRow:
    """One Pod: its name, labels, annotations, phase, and which of its containers run now."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    phase: str
    running: frozenset[str]

    @classmethod
    def of(cls, item: dict[str, Any]) -> PodRow:
        base = ObjectRow.of(item)
        status = _obj(item.get("status"))
        phase = status.get("phase")
        containers = [_obj(c) for key in ("initContainerStatuses", "containerStatuses") for c in _list(status.get(key))]
        running = frozenset(
            c["name"] for c in containers if isinstance(c.get("name"), str) and "running" in _obj(c.get("state"))
        )
        return cls(base.name, base.labels, base.annotations, phase if isinstance(phase, str) else "Unknown", running)

    @classmethod
    def one(cls, text: str, what: str = "kubectl get pod") -> PodRow:
        """`kubectl get pod NAME -o json`."""
        return cls.of(_document(text, what))

    @classmethod
    def parse(cls, text: str, what: str = "kubectl get pods") -> list[PodRow]:
        """`kubectl get pods -o json`."""
        return [cls.of(i) for i in _items(text, what)]


@dataclass(frozen=True)
class ServerVersion:
    """`kubectl version -o json`: the cluster's version, "" where the server did not answer."""

    git_version: str

    @classmethod
    def parse(cls, text: str) -> ServerVersion:
        try:
            doc = _document(text, "kubectl version")
        except BackendError:
            return cls("")
        got = _obj(doc.get("serverVersion")).get("gitVersion")
        return cls(got if isinstance(got, str) else "")
