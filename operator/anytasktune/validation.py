"""Validate TaskFineTune YAML the way the API server would, with file:line messages.

In the API server's order: unknown fields are refused, null fields are dropped (none
of ours is nullable), the structural schema is checked (JSON types, duplicates in set
lists: `structural_problems`, walking the CRD's own schema), then the values
(bounds, patterns, enums: the same pydantic models the CRD is generated from) and the
CEL rules through their Python twins (rules.CelRule.check). Rules that need the
previous object (transition rules) can only be checked by the API server.
tests/integration/test_spec_fuzz.py holds the two to the same answer on generated specs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from anytasktune.rules import LABEL_VALUE, QUALIFIED_NAME
from anytasktune.spec import GROUP, KIND, VERSION, TaskFineTune


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


@dataclass(frozen=True)
class Document:
    file: str
    index: int
    obj: Any
    node: yaml.Node | None


def load_documents(path: str | Path, text: str | None = None) -> list[Document]:
    """Every YAML document of a file, with its node tree for line numbers."""
    source = Path(path).read_text() if text is None else text
    nodes = list(yaml.compose_all(source))
    objects = list(yaml.safe_load_all(source))
    return [Document(str(path), i, obj, node) for i, (obj, node) in enumerate(zip(objects, nodes, strict=True)) if obj is not None]


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The line of the deepest node along loc that exists in the YAML."""
    best = node
    for key in loc:
        if isinstance(best, yaml.MappingNode):
            nxt = next((v for k, v in best.value if k.value == key), None)
        elif isinstance(best, yaml.SequenceNode) and isinstance(key, int) and key < len(best.value):
            nxt = best.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        best = nxt
    return (best.start_mark.line + 1) if best is not None else 1


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """The error's location in the document (without pydantic's validator-function steps)."""
    return tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))


def describe(err: ValidationError, under: str = "") -> str:
    """The first error as `path: message`, worded as `anytasktune validate` words it."""
    first = dict(err.errors()[0])
    path = _path(_loc(first))
    where = ".".join(filter(None, [under, path]))
    return f"{where}: {_message(first)}" if where else _message(first)


# metadata.name of a custom resource: a DNS-1123 subdomain (what the API server checks).
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# The fields of metav1.ObjectMeta: the API server refuses any other under metadata.
OBJECT_META = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers", "managedFields",
})


@lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the CRD this version generates (the one installed)."""
    from anytasktune.crd import crd

    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def prune_nulls(value: Any) -> Any:
    """The object as the API server keeps it: fields set to null are dropped (in place)."""
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for v in value.values():
            prune_nulls(v)
    elif isinstance(value, list):
        for v in value:
            prune_nulls(v)
    return value


_JSON_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    # JSON has one number type: 3.0 is an integer to the API server, true is not.
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def structural_problems(value: Any, schema: dict[str, Any], loc: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(location, message) for what a structural schema rejects before any value rule:
    a wrong JSON type, an unknown field, a duplicate in a set list."""
    if value is None:  # dropped before the schema is checked (but an unknown field is refused even when null)
        return []
    kind = schema.get("type")
    if kind in _JSON_TYPES and not _JSON_TYPES[kind](value):
        return [(loc, f"Input should be of type {kind}")]
    problems: list[tuple[tuple[Any, ...], str]] = []
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                problems += structural_problems(item, props[key], (*loc, key))
            elif isinstance(extra, dict):
                problems += structural_problems(item, extra, (*loc, key))
            elif props is not None:
                problems.append(((*loc, key), "Extra inputs are not permitted"))
            elif loc == ("metadata",) and key not in OBJECT_META:
                problems.append(((*loc, key), "Extra inputs are not permitted"))
    elif kind == "array" and isinstance(value, list):
        for i, item in enumerate(value):
            problems += structural_problems(item, schema.get("items", {}), (*loc, i))
        if schema.get("x-kubernetes-list-type") == "set":  # map lists: the CEL twin names duplicates
            seen: set[str] = set()
            for i, item in enumerate(value):
                if repr(item) in seen:
                    problems.append(((*loc, i), f"Duplicate value: {item!r}"))
                seen.add(repr(item))
    return problems


def validate_object(obj: Any, file: str = "<input>", node: yaml.Node | None = None) -> list[Problem]:
    """The problems the API server would report for this object (none: it would accept it).
    Like the API server, null fields are dropped from `obj` (in place), so that local
    mode runs what the cluster would store."""
    if not isinstance(obj, dict):
        return [Problem(file, 1, "", "expected a YAML mapping (a Kubernetes object)")]
    if obj.get("apiVersion") != f"{GROUP}/{VERSION}" or obj.get("kind") != KIND:
        return [Problem(file, line_of(node, ("kind",)), "", f"not a {KIND} ({GROUP}/{VERSION}): apiVersion={obj.get('apiVersion')} kind={obj.get('kind')}")]
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    if not name:
        return [Problem(file, line_of(node, ("metadata",)), "metadata.name", "Field required")]
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        return [Problem(file, line_of(node, ("metadata", "name")), "metadata.name",
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                        "and must start and end with an alphanumeric character (at most 253)")]
    meta = obj["metadata"]
    for field, values in (("labels", True), ("annotations", False)):
        for key, value in (meta.get(field) or {}).items() if isinstance(meta.get(field), dict) else []:
            if not isinstance(key, str) or key.find("/") > 253 or not re.fullmatch(QUALIFIED_NAME, key):
                return [Problem(file, line_of(node, ("metadata", field)), f"metadata.{field}", f"{key!r}: not a valid {field[:-1]} key")]
            if values and (not isinstance(value, str) or not re.fullmatch(LABEL_VALUE, value) or len(value) > 63):
                return [Problem(file, line_of(node, ("metadata", field, key)), f"metadata.{field}.{key}", f"{value!r}: not a valid label value")]
    # Unknown fields are refused while decoding, before nulls are dropped.
    structural = structural_problems({k: v for k, v in obj.items() if k != "status"}, crd_schema())
    if structural:
        return [Problem(file, line_of(node, loc), _path(loc), message) for loc, message in structural]
    prune_nulls(obj)
    try:
        TaskFineTune.model_validate({k: v for k, v in obj.items() if k != "status"})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = _loc(dict(e))
            problems.append(Problem(file, line_of(node, loc), _path(loc), _message(dict(e))))
        return problems
    return []


def validate_file(path: str | Path) -> list[Problem]:
    try:
        docs = load_documents(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        return [Problem(str(path), (mark.line + 1) if mark else 1, "", f"not valid YAML: {getattr(err, 'problem', err)}")]
    except OSError as err:
        return [Problem(str(path), 0, "", f"cannot read: {err.strerror}")]
    if not docs:
        return [Problem(str(path), 1, "", "no YAML documents")]
    return [p for d in docs for p in validate_object(d.obj, d.file, d.node)]
