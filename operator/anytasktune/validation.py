"""Validate TaskFineTune YAML the way the API server would, with file:line messages.

The schema checks come from the same pydantic models the CRD is generated from, and
the CEL rules run through their Python twins (spec.CelRule.check). Rules that need
the previous object (transition rules) can only be checked by the API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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


def validate_object(obj: Any, file: str = "<input>", node: yaml.Node | None = None) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem(file, 1, "", "expected a YAML mapping (a Kubernetes object)")]
    if obj.get("apiVersion") != f"{GROUP}/{VERSION}" or obj.get("kind") != KIND:
        return [Problem(file, line_of(node, ("kind",)), "", f"not a {KIND} ({GROUP}/{VERSION}): apiVersion={obj.get('apiVersion')} kind={obj.get('kind')}")]
    if not (obj.get("metadata") or {}).get("name"):
        return [Problem(file, line_of(node, ("metadata",)), "metadata.name", "Field required")]
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
