"""Packed adapters (issue 12 §4): K sub-tasks' LoRA adapters trained in one process over
one frozen copy of the base model, as mLoRA does.

Each targeted nn.Linear becomes a `PackedLoraLinear` that holds every adapter's A and B:

    out = base(x) + concat over segments (k, start, stop) of  scale_k * B_k(A_k(dropout_k(x[start:stop])))

A micro-batch holds one micro-batch of each sub-task, its rows grouped by sub-task
(`segments`), so the base model runs once over all of them while each adapter sees only
its own rows. The loss is the sum over k of the mean loss over sub-task k's answer tokens:
since adapter k's parameters touch only its rows, its gradient is exactly the one a
separate run would compute on the same micro-batch, and a sub-task with no rows in a
micro-batch leaves its adapter's gradients None (AdamW then skips it, as a separate run
that saw no batch would not step).

Each adapter keeps its sub-task's own schedule: the same record order (`zero.micro_batch`
with its seed), learning rate with warmup + cosine (`zero.lr_factor` over its own step
count), weight decay, gradient clipping (its own norm) and gradient accumulation as the
trainjob; A_k is drawn like PEFT's (kaiming-uniform after `torch.manual_seed(seed)`, module
by module), B_k starts at zero. So with dropout 0 an adapter trained packed equals one
trained alone up to float rounding (tests/unit/trainjob/test_packed.py). With dropout > 0
the masks come from one shared random stream, so they differ from a separate run's.

Unlike the trainjob (training.py: DeepSpeed ZeRO under Ray Train, one adapter per run),
this trainer is one process with plain `torch.optim.AdamW`, one param group per adapter:
no ZeRO sharding, checkpoints or gradient checkpointing, and no modulesToSave (that would
need one trainable copy of e.g. lm_head per adapter). Each adapter is exported in PEFT's
own format, so `PeftModel.from_pretrained(base, folder)` and the trainjob's evaluation
load it like any adapter the trainjob publishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anytasktune_contract.trainspec import LoraConfig, TrainingConfig, TrainJobSpec

from . import encoding
from .adapter import rewrite_adapter_config
from .zero import StepPlan, lr_factor, micro_batch, plan_steps

Segment = tuple[int, int, int]  # (adapter index, first row, row after the last)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class SubTask:
    """One adapter's sub-task: its LoRA shape, its training settings, its encoded records."""

    name: str
    lora: LoraConfig
    training: TrainingConfig
    train_ids: Sequence[list[int]]  # encoding.TokenTable or lists
    train_labels: Sequence[list[int]]

    @classmethod
    def from_spec(cls, spec: TrainJobSpec, payload: dict[str, Any]) -> SubTask:
        """From a sub-task's spec and the payload `runner.prepare_data` made of its dataset."""
        return cls(spec.subtask, spec.lora, spec.training, payload["train_ids"], payload["train_labels"])


def targets(module_name: str, target_modules: Sequence[str]) -> bool:
    """PEFT's rule for a list of names: the module's name is one of them or ends with '.' + one."""
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


class _Routing:
    """Which rows of the next forward belong to which adapter; shared by every packed layer."""

    def __init__(self) -> None:
        self.segments: tuple[Segment, ...] = ()


def _packed_linear_class() -> Any:
    import torch
    from torch import nn

    class PackedLoraLinear(nn.Module):
        """A frozen nn.Linear plus K LoRA adapters, each applied only to its own rows."""

        def __init__(self, base_layer: nn.Linear, routing: _Routing) -> None:
            super().__init__()
            self.base_layer = base_layer
            self.routing = routing
            self.lora_A = nn.ModuleList()
            self.lora_B = nn.ModuleList()
            self.lora_dropout = nn.ModuleList()
            self.scaling: list[float] = []

        def add_adapter(self, r: int, alpha: int, dropout: float) -> None:
            """Draws from the global random stream exactly as PEFT's LoraLayer.update_layer
            does (two nn.Linear constructions, then kaiming-uniform on A), so a seed gives
            the A that PEFT gives."""
            self.lora_dropout.append(nn.Dropout(p=dropout) if dropout > 0 else nn.Identity())
            lora_a = nn.Linear(self.base_layer.in_features, r, bias=False)
            lora_b = nn.Linear(r, self.base_layer.out_features, bias=False)
            nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
            nn.init.zeros_(lora_b.weight)
            self.lora_A.append(lora_a.to(self.base_layer.weight.device))
            self.lora_B.append(lora_b.to(self.base_layer.weight.device))
            self.scaling.append(alpha / r)

        def forward(self, x: Any) -> Any:
            out = self.base_layer(x)
            segments = self.routing.segments
            if not segments:  # outside PackedLoraModel.routed: the base model alone
                return out
            # Slices of contiguous rows are views: no gather, and an adapter absent from the
            # batch never enters the graph (its gradients stay None).
            deltas = []
            for k, start, stop in segments:
                rows = x[start:stop].to(self.lora_A[k].weight.dtype)
                deltas.append(self.lora_B[k](self.lora_A[k](self.lora_dropout[k](rows))) * self.scaling[k])
            return out + torch.cat(deltas).to(out.dtype)

    return PackedLoraLinear


class PackedLoraModel:
    """A base causal LM, frozen, whose targeted nn.Linear modules carry K adapters."""

    def __init__(self, base_model: Any, target_modules: Sequence[str]) -> None:
        from torch import nn

        packed_linear = _packed_linear_class()
        self.model = base_model
        self.target_modules = list(target_modules)
        self.routing = _Routing()
        self.adapters: list[tuple[str, LoraConfig]] = []
        for p in base_model.parameters():
            p.requires_grad_(False)
        # Wrap in named_modules order: PEFT's order, which the seed rule of add_adapter relies on.
        self.layers: dict[str, Any] = {}
        for name, module in list(base_model.named_modules()):
            if isinstance(module, nn.Linear) and targets(name, self.target_modules):
                parent_name, _, child = name.rpartition(".")
                layer = packed_linear(module, self.routing)
                setattr(base_model.get_submodule(parent_name), child, layer)
                self.layers[name] = layer
        if not self.layers:
            raise ValueError(f"no nn.Linear module matches targetModules {self.target_modules}")

    def add_adapter(self, name: str, lora: LoraConfig, seed: int) -> int:
        """A new adapter, initialised as PEFT would after `torch.manual_seed(seed)`; its index."""
        import torch

        if sorted(lora.targetModules) != sorted(self.target_modules):
            raise ValueError(f"adapter {name!r}: targetModules {lora.targetModules} differ from the packed model's "
                             f"{self.target_modules}; packed adapters share one set of wrapped modules")
        if lora.modulesToSave:
            raise ValueError(f"adapter {name!r}: modulesToSave is not supported by packed training")
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(seed)
            for layer in self.layers.values():
                layer.add_adapter(lora.r, lora.alpha, lora.dropout)
        self.adapters.append((name, lora))
        return len(self.adapters) - 1

    def adapter_parameters(self, k: int) -> list[Any]:
        return [p for layer in self.layers.values() for p in (layer.lora_A[k].weight, layer.lora_B[k].weight)]

    @contextmanager
    def routed(self, segments: Sequence[Segment]) -> Iterator[None]:
        """Inside: forwards apply adapter k to rows [start, stop) of each (k, start, stop),
        which must cover the batch's rows in order."""
        expected = 0
        for k, start, stop in segments:
            if start != expected or stop <= start or not 0 <= k < len(self.adapters):
                raise ValueError(f"segments {list(segments)} must be contiguous, non-empty, in row order, "
                                 f"of adapters 0..{len(self.adapters) - 1}")
            expected = stop
        self.routing.segments = tuple(segments)
        try:
            yield
        finally:
            self.routing.segments = ()

    def peft_state_dict(self, k: int) -> dict[str, Any]:
        """Adapter k's tensors under the keys PEFT saves (and loads) them by."""
        out = {}
        for name, layer in self.layers.items():
            out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[k].weight.detach().cpu().contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[k].weight.detach().cpu().contiguous()
        return out

    def export_adapter(self, k: int, folder: Path, base_identity: str = "") -> Path:
        """Adapter k as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        from peft import LoraConfig as PeftLoraConfig
        from safetensors.torch import save_file

        _, lora = self.adapters[k]
        folder.mkdir(parents=True, exist_ok=True)
        PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targetModules),
                       task_type="CAUSAL_LM").save_pretrained(str(folder))
        rewrite_adapter_config(folder, base_identity)  # the same config file the trainjob publishes
        save_file(self.peft_state_dict(k), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        return folder


def packed_loss(logits: Any, labels: Any, segments: Sequence[Segment]) -> tuple[Any, list[Any]]:
    """(sum over segments of the mean cross-entropy over the segment's answer tokens, those
    means). A mean per adapter, not one over the whole batch: so an adapter's gradient does
    not depend on how many answer tokens the other sub-tasks brought."""
    import torch

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=encoding.IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    answer = shift_labels != encoding.IGNORE_INDEX
    means = [token_loss[start:stop].sum() / answer[start:stop].sum().clamp_min(1) for _, start, stop in segments]
    return torch.stack(means).sum(), means


@dataclass
class PackedOutcome:
    steps: int = 0
    tokens: int = 0  # non-padding tokens of every sub-task, all steps
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # {sub-task: loss} per step, the sub-tasks that stepped


class PackedTrainer:
    """Trains every sub-task's adapter on `model` in one loop; step s takes micro-batch(es)
    s of each sub-task whose own plan has not ended yet."""

    def __init__(self, model: PackedLoraModel, subtasks: Sequence[SubTask], *, pad_id: int, device: Any) -> None:
        import torch

        if not subtasks:
            raise ValueError("no sub-tasks to pack")
        if len({t.name for t in subtasks}) != len(subtasks):
            raise ValueError(f"sub-task names must be unique (each names its adapter's folder): {[t.name for t in subtasks]}")
        self.model, self.subtasks, self.pad_id, self.device = model, list(subtasks), pad_id, device
        self.indices = [model.add_adapter(t.name, t.lora, t.training.seed) for t in self.subtasks]
        self.plans: list[StepPlan] = [plan_steps(len(t.train_ids), 1, t.training) for t in self.subtasks]
        self.optimizer = torch.optim.AdamW([
            {"params": model.adapter_parameters(k), "lr": t.training.learningRate, "weight_decay": t.training.weightDecay}
            for k, t in zip(self.indices, self.subtasks, strict=True)
        ], betas=(0.9, 0.999), eps=1e-8)  # the trainjob's DeepSpeed AdamW settings (zero.build_deepspeed_config)
        self.step = 0

    @property
    def total_steps(self) -> int:
        return max(p.total_steps for p in self.plans)

    def active(self, step: int) -> list[int]:
        """Positions (in `subtasks`) of the sub-tasks that take optimizer step `step`."""
        return [i for i, p in enumerate(self.plans) if step < p.total_steps]

    def micro_batch(self, step: int, micro: int) -> tuple[dict[str, Any], list[Segment]]:
        """Micro-batch `micro` of optimizer step `step`: each active sub-task's own records
        for it (as its separate run would take them), rows grouped by sub-task."""
        import torch

        rows: list[tuple[list[int], list[int]]] = []
        segments: list[Segment] = []
        for i in self.active(step):
            t, plan = self.subtasks[i], self.plans[i]
            gas = t.training.gradientAccumulationSteps
            if micro >= gas:
                continue
            idx = micro_batch(plan, step * gas + micro, 0, t.training.microBatchSize, t.training.seed)
            if not idx:
                continue
            segments.append((self.indices[i], len(rows), len(rows) + len(idx)))
            rows.extend((t.train_ids[j], t.train_labels[j]) for j in idx)
        batch = encoding.pad_batch(rows, self.pad_id)
        return {k: torch.tensor(v, dtype=torch.long, device=self.device) for k, v in batch.items()}, segments

    def train_step(self) -> tuple[dict[str, float], int]:
        """One optimizer step of every active adapter: ({sub-task: loss}, non-padding tokens)."""
        import torch

        active = self.active(self.step)
        for i in active:
            plan = self.plans[i]
            group = self.optimizer.param_groups[i]
            group["lr"] = self.subtasks[i].training.learningRate * lr_factor(self.step, plan.total_steps, plan.warmup_steps)
        gas_of = {self.indices[i]: self.subtasks[i].training.gradientAccumulationSteps for i in active}
        losses = dict.fromkeys(gas_of, 0.0)
        tokens = 0
        self.model.model.train()
        for micro in range(max(gas_of.values())):
            tensors, segments = self.micro_batch(self.step, micro)
            with self.model.routed(segments):
                logits = self.model.model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
            _, means = packed_loss(logits, tensors["labels"], segments)
            # Divided by each sub-task's own accumulation steps, as DeepSpeed scales a separate run's loss.
            torch.stack([m / gas_of[k] for m, (k, _, _) in zip(means, segments, strict=True)]).sum().backward()
            for m, (k, _, _) in zip(means, segments, strict=True):
                losses[k] += float(m.detach()) / gas_of[k]
            tokens += int(tensors["attention_mask"].sum())
        for i in active:
            clip = self.subtasks[i].training.maxGradNorm
            if clip > 0:  # each adapter by its own norm, as its separate run clips
                torch.nn.utils.clip_grad_norm_(self.model.adapter_parameters(self.indices[i]), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # None, not zero: an absent adapter must not step next time
        self.step += 1
        return {self.subtasks[i].name: losses[self.indices[i]] for i in active}, tokens

    def train(self) -> PackedOutcome:
        outcome = PackedOutcome()
        t_loop = time.perf_counter()
        while self.step < self.total_steps:
            t_step = time.perf_counter()
            losses, tokens = self.train_step()
            outcome.step_seconds.append(time.perf_counter() - t_step)
            outcome.history.append(losses)
            outcome.tokens += tokens
        outcome.steps = self.step
        outcome.seconds = time.perf_counter() - t_loop
        return outcome

    def export(self, folder: Path, base_identity: str = "") -> dict[str, Path]:
        """Every adapter as a PEFT folder under `folder`/<sub-task name>."""
        return {t.name: self.model.export_adapter(k, folder / t.name, base_identity)
                for k, t in zip(self.indices, self.subtasks, strict=True)}
