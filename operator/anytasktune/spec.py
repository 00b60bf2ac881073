"""The TaskFineTune resource: typed models, the single source of truth for the CRD.

`crd.py` turns these models into the CRD's OpenAPI schema; the CEL rules below are
attached to the schema and each has a Python twin (`check`) so that local mode and
`anytasktune validate` reject exactly what the API server rejects.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, create_model, model_validator

from anytasktune.rules import (
    ABSOLUTE_PATH,
    CONFIG_KEY,
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    IMAGE,
    LABEL_VALUE,
    QUALIFIED_NAME,
    QUANTITY,
    RAY_VERSION,
    REGION,
    S3_RULE_CEL,
    URL,
    CelRule,
    cel_regex,
    cel_rules,
    fullmatch,
    is_s3,
)
from anytasktune_contract.trainspec import (
    BaseModelRef,
    DataContractConfig,
    DatasetRef,
    DeepSpeedConfig,
    EvaluationConfig,
    LoraConfig,
    Strict,
    TaskType,
    TrainingConfig,
)

GROUP = "anytasktune.io"
VERSION = "v1alpha1"
KIND = "TaskFineTune"
PLURAL = "taskfinetunes"
SINGULAR = "taskfinetune"
SHORT_NAMES = ["tft"]

# KubeRay refuses RayJob names longer than 47 characters; ours are
# "<name>-<subtask>-<n>" with n up to 3 digits, so name + subtask <= 42.
MAX_RAYJOB_NAME = 47
MAX_NAME_PLUS_SUBTASK = MAX_RAYJOB_NAME - 5
MAX_SUBTASKS = 64
# --- building blocks ---------------------------------------------------------


def partial_model(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The same fields as `model`, all optional and without defaults: a per-sub-task
    override, merged over spec.defaults when a sub-task is resolved."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        constrained = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field_name] = (Optional[constrained], Field(None, description=info.description))  # noqa: UP045 - runtime type
    override = create_model(name, __base__=Strict, **fields)
    section = next((k for k, v in OVERRIDABLE_MODELS.items() if v is model), model.__name__)
    override.__doc__ = f"Override of spec.defaults.{section}: same fields, no defaults; only the fields given replace the defaults."
    return override


OVERRIDABLE_MODELS: dict[str, type[BaseModel]] = {
    "lora": LoraConfig,
    "training": TrainingConfig,
    "deepspeed": DeepSpeedConfig,
    "evaluation": EvaluationConfig,
    "dataContract": DataContractConfig,
}
LoraOverride = partial_model(LoraConfig, "LoraOverride")
TrainingOverride = partial_model(TrainingConfig, "TrainingOverride")
DeepSpeedOverride = partial_model(DeepSpeedConfig, "DeepSpeedOverride")
EvaluationOverride = partial_model(EvaluationConfig, "EvaluationOverride")
DataContractOverride = partial_model(DataContractConfig, "DataContractOverride")



class Defaults(Strict):
    """Settings every sub-task inherits unless it overrides them."""

    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    dataContract: DataContractConfig = Field(default_factory=DataContractConfig)


class DatasetSpec(DatasetRef):
    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule=f"self.uri.matches('{S3_RULE_CEL}')",
                message="dataset.uri must be an s3://bucket/key URI",
                check=lambda v: is_s3(v.get("uri")),
                field_path=".uri",
            )
        )
    }


class Subtask(Strict):
    """One concrete sub-task of the domain: one dataset, one adapter."""

    name: str = Field(..., min_length=1, max_length=40, pattern=DNS_LABEL, description="DNS label, unique in the pool.")
    dataset: DatasetSpec
    instruction: str = Field("", max_length=8192, description="Fixed task instruction prepended to every input.")
    taskType: TaskType = Field(TaskType.generation, description="Chooses the default evaluation metric.")
    lora: LoraOverride | None = None  # type: ignore[valid-type]
    training: TrainingOverride | None = None  # type: ignore[valid-type]
    deepspeed: DeepSpeedOverride | None = None  # type: ignore[valid-type]
    evaluation: EvaluationOverride | None = None  # type: ignore[valid-type]
    dataContract: DataContractOverride | None = None  # type: ignore[valid-type]
    pin: str | None = Field(
        None, pattern=r"^[0-9a-f]{10}$",
        description="Roll back: make this published run id the sub-task's active adapter instead of training "
        "(see the registry, <output>/<name>/index.json).",
    )
    activeDeadlineSeconds: int | None = Field(
        None, ge=60, le=30 * 24 * 3600,
        description="Fail an attempt of this sub-task that runs longer than this (the RayJob's activeDeadlineSeconds); "
        "overrides spec.cluster.activeDeadlineSeconds.",
    )

    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule="self.dataset.format != 'taskfinetune' || size(self.instruction) > 0",
                message="instruction is required when dataset.format is taskfinetune "
                "(the fixed task instruction is prepended to every input)",
                check=lambda v: v.get("dataset", {}).get("format", "taskfinetune") != "taskfinetune"
                or len(v.get("instruction", "")) > 0,
                field_path=".instruction",
            )
        )
    }


class BaseModelSpec(BaseModelRef):
    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule="has(self.uri) != has(self.id)",
                message="baseModel needs exactly one of uri (s3://…) or id (resolved from cachePath)",
                check=lambda v: (v.get("uri") is not None) != (v.get("id") is not None),
            ),
            CelRule(
                rule=f"!has(self.uri) || self.uri.matches('{S3_RULE_CEL}')",
                message="baseModel.uri must be an s3://bucket/prefix/ URI",
                check=lambda v: v.get("uri") is None or is_s3(v["uri"]),
                field_path=".uri",
            ),
            CelRule(
                rule=f"!has(self.cachePath) || self.cachePath.matches('{ABSOLUTE_PATH}')",
                message="baseModel.cachePath must be an absolute path of printable ASCII without spaces, quotes or $ "
                "(it becomes HF_HOME, and Kubernetes expands $(VAR) in environment values)",
                check=lambda v: v.get("cachePath") is None or fullmatch(ABSOLUTE_PATH, v["cachePath"]),
                field_path=".cachePath",
            ),
        )
    }


class SecretRef(Strict):
    name: str = Field(..., min_length=1, max_length=253, pattern=DNS_LABEL.replace("$", "") + r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    accessKeyIdKey: str = Field("AWS_ACCESS_KEY_ID", min_length=1, max_length=253, pattern=CONFIG_KEY)
    secretAccessKeyKey: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253, pattern=CONFIG_KEY)


class StorageSpec(Strict):
    output: str = Field(..., max_length=1024, description="s3://bucket/prefix/ where adapters and manifests are written.")
    endpoint: str | None = Field(None, max_length=1024, description="Custom S3 endpoint (MinIO, SeaweedFS, Ceph…); empty = AWS.")
    region: str = Field("us-east-1", max_length=64, pattern=REGION)
    addressingStyle: Literal["auto", "path", "virtual"] = "auto"
    credentialsSecret: SecretRef | None = Field(
        None, description="Secret with the access keys; omit to use the pods' identity (IRSA, instance role)."
    )

    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule=f"self.output.matches('{S3_RULE_CEL}')",
                message="storage.output must be an s3://bucket/prefix/ URI",
                check=lambda v: is_s3(v.get("output")),
                field_path=".output",
            ),
            CelRule(
                rule=f"!has(self.endpoint) || self.endpoint.matches('{cel_regex(URL)}')",
                message="storage.endpoint must be an http:// or https:// URL (printable ASCII, no spaces, quotes or $)",
                check=lambda v: v.get("endpoint") is None or fullmatch(URL, v["endpoint"]),
                field_path=".endpoint",
            ),
        )
    }


class TolerationOperator(str, Enum):
    Exists = "Exists"
    Equal = "Equal"


class Toleration(Strict):
    key: str | None = Field(None, max_length=316, pattern=QUALIFIED_NAME)
    operator: TolerationOperator | None = None
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None

    # Kubernetes' own rules for a pod's tolerations (validateTolerations), at the door.
    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                message="a toleration without a key must have operator Exists (it matches every taint)",
                check=lambda v: bool(v.get("key")) or v.get("operator") == "Exists",
            ),
            CelRule(
                rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                message="a toleration with operator Exists takes no value",
                check=lambda v: v.get("operator") != "Exists" or not v.get("value"),
            ),
            CelRule(
                rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                message="tolerationSeconds needs effect NoExecute",
                check=lambda v: v.get("tolerationSeconds") is None or v.get("effect") == "NoExecute",
            ),
        )
    }


class HeadShape(Strict):
    cpu: str = Field("2", pattern=QUANTITY)
    memory: str = Field("8Gi", pattern=QUANTITY)


class ClusterMode(str, Enum):
    PerSubtask = "PerSubtask"
    Shared = "Shared"


class ClusterShape(Strict):
    """The Ray cluster(s) the sub-tasks' RayJobs run on."""

    mode: ClusterMode = Field(
        ClusterMode.PerSubtask,
        description="PerSubtask: each attempt's RayJob starts its own Ray cluster and removes it when done. "
        "Shared: one RayCluster per TaskFineTune (<name>-ray, workers x maxParallelSubtasks worker pods) "
        "runs every sub-task's Ray job; it is removed when the pool is done or suspended.")
    workers: int = Field(1, ge=1, le=256, description="Ray Train workers (one worker pod each).")
    gpusPerWorker: int = Field(1, ge=0, le=16, description="nvidia.com/gpu per worker; 0 trains on CPU.")
    cpusPerWorker: str = Field("8", pattern=QUANTITY)
    memoryPerWorker: str = Field("32Gi", pattern=QUANTITY)
    head: HeadShape = Field(default_factory=HeadShape)
    image: str | None = Field(None, max_length=512, pattern=IMAGE, description="Training image; empty = the operator's default.")
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = None
    rayVersion: str = Field("2.60.0", max_length=32, pattern=RAY_VERSION)
    nodeSelector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=32, description="Node labels the workers must have (label keys and values).")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    serviceAccountName: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN)
    ttlSecondsAfterFinished: int = Field(600, ge=0, le=7 * 24 * 3600, description="PerSubtask mode: keep a finished attempt's Ray cluster this long.")
    activeDeadlineSeconds: int | None = Field(None, ge=60, description="Fail an attempt that runs longer than this.")

    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule=f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.indexOf('/') <= 253 && k.matches('{cel_regex(QUALIFIED_NAME)}'))",
                message="cluster.nodeSelector keys must be label keys ([prefix/]name: a DNS subdomain and a name of 1-63 "
                "letters, digits, '-', '_' or '.')",
                check=lambda v: all(k.find("/") <= 253 and fullmatch(QUALIFIED_NAME, k) for k in v.get("nodeSelector", {})),
                field_path=".nodeSelector",
            ),
        )
    }


class TaskFineTuneSpec(Strict):
    domain: str = Field(..., min_length=1, max_length=63, pattern=DNS_LABEL, description="The domain of the task pool.")
    baseModel: BaseModelSpec
    storage: StorageSpec
    defaults: Defaults = Field(default_factory=Defaults)
    subtasks: list[Subtask] = Field(..., min_length=1, max_length=MAX_SUBTASKS)
    cluster: ClusterShape = Field(default_factory=ClusterShape)
    maxParallelSubtasks: int = Field(4, ge=1, le=MAX_SUBTASKS, description="RayJobs running at once; the rest wait in order.")
    backoffLimit: int = Field(2, ge=0, le=10, description="Retries of a failed sub-task before it is Failed.")
    suspend: bool = Field(False, description="Launch nothing new and suspend running RayJobs.")
    queueName: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                  description="Kueue LocalQueue; set as kueue.x-k8s.io/queue-name.")

    model_config = {
        "json_schema_extra": cel_rules(
            CelRule(
                rule="self.subtasks.all(s, self.subtasks.exists_one(t, t.name == s.name))",
                message="sub-task names must be unique",
                check=lambda v: len({s["name"] for s in v.get("subtasks", [])}) == len(v.get("subtasks", [])),
                field_path=".subtasks",
            ),
            CelRule(
                rule="!has(self.queueName) || !has(self.cluster) || !has(self.cluster.mode) || self.cluster.mode != 'Shared'",
                message="cluster.mode Shared cannot be used with queueName: Kueue admits a RayJob by lifting its "
                "spec.suspend, and KubeRay refuses suspend for RayJobs that run on an existing RayCluster",
                check=lambda v: not v.get("queueName") or (v.get("cluster") or {}).get("mode", "PerSubtask") != "Shared",
                field_path=".cluster.mode",
            ),
        )
    }


# Rules on the root object: they see metadata.name and oldSelf.
ROOT_RULES: tuple[CelRule, ...] = (
    CelRule(
        rule=f"self.metadata.name.matches('{DNS_1035_LABEL}')",
        message="metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
        "it begins the names of the RayJobs, which KubeRay refuses otherwise",
        check=lambda v: fullmatch(DNS_1035_LABEL, v.get("metadata", {}).get("name", "")),
    ),
    CelRule(
        rule=f"self.spec.subtasks.all(s, size(self.metadata.name) + size(s.name) <= {MAX_NAME_PLUS_SUBTASK})",
        message=f"metadata.name and each sub-task name may total at most {MAX_NAME_PLUS_SUBTASK} characters, "
        f"so that RayJob names <name>-<subtask>-<n> fit KubeRay's {MAX_RAYJOB_NAME}-character limit",
        check=lambda v: all(
            len(v.get("metadata", {}).get("name", "")) + len(s["name"]) <= MAX_NAME_PLUS_SUBTASK
            for s in v.get("spec", {}).get("subtasks", [])
        ),
    ),
    CelRule(
        rule="!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec.storage.output == oldSelf.spec.storage.output",
        message="spec.storage.output cannot change once training started: adapters already written there "
        "would be orphaned; create a new TaskFineTune instead",
        check=lambda v: True,
        transition=True,
    ),
)


class TaskFineTune(BaseModel):
    """The whole object as a client holds it (metadata kept as a dict)."""

    apiVersion: Literal["anytasktune.io/v1alpha1"] = "anytasktune.io/v1alpha1"
    kind: Literal["TaskFineTune"] = "TaskFineTune"
    metadata: dict[str, Any]
    spec: TaskFineTuneSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _root_rules(self) -> TaskFineTune:
        whole = {"metadata": self.metadata, "spec": self.spec.model_dump(mode="json")}
        for rule in ROOT_RULES:
            if not rule.transition and not rule.check(whole):
                raise ValueError(rule.message)
        return self


# The status models live in status.py; they are part of the resource (the CRD reads them here).
from anytasktune.status import Condition as Condition  # noqa: E402
from anytasktune.status import EvalScores as EvalScores  # noqa: E402
from anytasktune.status import Loose as Loose  # noqa: E402
from anytasktune.status import Phase as Phase  # noqa: E402
from anytasktune.status import SubtaskPhase as SubtaskPhase  # noqa: E402
from anytasktune.status import SubtaskStatus as SubtaskStatus  # noqa: E402
from anytasktune.status import TaskFineTuneStatus as TaskFineTuneStatus  # noqa: E402
