"""What the resource's values are held to: the patterns Kubernetes and KubeRay accept
where a value ends up, and CEL rules with their Python twins (`CelRule.check`), so that
`anytasktune validate` and local mode reject exactly what the API server rejects."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anytasktune_contract.trainspec import RULES_KEY, S3_URI_PATTERN

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# What reaches a pod field, a label or an environment variable is held to what Kubernetes
# and KubeRay accept there, so that a bad value is refused at the door rather than by a
# pod that never starts. Explicit ASCII classes only: the API server (RE2), pydantic (Rust
# regex) and Python's re then agree character for character (\s does not).
# "$" is never allowed where Kubernetes expands $(VAR) (env values).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # KubeRay: RayJob names (ValidateRayJobMetadata)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label key / toleration key: an optional DNS-subdomain prefix and "/", then a name of 1-63.
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"  # a Secret data key (secretKeyRef.key)
PRINTABLE = "[!#%-~]"  # printable ASCII without space, '"' and '$'
URL = r"^https?://[A-Za-z0-9.:_\[\]-]+(/" + PRINTABLE + r"*)?$"
ABSOLUTE_PATH = r"^/" + PRINTABLE + r"*$"
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
REGION = r"^[A-Za-z0-9_.-]*$"
RAY_VERSION = r"^[0-9]+(\.[0-9A-Za-z]+)+$"


@dataclass(frozen=True)
class CelRule:
    """One x-kubernetes-validations entry and its Python twin.

    `check(value)` returns True when the value is valid; `value` is the JSON-like
    dict of the schema node the rule is attached to (after defaulting)."""

    rule: str
    message: str
    check: Callable[[dict[str, Any]], bool]
    field_path: str | None = None
    transition: bool = False  # needs oldSelf: only the API server can check it

    def as_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def is_s3(uri: Any) -> bool:
    # fullmatch: Python's "$" also matches before a final newline; CEL's (RE2) does not.
    return isinstance(uri, str) and re.fullmatch(S3_URI_PATTERN, uri) is not None


def fullmatch(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


S3_RULE_CEL = S3_URI_PATTERN.replace("\\", "\\\\")


def cel_regex(pattern: str) -> str:
    """A regular expression inside a single-quoted CEL string literal."""
    return pattern.replace("\\", "\\\\")


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """json_schema_extra that attaches rules; crd.py emits them, validation runs them."""
    return {RULES_KEY: list(rules)}
