"""Generate the TaskFineTune CRD from the typed models in spec.py.

`make manifests` writes the result to manifests/crd/; a test fails when the
committed file drifts from what these models produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from anytasktune import spec as api
from anytasktune_contract.trainspec import RULES_KEY

CRD_PATH = Path("manifests/crd/anytasktune.io_taskfinetunes.yaml")

# Lists whose items have a natural key: server-side apply merges them per item,
# and the API server itself rejects duplicate keys.
LIST_MAP_KEYS = {("TaskFineTuneSpec", "subtasks"): "name", ("TaskFineTuneStatus", "conditions"): "type", ("TaskFineTuneStatus", "subtasks"): "name"}
SET_LISTS = {"targetModules", "modulesToSave", "metrics"}
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
          "maxProperties", "default")


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from root, by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                visit(field.annotation)
        for arg in getattr(tp, "__args__", ()) or ():
            visit(arg)

    visit(root)
    return found


def _copy_bounds(node: dict[str, Any], out: dict[str, Any]) -> None:
    for key in BOUNDS:
        if key in node and key not in out:
            out[key] = node[key]
    # OpenAPI v3.0 (what CRDs speak) spells exclusive bounds as booleans.
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in out and not isinstance(out[key], bool):
            out[bound] = out.pop(key)
            out[key] = True


def _factory_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {}  # let the API server fill the nested defaults
    return value


class _Converter:
    def __init__(self, root: type[BaseModel]):
        self.schema = root.model_json_schema(mode="validation")
        self.defs = self.schema.get("$defs", {})
        self.classes = _model_classes(root)

    def convert(self, node: dict[str, Any], model: str | None = None, prop: str | None = None) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            target = self.convert(self.defs[name], model=name)
            extra = {k: v for k, v in node.items() if k in ("description", "default")}
            return {**target, **extra}
        if "anyOf" in node:  # Optional[X] -> X (absence means "not set")
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"unsupported union in {model}.{prop}: {node}")
            merged = {**options[0], **{k: v for k, v in node.items() if k not in ("anyOf", "default", "title")}}
            return self.convert(merged, model=model, prop=prop)

        out: dict[str, Any] = {}
        if "description" in node:
            out["description"] = " ".join(node["description"].split())
        if "enum" in node or "const" in node:
            values = node.get("enum", [node.get("const")])
            out["type"] = "string"
            out["enum"] = values
        elif node.get("type") == "object" or "properties" in node:
            out.update(self._object(node, model))
        elif node.get("type") == "array":
            out["type"] = "array"
            out["items"] = self.convert(node["items"])
        else:
            out["type"] = node["type"]
        _copy_bounds(node, out)
        return out

    def _object(self, node: dict[str, Any], model: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object"}
        cls = self.classes.get(model or "")
        if "properties" in node:
            props = {name: self._property(cls, model, name, sub) for name, sub in node["properties"].items()}
            out["properties"] = props
            required = [r for r in node.get("required", []) if "default" not in props[r]]
            if required:
                out["required"] = required
        if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
            out["additionalProperties"] = self.convert(node["additionalProperties"])
        rules = node.get(RULES_KEY) or []
        if rules:
            out["x-kubernetes-validations"] = [r.as_schema() for r in rules]
        return out

    def _property(self, cls: type[BaseModel] | None, model: str | None, name: str, sub: dict[str, Any]) -> dict[str, Any]:
        converted = self.convert(sub, model=None, prop=name)
        if cls is not None:
            field = cls.model_fields[name]
            if field.default_factory is not None and "default" not in converted:
                default = _factory_default(field.default_factory())  # type: ignore[call-arg]
                if default not in ([], {}) or isinstance(field.default_factory(), BaseModel):  # type: ignore[call-arg]
                    converted["default"] = default
            key = LIST_MAP_KEYS.get((model or "", name))
            if key is not None:
                converted["x-kubernetes-list-type"] = "map"
                converted["x-kubernetes-list-map-keys"] = [key]
        if name in SET_LISTS and converted.get("type") == "array":
            converted["x-kubernetes-list-type"] = "set"
        return converted

    def root(self) -> dict[str, Any]:
        return self.convert({k: v for k, v in self.schema.items() if k != "$defs"}, model=self.schema.get("title"))


def spec_schema() -> dict[str, Any]:
    return _Converter(api.TaskFineTuneSpec).root()


def status_schema() -> dict[str, Any]:
    return _Converter(api.TaskFineTuneStatus).root()


def crd() -> dict[str, Any]:
    openapi = {
        "type": "object",
        "description": "A domain's pool of sub-tasks, each fine-tuned into its own LoRA adapter (Task-Fine-Tune).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": [r.as_schema() for r in api.ROOT_RULES],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "anytasktune", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["anytasktune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Domain", "type": "string", "jsonPath": ".spec.domain"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Subtasks", "type": "string", "jsonPath": ".status.progress", "description": "succeeded/total"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi},
                }
            ],
        },
    }


README_PATH = Path("README.md")
FIELDS_BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (make manifests) -->"
FIELDS_END = "<!-- END GENERATED FIELD REFERENCE -->"


def field_rows(node: dict[str, Any], path: str = "spec") -> list[tuple[str, str, str, str]]:
    """(field, type, default, description + constraints) for every field under spec."""
    rows: list[tuple[str, str, str, str]] = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        kind = sub.get("type", "")
        if kind == "array":
            item = sub["items"]
            kind = f"[]{item.get('type', '')}"
            if item.get("enum"):
                kind += " (" + " \\| ".join(item["enum"]) + ")"
        elif sub.get("enum"):
            kind = " \\| ".join(sub["enum"])
        elif kind == "object" and "additionalProperties" in sub:
            kind = "map[string]string"
        limits = [f"{k} {sub[k]}" for k in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems") if k in sub]
        rules = [r["message"] for r in sub.get("x-kubernetes-validations", [])]
        required = "required; " if name in node.get("required", []) else ""
        text = required + " ".join(filter(None, [sub.get("description", ""), ("(" + ", ".join(limits) + ")") if limits else "", *rules]))
        default = sub.get("default")
        shown = "" if default is None or default == {} else f"`{json.dumps(default)}`"
        rows.append((f"`{here}`", kind, shown, text.replace("|", "\\|")))
        if sub.get("type") == "object" and "properties" in sub and not sub.get("description", "").startswith("Override of"):
            rows += field_rows(sub, here)
        if sub.get("type") == "array" and "properties" in sub["items"]:
            rows += field_rows(sub["items"], here + "[]")
    return rows


def field_reference() -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in field_rows(spec_schema())]
    return "\n".join(lines)


def update_readme(text: str) -> str:
    """README.md with the field reference section regenerated."""
    start, end = text.index(FIELDS_BEGIN) + len(FIELDS_BEGIN), text.index(FIELDS_END)
    return text[:start] + "\n" + field_reference() + "\n" + text[end:]


def render_yaml() -> str:
    header = "# Generated by `make manifests` from operator/anytasktune/spec.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else CRD_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_yaml())
    print(f"wrote {path}")
    if README_PATH.exists() and FIELDS_BEGIN in README_PATH.read_text():
        README_PATH.write_text(update_readme(README_PATH.read_text()))
        print(f"updated the field reference in {README_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
